"""summary.md: the plain-text summary, aimed at mail and terminals."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lab.outcome import Outcome
from lab.report import versions
from lab.report.clean import (
    MARK_UNEXPECTED,
    MARK_UNSTABLE,
    MARK_XARCH,
    MD_NOT_PLANNED,
    MD_NOT_RUN,
    MD_WIDTH,
    _dict,
    _line,
    _short,
)
from lab.report.model import Run, Slot, bundle_command

# --- Markdown (plain text) ----------------------------------------------------------------


# Names that read the same as Markdown and as plain text: no markup, HTML, autolink
# ("www." or "://") or emphasis (an underscore only between alphanumerics).
_MD_PLAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.:/#+=-]|(?<=[A-Za-z0-9])_(?=[A-Za-z0-9]))*")


def _md(value: object, limit: int = 0) -> str:
    """An untrusted value for a summary.md prose line (a heading, the host line): as is
    when plainly a name, otherwise in a code span, where Markdown and HTML are inert
    (the file is appended to $GITHUB_STEP_SUMMARY)."""
    text = _line(value, limit)
    if _MD_PLAIN.fullmatch(text) and "www." not in text.lower() and "://" not in text:
        return text
    fence = "`" * (max((len(r) for r in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _md_cell(s: Slot | None, xarch: bool) -> str:
    if s is None:
        return MD_NOT_PLANNED
    if s.observed is None:
        return MD_NOT_RUN
    text = _short(s.observed)
    if s.verdict == "unexpected":
        text += MARK_UNEXPECTED
    if s.unstable:
        text += MARK_UNSTABLE
    if xarch:
        text += MARK_XARCH
    return text


def _md_table(
    rows: Sequence[Sequence[str]], indent: str = "    ", width: int = MD_WIDTH
) -> list[str]:
    """Fixed-width columns; column 0 repeats on each block when the table is split so
    that no line is wider than `width` (unless a single column already is)."""
    if not rows:
        return []
    ncol = len(rows[0])
    widths = [max(len(r[i]) for r in rows) for i in range(ncol)]
    room = width - len(indent) - widths[0]
    blocks: list[list[int]] = [[]]
    used = 0
    for i in range(1, ncol):
        need = widths[i] + 2
        if blocks[-1] and used + need > room:
            blocks.append([])
            used = 0
        blocks[-1].append(i)
        used += need
    out: list[str] = []
    for b, cols in enumerate(blocks):
        if b:
            out.append("")
        for r in rows:
            line = r[0].ljust(widths[0]) + "".join("  " + r[i].ljust(widths[i]) for i in cols)
            out.append((indent + line).rstrip())
    return out


# cell id, observed -> (reason, link) of the known issue (lab.toml) that covers it
Known = Callable[[str, str | None], tuple[str, str] | None]


def known_note(known: Known | None, cell_id: str, observed: str | None) -> str:
    """ " [known issue: reason (link)]" for an unexpected cell lab.toml lists, else ""."""
    hit = known(cell_id, observed) if known is not None else None
    return f" [known issue: {_line(hit[0], 200)} ({_line(hit[1], 200)})]" if hit else ""


def _provenance_parts(prov: Mapping[str, Any]) -> list[str]:
    """run.json's provenance (lab.provenance.for_run) as "what digest" parts: which lab,
    lab.toml and test cases produced the run."""
    lab = _dict(prov.get("lab"))
    parts = [
        f"lab {lab.get('describe') or lab.get('version') or 'unknown'}",
        f"lab.toml {str(prov.get('config_sha256') or 'unknown')[:12]}",
    ]
    return parts + [f"{n} {str(d)[:12]}" for n, d in sorted(_dict(prov.get("testcases")).items())]


def render_markdown(run: Run, known: Known | None = None) -> str:
    """A summary for a mailing-list reply: readable as plain text, grids indented.
    `known`: see Known; a known issue is still listed as unexpected, with its reason."""
    c = run.counts()
    m = run.meta
    cfg = _dict(m.get("config"))
    repeats = max((r.repeat for r in run.cells), default=1)
    lines = [f"# lab run {_md(run.id)}: {_md(run.status)}", ""]
    lines.append(
        f"{len(run.cells) + len(run.not_run)} cells: {c['expected']} as expected, "
        f"{c['unexpected']} unexpected, {c['infra']} infra, {c['not_run']} not run"
        + (f" (each cell up to {repeats}x)" if repeats > 1 else "")
    )
    sha = _line(cfg.get("sha256"), 64)
    lines.append(
        f"lab {_md(m.get('lab_version'), 40)}, config "
        f"{_md(Path(str(cfg.get('file') or '?')).name, 80)} (sha256 {_md(sha[:12])})"
    )
    if m.get("provenance") is not None:
        # One line even if long: it is what a list reply quotes to pin the result.
        parts = _provenance_parts(_dict(m["provenance"]))
        lines.append(
            "provenance: "
            + ", ".join(" ".join(_md(w, 80) for w in p.split(" ", 1)) for p in parts[:64])
        )
    host = _dict(m.get("host"))
    lines.append(
        f"host {_md(host.get('node') or '?', 60)} ({_md(host.get('machine'), 20)}, "
        f"{_md(host.get('cpus'), 6)} cpus), {_md(m.get('created'), 40)} .. "
        f"{_md(m.get('finished') or '-', 40)}"
    )
    if isinstance(m.get("merged_from"), list):
        lines.append("merged from: " + ", ".join(_md(x, 80) for x in m["merged_from"]))
    xarch = run.xarch()
    params = run.key_params()
    used: set[str] = set()
    for arch in run.arches:
        variants = [
            v for v in run.variants if any(s.arch == arch and s.variant == v for s in run.slots)
        ]
        tests = [
            t for t in run.testcases if any(s.arch == arch and s.testcase == t for s in run.slots)
        ]
        rows = [["variant", *tests]]
        for v in variants:
            cells = []
            for t in tests:
                s = run.slot(arch, v, t)
                if s is not None and s.observed is not None:
                    used.add(s.observed)
                cells.append(_md_cell(s, (v, t) in xarch))
            rows.append([v, *cells])
        lines += ["", f"## {_md(arch)}", "", *_md_table(rows)]
    if params and any(params.values()):
        lines += ["", "## Variants", "", *_md_table([[v, p] for v, p in params.items()])]
        const = run.constant_params()
        if const:
            lines += ["", f"    all variants: {const}"]
    for axis in versions.series_axes(run):
        values, vrows = versions.table(run, axis)
        if vrows:  # versions of a series side by side: same arch, variant rest, test case
            head = [
                "arch",
                f"variant without {_md(axis, 60)}",
                "testcase",
                *(_md(v, 40) for v in values),
            ]
            body = [
                [
                    _md(a),
                    _md(rest, 200) or "-",
                    _md(t),
                    *(_md_cell(by.get(v), False) for v in values),
                ]
                for a, rest, t, by in vrows
            ]
            lines += ["", f"## By {_md(axis, 60)} (series versions)", "", *_md_table([head, *body])]
    legend = [
        f"`{MARK_UNEXPECTED}` unexpected",
        f"`{MARK_UNSTABLE}` repetitions disagree",
        f"`{MARK_XARCH}` arches disagree",
        f"`{MD_NOT_RUN}` not run",
        f"`{MD_NOT_PLANNED}` not planned",
        *(f"{o.short} = {o}" for k in sorted(used) if (o := Outcome.of(k)) and o.short != o),
    ]
    lines += ["", *_md_items("Legend: ", legend)]

    bad = [s for s in run.slots if s.verdict == "unexpected"]
    if bad:
        firsts = [next(r for r in s.runs if r.verdict == "unexpected") for s in bad]
        n_known = sum(bool(known_note(known, r.run_cell_id, r.observed)) for r in firsts)
        of_them = f"; {n_known} of them known issues (lab.toml)" if n_known else ""
        lines += ["", f"## Unexpected ({len(bad)}{of_them})"]
        for s, first in zip(bad, firsts, strict=True):
            exp = "|".join(first.expected) or "none declared"
            lines += [
                "",
                f"### {_md(first.run_cell_id)}: {_md(first.observed)} (expected {_md(exp)})",
                "",
            ]
            if first.title:
                lines += _md_kv("title", first.title)
            hit = known(first.run_cell_id, first.observed) if known is not None else None
            if hit is not None:
                lines += _md_kv("known", f"{hit[0]} ({hit[1]})")
            lines += _md_kv("detail", first.detail)
            if len(s.runs) > 1:
                n = sum(r.verdict == "unexpected" for r in s.runs)
                lines += _md_kv("runs", f"{s.distribution()} ({n} of {len(s.runs)} unexpected)")
            e = first.telling()
            if e is not None:
                # Unwrapped: a console line is quoted as the kernel printed it. Agent
                # records and lab facts already say where they come from.
                where = f"console.log:{e.line_no}: " if e.line_no else ""
                lines.append(f"    evidence:  {where}{_line(e.text, 300)}")
            repro = _line(first.data.get("reproducer"), 400)
            if repro:
                # One line even if long: a wrapped command is not copy-pasteable.
                lines.append(f"    reproduce: {repro}")
                lines.append(f"    bundle:    {_line(bundle_command(run.id, first.dirname), 400)}")
    infra = [s for s in run.slots if s.verdict == "infra"]
    if infra:
        lines += ["", f"## Infrastructure errors ({len(infra)})", ""]
        for s in infra:
            first = next(r for r in s.runs if r.verdict == "infra")
            lines += _md_kv(s.id, first.detail, label_width=0)
    if xarch:
        lines += ["", f"## Arches disagree ({len(xarch)})", ""]
        lines += _md_table(
            [
                [f"{v}/{t}", "; ".join(f"{a}: {s.distribution()}" for a, s in slots.items())]
                for (v, t), slots in xarch.items()
            ],
            width=10_000,
        )
    unstable = [s for s in run.slots if s.unstable]
    if unstable:
        lines += ["", f"## Unstable ({len(unstable)}): repetitions disagree", ""]
        lines += _md_table([[s.id, s.distribution()] for s in unstable], width=10_000)
    if run.not_run:
        lines += ["", f"## Not run ({len(run.not_run)})", ""]
        lines += [
            "    " + x for x in textwrap.wrap(", ".join(map(_line, run.not_run)), MD_WIDTH - 4)
        ]
    if run.unreadable:
        lines += ["", f"## Unreadable cells ({len(run.unreadable)})", ""]
        for d, why in run.unreadable:
            lines += _md_kv(f"cells/{d}", why, label_width=0)
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _md_items(head: str, items: Sequence[str]) -> list[str]:
    """Comma-separated items wrapped between items, never inside one."""
    lines = [head]
    for i, item in enumerate(items):
        text = item + ("," if i < len(items) - 1 else ".")
        if len(lines[-1]) + 1 + len(text) > MD_WIDTH and lines[-1].strip():
            lines.append(" " * len(head))
        lines[-1] += ("" if lines[-1].endswith(" ") else " ") + text
    return [line.rstrip() for line in lines]


def _md_kv(label: str, text: str, label_width: int = 10) -> list[str]:
    """An indented, wrapped `label: text` entry (a code block in Markdown)."""
    head = f"    {label + ':':<{label_width}} "
    return textwrap.wrap(
        text,
        MD_WIDTH,
        initial_indent=head,
        subsequent_indent=" " * len(head),
        break_on_hyphens=False,
    ) or [head]
