"""The entry points: render a run directory's three reports; the terminal summary."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lab import cache
from lab.report.clean import LIST_LIMIT, REPORTS, _line
from lab.report.html import render_html
from lab.report.junit import render_junit
from lab.report.markdown import Known, known_note, render_markdown
from lab.report.model import load

# --- entry points -----------------------------------------------------------------------------


def render(run_dir: Path, known: Known | None = None) -> None:
    """Write report.html, summary.md and junit.xml into run_dir (each atomically).
    `known`: cell id, observed -> (reason, link) of a known issue (lab.toml), or None."""
    run = load(run_dir)
    cache.write_atomic(run_dir / "report.html", render_html(run))
    cache.write_atomic(run_dir / "summary.md", render_markdown(run, known))
    cache.write_atomic(run_dir / "junit.xml", render_junit(run))


def _listing(title: str, items: Sequence[str]) -> list[str]:
    out = [f"  {title} {x}" for x in items[:LIST_LIMIT]]
    if len(items) > LIST_LIMIT:
        out.append(f"  ... and {len(items) - LIST_LIMIT} more {title.strip()} (see summary.md)")
    return out


def text_summary(run_dir: Path, known: Known | None = None) -> str:
    """A few lines for the terminal: counts, the cells to look at, the report paths."""
    run = load(run_dir)
    c = run.counts()
    lines = [
        f"run {run.id} ({run.status}): {c['expected']} expected, {c['unexpected']} "
        f"unexpected, {c['infra']} infra, {c['not_run']} not run"
    ]
    unexpected = [
        f"{r.run_cell_id}: {r.observed} (expected "
        f"{'|'.join(r.expected) or 'none declared'}): {_line(r.detail, 200)}"
        + known_note(known, r.run_cell_id, r.observed)
        for r in run.cells
        if r.verdict == "unexpected"
    ]
    infra = [f"{r.run_cell_id}: {_line(r.detail, 200)}" for r in run.cells if r.verdict == "infra"]
    lines += _listing("UNEXPECTED", unexpected)
    lines += _listing("INFRA     ", infra)
    lines += _listing("NOT RUN   ", list(run.not_run))
    lines += _listing("UNREADABLE", [f"cells/{d}: {why}" for d, why in run.unreadable])
    unstable = [f"{s.id}: {s.distribution()}" for s in run.slots if s.unstable]
    lines += _listing("UNSTABLE  ", unstable)
    lines += [f"reports: {run_dir / REPORTS[0]}"]
    lines += [f"         {run_dir / name}" for name in REPORTS[1:]]
    return "\n".join(lines)
