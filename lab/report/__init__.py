"""Run reports: a run directory -> report.html, summary.md, junit.xml; compare; merge.

Reading is at the edge (`load` reads run.json, the cell directories, console
excerpts and the kernels' rendered fragments once); everything after that is pure
string building over the loaded `Run`, so each renderer is testable on its own.

A run directory is the one lab.results describes. Two levels of "cell" appear:
  - a *run cell* is one execution: `run_cell_id` ("x86_64/C0/depletion#2"), one
    directory under cells/;
  - a *slot* is (arch, variant, test case) over its repetitions: one grid cell.
Counts (expected / unexpected / infra / not run) are per run cell; the grids,
cross-arch and unstable flags are per slot.

Everything read from a run directory is untrusted: console lines, evidence and
details come from the guest, and a results tree may have been copied from
anywhere. Each string is cleaned of control characters (they would corrupt XML
and drive terminals) and HTML-escaped where it lands in the report.
"""

from __future__ import annotations

import collections
import functools
import html
import json
import os
import re
import shutil
import textwrap
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from lab import __version__, cache, results
from lab.classify.signatures import BY_NAME
from lab.errors import UserError
from lab.outcome import Outcome, Verdict

REPORTS = ("report.html", "summary.md", "junit.xml")
CELL_FILES = (
    "console.log",
    "console.timed.log",
    "result.jsonl",
    "evidence.json",
    "qemu.argv",
    "cell.json",
)
MAX_FRAGMENT = 256 * 1024  # bytes of fragment.config embedded per kernel
MAX_EXCERPT = 40  # console lines shown around the evidence of one run cell
EXCERPT_CONTEXT = 2  # lines either side of an evidence line in the excerpt
MAX_LINE = 500  # characters of one console line in an excerpt
MAX_CONSOLE = 256 << 20  # bytes of a console.log read for excerpts
LIST_LIMIT = 20  # cells listed per category in the terminal summary
MD_WIDTH = 76  # summary.md: aimed-at line width (mail clients wrap at ~78)

OTHER_COLOUR = ("#c9b28f", "#000")  # a class this lab version does not know
NOT_RUN_COLOUR = ("#f0f0f0", "#777")

# summary.md grid markers, suffixed to the short class name.
MARK_UNEXPECTED, MARK_UNSTABLE, MARK_XARCH = "*", "~", "!"
MD_NOT_RUN, MD_NOT_PLANNED = "-", "."

_T = TypeVar("_T")
# Controls, surrogates, non-characters and the bidi controls (Trojan Source reordering).
_BAD_CHARS = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
    "\ud800-\udfff\ufffe\uffff]"
)


# --- untrusted values -----------------------------------------------------------------


def _clean(value: object, limit: int = 0) -> str:
    """A string safe for HTML text, XML and terminals: control characters (but tab and
    newline) as \\xNN escapes, non-strings as JSON, optionally capped."""
    if value is None:
        text = ""
    elif isinstance(value, str):
        text = value
    elif isinstance(value, bool | int | float):
        text = json.dumps(value)
    else:
        text = json.dumps(value, sort_keys=True, default=str)
    text = _BAD_CHARS.sub(
        lambda m: (
            f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}"
        ),
        text,
    )
    if limit and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def _line(value: object, limit: int = 0) -> str:
    """One line of text: newlines and tabs become spaces."""
    return _clean(value, limit).replace("\n", " ").replace("\t", " ")


def _h(value: object, limit: int = 0) -> str:
    return html.escape(_clean(value, limit), quote=True)


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _token(value: str) -> str:
    """A CSS class / id fragment from a (possibly hostile) name."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", value)[:64] or "_"


def _anchor(kind: str, name: str) -> str:
    # Sanitising alone could map two names to one id; the digest keeps ids unique
    # and stable between renders of the same run.
    return f"{kind}-{_token(name)}-{cache.digest(name)[:8]}"


def _short(outcome: str) -> str:
    known = Outcome.of(outcome)
    return known.short if known else outcome


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f} s"
    minutes, secs = divmod(round(value), 60)
    if minutes < 120:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _split_id(run_cell_id: str) -> tuple[str, str, str, int]:
    """(arch, variant, test case, repeat) from "arch/variant/testcase[#N]"."""
    base, _, rep = run_cell_id.partition("#")
    repeat = int(rep) if rep.isdigit() else 1
    arch, _, rest = base.partition("/")
    variant, _, testcase = rest.rpartition("/")
    return arch, variant or rest, testcase, repeat


# --- the loaded run ----------------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    line_no: int
    text: str
    ktime: float | None
    signature: str


@dataclass(frozen=True)
class RunCell:
    """One finished execution of a cell as the report shows it: a view of the cell's
    results.CellResult, its values cleaned for display, plus what only the report
    needs (the console excerpt, the telling evidence line)."""

    run_cell_id: str
    id: str  # the slot id, without the #N repeat suffix
    arch: str
    variant: str
    testcase: str
    repeat: int
    dirname: str  # under cells/
    cell: results.CellResult
    evidence: tuple[Evidence, ...]
    files: tuple[str, ...]  # which of CELL_FILES exist
    excerpt: tuple[tuple[int, str, bool], ...]  # (line no or 0 for a gap, text, is evidence)

    @property
    def data(self) -> Mapping[str, Any]:
        """cell.json"""
        return self.cell.data

    @property
    def ev(self) -> Mapping[str, Any]:
        """evidence.json"""
        return self.cell.evidence

    @property
    def observed(self) -> str:
        return _line(self.cell.observed, 64)

    @property
    def expected(self) -> tuple[str, ...]:
        exp = self.data.get("expected")
        return tuple(_line(e, 64) for e in exp) if isinstance(exp, list) else ()

    @property
    def verdict(self) -> str:
        return Verdict.of(self.cell.verdict) or Verdict.INFRA

    @property
    def detail(self) -> str:
        return _line(self.data.get("detail") or self.ev.get("detail") or "", 1000)

    @property
    def seconds(self) -> float | None:
        t = self.data.get("timings")
        return _num(t.get("cell")) if isinstance(t, dict) else None

    def link(self, name: str) -> str:
        """A relative link from report.html to one of this cell's files."""
        return f"cells/{urllib.parse.quote(self.dirname)}/{urllib.parse.quote(name)}"

    def telling(self) -> Evidence | None:
        """The one evidence line that best shows why: the deciding kernel report line
        if there is one, else any matched kernel line, else an agent record."""

        def score(e: Evidence) -> int:
            sig = BY_NAME.get(e.signature)
            if sig is not None and sig.role == "report":
                return 0 if sig.outcome == self.observed else 1
            if e.signature.startswith(("context:", "tail")):
                return 4
            return 2 if e.line_no else 3

        return min(self.evidence, key=score, default=None)


@dataclass(frozen=True)
class Slot:
    """(arch, variant, test case) over its repetitions: one grid cell."""

    arch: str
    variant: str
    testcase: str
    runs: tuple[RunCell, ...]
    not_run: tuple[str, ...]  # planned run cell ids without a result

    @property
    def id(self) -> str:
        return f"{self.arch}/{self.variant}/{self.testcase}"

    @property
    def counts(self) -> collections.Counter[str]:
        return collections.Counter(r.observed for r in self.runs)

    @property
    def observed(self) -> str | None:
        """The most frequent class (ties: the earliest repetition's); None if not run."""
        if not self.runs:
            return None
        counts = self.counts
        top = max(counts.values())
        return next(r.observed for r in self.runs if counts[r.observed] == top)

    @property
    def unstable(self) -> bool:
        return len(self.counts) > 1

    @property
    def expected(self) -> tuple[str, ...]:
        return self.runs[0].expected if self.runs else ()

    @property
    def verdict(self) -> str:
        return Verdict.worst({r.verdict for r in self.runs}) or "not_run"

    def distribution(self) -> str:
        """ "7x sigbus, 3x fault_livelock" (most frequent first); one run: its class."""
        if len(self.runs) == 1:
            return self.runs[0].observed
        return ", ".join(f"{n}x {c}" for c, n in self.counts.most_common())


@dataclass(frozen=True)
class Run:
    dir: Path
    meta: Mapping[str, Any]  # run.json
    cells: tuple[RunCell, ...]  # plan order
    not_run: tuple[str, ...]  # planned run cell ids without a result, plan order
    slots: tuple[Slot, ...]
    arches: tuple[str, ...]
    variants: tuple[str, ...]
    testcases: tuple[str, ...]
    fragments: Mapping[str, str]  # kernel label -> rendered fragment.config text
    unreadable: tuple[tuple[str, str], ...] = ()  # (cells/ dir name, why) of unusable cells

    @property
    def id(self) -> str:
        return _line(self.meta.get("run_id") or self.dir.name, 200)

    @property
    def status(self) -> str:
        return _line(self.meta.get("status") or "unknown", 40)

    def counts(self) -> dict[str, int]:
        c = collections.Counter(r.verdict for r in self.cells)
        return {
            "expected": c["expected"],
            "unexpected": c["unexpected"],
            "infra": c["infra"],
            "not_run": len(self.not_run),
        }

    def slot(self, arch: str, variant: str, testcase: str) -> Slot | None:
        return self._index.get((arch, variant, testcase))

    @functools.cached_property
    def _index(self) -> dict[tuple[str, str, str], Slot]:
        return {(s.arch, s.variant, s.testcase): s for s in self.slots}

    def xarch(self) -> dict[tuple[str, str], dict[str, Slot]]:
        """(variant, test case) -> {arch: slot} where the arches observed different
        outcomes. infra_error is the lab's trouble, not the kernel's, so it neither
        makes nor breaks a disagreement; not-run slots do not take part."""
        by_pair: dict[tuple[str, str], dict[str, Slot]] = {}
        for s in self.slots:
            if any(r.observed != "infra_error" for r in s.runs):
                by_pair.setdefault((s.variant, s.testcase), {})[s.arch] = s
        out = {}
        for pair, slots in by_pair.items():
            kinds = {frozenset(o for o in s.counts if o != "infra_error") for s in slots.values()}
            if len(slots) > 1 and len(kinds) > 1:
                out[pair] = slots
        return out

    def variant_params(self) -> dict[str, dict[str, Any]]:
        """Variant -> its params (from the first cell of it that ran)."""
        out: dict[str, dict[str, Any]] = {}
        for c in self.cells:
            p = c.data.get("params")
            if c.variant not in out and isinstance(p, dict):
                out[c.variant] = p
        return out

    def key_params(self) -> dict[str, str]:
        """Variant -> "pool=cma fault=oom ..." with only the params that differ between
        the variants of this run (the constant ones are shown once, elsewhere)."""
        params = self.variant_params()
        keys = list(dict.fromkeys(k for p in params.values() for k in p))  # lab.toml order
        varying = [
            k
            for k in keys
            if len({json.dumps(p.get(k), sort_keys=True) for p in params.values()}) > 1
        ]
        shown = varying or (keys if len(params) == 1 else [])
        return {
            v: " ".join(f"{_line(k, 40)}={_param(p.get(k))}" for k in shown if k in p)
            for v, p in params.items()
        }

    def constant_params(self) -> str:
        params = self.variant_params()
        if len(params) < 2:
            return ""
        first = next(iter(params.values()))
        same = [k for k in first if all(k in p and p[k] == first[k] for p in params.values())]
        return " ".join(f"{_line(k, 40)}={_param(first[k])}" for k in same)


def _param(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"  # as the variant banner prints them
    return _line(value, 60)


def _evidence(ev: Mapping[str, Any]) -> tuple[Evidence, ...]:
    items = ev.get("evidence")
    out = []
    for e in items if isinstance(items, list) else []:
        if not isinstance(e, dict):
            continue
        n = e.get("line_no")
        out.append(
            Evidence(
                n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 0,
                _line(e.get("text"), 2000),
                _num(e.get("ktime")),
                _line(e.get("signature"), 80),
            )
        )
    return tuple(out)


def _excerpt(
    run_dir: Path, console: Path, numbers: Iterable[int]
) -> tuple[tuple[int, str, bool], ...]:
    """The console lines around the evidence lines, gaps as (0, "", False). Only a
    console.log inside the run directory is read (never a symlink's target outside)."""
    marks = sorted({n for n in numbers if n > 0})
    if not marks or not os.path.lexists(console):
        return ()
    try:
        raw = results.read_inside(run_dir, console, MAX_CONSOLE, whole=False)
    except (OSError, ValueError):
        return ()
    lines = raw.decode("utf-8", "replace").split("\n")
    wanted: list[int] = []
    for n in marks:
        for i in range(max(1, n - EXCERPT_CONTEXT), min(len(lines), n + EXCERPT_CONTEXT) + 1):
            if not wanted or i > wanted[-1]:
                wanted.append(i)
    wanted = wanted[:MAX_EXCERPT]
    out: list[tuple[int, str, bool]] = []
    for i in wanted:
        if out and out[-1][0] and i != out[-1][0] + 1:
            out.append((0, "", False))
        out.append((i, _line(lines[i - 1].rstrip("\r"), MAX_LINE), i in marks))
    return tuple(out)


def _run_cell(run_dir: Path, rec: results.CellResult) -> RunCell:
    data, ev = rec.data, rec.evidence
    rid = _line(data.get("run_cell_id") or data.get("id") or rec.dir.name, 300)
    arch, variant, testcase, repeat = _split_id(rid)
    arch = _line(data.get("arch") or arch, 100)
    variant = _line(data.get("variant") or variant, 100)
    testcase = _line(data.get("testcase") or testcase, 100)
    rep = data.get("repeat")
    repeat = rep if isinstance(rep, int) and not isinstance(rep, bool) and rep > 0 else repeat
    evidence = _evidence(ev)
    return RunCell(
        run_cell_id=rid,
        id=f"{arch}/{variant}/{testcase}",
        arch=arch,
        variant=variant,
        testcase=testcase,
        repeat=repeat,
        dirname=rec.dir.name,
        cell=rec,
        evidence=evidence,
        files=tuple(f for f in CELL_FILES if results.regular_file(run_dir, rec.dir / f)),
        excerpt=_excerpt(run_dir, rec.dir / "console.log", (e.line_no for e in evidence)),
    )


def _slot_key(run_cell_id: str) -> tuple[str, str, str]:
    arch, variant, testcase, _ = _split_id(run_cell_id)
    return arch, variant, testcase


def _ordered(items: Iterable[_T]) -> tuple[_T, ...]:
    return tuple(dict.fromkeys(items))


def load(run_dir: Path) -> Run:
    """Read a run directory (the only I/O of rendering)."""
    meta = results.load_run(run_dir)
    planned = results.planned_ids(meta)
    found: dict[str, RunCell] = {}
    records, unreadable = results.scan_cells(run_dir)
    for rec in records:
        rc = _run_cell(run_dir, rec)
        found.setdefault(rc.run_cell_id, rc)
    order = {rid: i for i, rid in enumerate(planned)}
    cells = sorted(
        found.values(), key=lambda c: (order.get(c.run_cell_id, len(order)), c.run_cell_id)
    )
    not_run = tuple(rid for rid in dict.fromkeys(planned) if rid not in found)

    ids = [_slot_key(rid) for rid in planned]
    ids += [(c.arch, c.variant, c.testcase) for c in cells]
    runs_by: dict[tuple[str, str, str], list[RunCell]] = {}
    for c in cells:
        runs_by.setdefault((c.arch, c.variant, c.testcase), []).append(c)
    missing_by: dict[tuple[str, str, str], list[str]] = {}
    for rid in not_run:
        missing_by.setdefault(_slot_key(rid), []).append(rid)
    slots = tuple(
        Slot(
            a,
            v,
            t,
            tuple(sorted(runs_by.get((a, v, t), []), key=lambda c: c.repeat)),
            tuple(missing_by.get((a, v, t), [])),
        )
        for a, v, t in _ordered(ids)
    )

    fragments = {}
    kernels = meta.get("kernels")
    for label, k in kernels.items() if isinstance(kernels, dict) else []:
        kdir = k.get("dir") if isinstance(k, dict) else None
        if isinstance(kdir, str) and kdir:
            try:
                with open(Path(kdir) / "fragment.config", "rb") as f:
                    raw = f.read(MAX_FRAGMENT + 1)
            except OSError:
                continue
            text = raw[:MAX_FRAGMENT].decode("utf-8", "replace")
            fragments[str(label)] = text + (
                "\n# ... (truncated)\n" if len(raw) > MAX_FRAGMENT else ""
            )
    return Run(
        dir=run_dir,
        meta=meta,
        cells=tuple(cells),
        not_run=not_run,
        slots=slots,
        arches=_ordered(a for a, _, _ in ids),
        variants=_ordered(v for _, v, _ in ids),
        testcases=_ordered(t for _, _, t in ids),
        fragments=fragments,
        unreadable=tuple((_line(u.dir.name, 200), _line(u.reason, 300)) for u in unreadable),
    )


# --- HTML -----------------------------------------------------------------------------------


def _css() -> str:
    rules = [
        "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5em 2em;"
        "color:#1d1d1d;background:#fff}",
        "h1{font-size:1.5em;margin:0 0 .4em}h2{margin-top:1.8em;border-bottom:1px solid #ccc}",
        "code,pre{font:12.5px/1.35 ui-monospace,'DejaVu Sans Mono',monospace}",
        "pre{background:#f6f6f6;border:1px solid #ddd;padding:.5em;overflow-x:auto;"
        "white-space:pre-wrap;word-break:break-all}",
        "table{border-collapse:collapse;margin:.4em 0}",
        "table.meta td,table.meta th,table.kv td,table.kv th,table.list td,table.list th"
        "{border:1px solid #ddd;padding:2px 8px;text-align:left;vertical-align:top}",
        "table.meta th,table.kv th{background:#f3f3f3;font-weight:600;white-space:nowrap}",
        "table.grid th,table.grid td{border:1px solid #888;padding:0;vertical-align:top}",
        "table.grid th{background:#eee;padding:4px 8px;text-align:left}",
        "table.grid th.variant{white-space:nowrap}",
        "table.grid th .params{display:block;font-weight:normal;font-size:11px;color:#555}",
        "td.cell{min-width:7.5em}",
        "td.cell a{display:block;padding:4px 7px;color:inherit;text-decoration:none}",
        "td.cell .obs{font-weight:600}",
        "td.cell .exp,td.cell .dist,td.cell .note{display:block;font-size:11px}",
        "td.cell.unexpected{box-shadow:inset 0 0 0 3px #e00000}",
        "td.cell.infra{background-image:repeating-linear-gradient(45deg,transparent 0 6px,"
        "rgba(0,0,0,.13) 6px 9px)}",
        f"td.cell.not_run{{color:{NOT_RUN_COLOUR[1]};background:{NOT_RUN_COLOUR[0]};"
        "font-style:italic;box-shadow:inset 0 0 0 1px #bbb}",
        "td.absent{background:#fff;color:#bbb;text-align:center}",
        "td.cell.unstable .obs::after{content:' ≈'}",
        ".mark{font-weight:700;margin-left:.25em}",
        ".mark-unexpected{color:#e00000;background:#fff;border-radius:3px;padding:0 2px}",
        ".badge{display:inline-block;padding:0 6px;border-radius:3px;font-size:12px;"
        "font-weight:600;border:1px solid #888}",
        ".badge.unstable{background:#222;color:#fff}",
        ".badge.v-unexpected{background:#e00000;color:#fff}",
        ".badge.v-expected{background:#dff5df}",
        ".badge.v-infra{background:#ddd}",
        ".badge.v-not_run{background:#f0f0f0;color:#777}",
        ".status-complete{color:#176b17}.status-incomplete,.status-interrupted,"
        ".status-running{color:#b35c00}",
        "span.swatch{padding:1px 6px;border:1px solid #888;border-radius:2px}",
        ".legend span.swatch{display:inline-block;padding:2px 8px;margin:2px;font-size:12px}",
        ".counts span{margin-right:1.2em;font-weight:600}",
        "section.cell-details{border-top:1px solid #ddd;padding-top:.3em}",
        "details.run{margin:.4em 0 .8em 1em}",
        "details.run>summary{cursor:pointer;font-weight:600}",
        "table.evidence td{border:1px solid #e3e3e3;padding:1px 6px;vertical-align:top}",
        "table.evidence td.text{font-family:ui-monospace,monospace;font-size:12px;"
        "white-space:pre-wrap;word-break:break-all}",
        "pre.excerpt mark{background:#fff1a8}",
        ".links a{margin-right:1em}",
        ".muted{color:#777}",
    ]
    for cls, (bg, fg) in [*((o.value, o.colour) for o in Outcome), ("other", OTHER_COLOUR)]:
        rules.append(f".outcome-{cls}{{background-color:{bg};color:{fg}}}")
    return "\n".join(rules)


def _outcome_class(outcome: str) -> str:
    return f"outcome-{outcome}" if Outcome.of(outcome) else "outcome-other"


def _badge(verdict: str) -> str:
    word = {"not_run": "not run"}.get(verdict, verdict)
    return f'<span class="badge v-{_token(verdict)}">{_h(word)}</span>'


def _kv(rows: Iterable[tuple[str, str]], cls: str = "kv") -> str:
    """A two-column table; values are HTML already."""
    body = "".join(f"<tr><th>{_h(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="{cls}">{body}</table>'


def _file_url(path: object) -> str | None:
    if not isinstance(path, str) or not path.startswith("/"):
        return None
    return Path(path).as_uri()


def _host(host: object) -> str:
    if not isinstance(host, dict):
        return _line(host, 200)
    bits = [f"{host[k]}" for k in ("machine", "kernel") if host.get(k)]
    if host.get("cpus"):
        bits.append(f"{host['cpus']} cpus")
    if host.get("python"):
        bits.append(f"python {host['python']}")
    node = host.get("node") or "?"
    return _line(f"{node} ({', '.join(bits)})" if bits else node, 300)


def _durations(d: object, prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if not isinstance(d, dict):
        return out
    for k, v in d.items():
        name = f"{prefix}{_line(k, 80)}"
        if isinstance(v, dict):
            out += _durations(v, name + ".")
        else:
            n = _num(v)
            out.append((name, _seconds(n) if n is not None else _line(v, 80)))
    return out


def _header_html(run: Run) -> str:
    m = run.meta
    c = run.counts()
    cfg = _dict(m.get("config"))
    sel = _dict(m.get("selection"))
    cell_secs = [s for s in (r.seconds for r in run.cells) if s is not None]
    rows = [
        ("run", f"<code>{_h(run.id)}</code>"),
        ("status", f'<span class="status-{_token(run.status)}">{_h(run.status)}</span>'),
        ("planned cells", _h(len(run.cells) + len(run.not_run))),
        ("lab version", _h(m.get("lab_version"))),
        (
            "config",
            f"<code>{_h(cfg.get('file'))}</code> sha256 <code>{_h(cfg.get('sha256'))}</code>",
        ),
        ("selection", _h(" ".join(f"{k}={_line(v, 200)}" for k, v in sel.items()))),
        ("host", _h(_host(m.get("host")))),
        ("created", _h(m.get("created"))),
        ("finished", _h(m.get("finished") or "-")),
    ]
    hosts = m.get("hosts")
    if isinstance(hosts, dict):
        rows.append(
            ("shard hosts", "<br>".join(f"{_h(k)}: {_h(_host(v))}" for k, v in hosts.items()))
        )
    merged = m.get("merged_from")
    if isinstance(merged, list):
        rows.append(("merged from", ", ".join(f"<code>{_h(r)}</code>" for r in merged)))
    for k, v in _durations(m.get("durations")):
        rows.append((f"duration: {k}", _h(v)))
    rows.append(
        (
            "cell time (sum)",
            _h(f"{_seconds(sum(cell_secs))} over {len(cell_secs)} cells" if cell_secs else "-"),
        )
    )
    counts = (
        f'<p class="counts"><span data-count="expected">{c["expected"]} expected</span>'
        f'<span data-count="unexpected">{c["unexpected"]} unexpected</span>'
        f'<span data-count="infra">{c["infra"]} infra</span>'
        f'<span data-count="not_run">{c["not_run"]} not run</span></p>'
    )
    return (
        f"<h1>lab run <code>{_h(run.id)}</code> "
        f'<span class="status-{_token(run.status)}">{_h(run.status)}</span></h1>'
        f"{counts}{_kv(rows, 'meta')}"
    )


def _legend_html(run: Run) -> str:
    seen = {r.observed for r in run.cells}
    classes = [*Outcome, *sorted(c for c in seen if Outcome.of(c) is None)]
    swatches = "".join(f'<span class="swatch {_outcome_class(c)}">{_h(c)}</span>' for c in classes)
    return (
        f'<div class="legend" id="legend"><strong>Observed outcome:</strong> {swatches}'
        f'<span class="swatch" style="background:{NOT_RUN_COLOUR[0]};'
        f'color:{NOT_RUN_COLOUR[1]}"><i>not run</i></span><br>'
        "<strong>Marks:</strong> "
        '<span class="mark mark-unexpected">✗</span> unexpected (red frame) · '
        '<span class="mark">⚠</span> infrastructure error (striped) · '
        '<span class="badge unstable">UNSTABLE</span> repetitions disagree · '
        '<span class="mark">⇄</span> arches disagree · '
        '"exp: X" the expected outcome when the observed one differs</div>'
    )


def _grid_cell(s: Slot, xarch: bool) -> str:
    obs = s.observed
    classes = ["cell", _outcome_class(obs) if obs else "", s.verdict]
    if s.unstable:
        classes.append("unstable")
    if xarch:
        classes.append("xarch")
    expected = "|".join(s.expected)
    inner = [f'<span class="obs">{_h(obs or "not run")}</span>']
    if obs and (not s.expected or obs not in s.expected):
        inner.append(f'<span class="exp">exp: {_h(expected or "none")}</span>')
    if s.unstable:
        inner.append(
            f'<span class="dist">{_h(s.distribution())}</span>'
            '<span class="badge unstable">UNSTABLE</span>'
        )
    elif len(s.runs) > 1:
        inner.append(f'<span class="dist">{_h(s.distribution())}</span>')
    if s.runs and s.not_run:
        inner.append(f'<span class="note">{len(s.not_run)} not run</span>')
    if s.verdict == "unexpected":
        inner.append('<span class="mark mark-unexpected" title="unexpected">✗</span>')
    elif s.verdict == "infra":
        inner.append('<span class="mark" title="infrastructure error">⚠</span>')
    if xarch:
        inner.append('<span class="mark" title="arches disagree">⇄</span>')
    title = s.id + (f": {s.runs[0].detail}" if s.runs else ": not run")
    attrs = (
        f'class="{" ".join(c for c in classes if c)}" data-cell="{_h(s.id)}" '
        f'data-observed="{_h(obs or "not_run")}" data-expected="{_h(expected)}" '
        f'data-verdict="{_h(s.verdict)}" data-runs="{len(s.runs)}"'
    )
    if len(s.runs) > 1:
        attrs += f' data-distribution="{_h(s.distribution())}"'
    return (
        f'<td {attrs} title="{_h(title, 300)}"><a href="#{_anchor("cell", s.id)}">'
        f"{''.join(inner)}</a></td>"
    )


def _grids_html(run: Run) -> str:
    xarch = run.xarch()
    params = run.key_params()
    out = []
    for arch in run.arches:
        variants = [
            v for v in run.variants if any(s.arch == arch and s.variant == v for s in run.slots)
        ]
        tests = [
            t for t in run.testcases if any(s.arch == arch and s.testcase == t for s in run.slots)
        ]
        head = "".join(f'<th class="testcase" data-testcase="{_h(t)}">{_h(t)}</th>' for t in tests)
        rows = []
        for v in variants:
            tds = []
            for t in tests:
                s = run.slot(arch, v, t)
                tds.append(
                    _grid_cell(s, (v, t) in xarch)
                    if s
                    else '<td class="absent" title="not planned">·</td>'
                )
            p = params.get(v)
            ptxt = f'<span class="params">{_h(p)}</span>' if p else ""
            rows.append(
                f'<tr data-variant="{_h(v)}"><th class="variant">{_h(v)}{ptxt}</th>'
                f"{''.join(tds)}</tr>"
            )
        out.append(
            f'<h2 id="{_anchor("arch", arch)}">{_h(arch)}</h2>'
            f'<table class="grid" data-arch="{_h(arch)}"><thead><tr>'
            f"<th>variant</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        )
    const = run.constant_params()
    if const:
        out.append(f'<p class="muted">Params common to every variant: <code>{_h(const)}</code></p>')
    return "".join(out)


def _slot_link(s: Slot | str) -> str:
    sid = s.id if isinstance(s, Slot) else s
    return f'<a href="#{_anchor("cell", sid)}"><code>{_h(sid)}</code></a>'


def _problems_html(run: Run) -> str:
    out = []
    # Per run cell, not per slot: of an unstable slot only some repetitions are bad.
    bad = [c for c in run.cells if c.verdict in ("unexpected", "infra")]
    if bad:
        rows = "".join(
            f'<tr data-run-cell="{_h(c.run_cell_id)}">'
            f'<td><a href="#{_anchor("run", c.run_cell_id)}"><code>{_h(c.run_cell_id)}</code>'
            f"</a></td><td>{_badge(c.verdict)}</td>"
            f"<td>{_h(c.observed)}</td><td>{_h('|'.join(c.expected) or 'none')}</td>"
            f"<td>{_h(c.detail)}</td></tr>"
            for c in bad
        )
        out.append(
            '<h2 id="problems">Unexpected and infrastructure results</h2>'
            '<table class="list"><tr><th>cell</th><th>verdict</th><th>observed</th>'
            f"<th>expected</th><th>detail</th></tr>{rows}</table>"
        )
    xarch = run.xarch()
    if xarch:
        rows = "".join(
            f'<tr data-pair="{_h(v)}/{_h(t)}"><td><code>{_h(v)}/{_h(t)}</code></td><td>'
            + "<br>".join(f"{_slot_link(s)}: {_h(s.distribution())}" for s in slots.values())
            + "</td></tr>"
            for (v, t), slots in xarch.items()
        )
        out.append(
            '<h2 id="xarch">Arches disagree</h2><p>The same variant and test case '
            "observed different outcomes on different arches (infrastructure errors "
            "ignored).</p>"
            f'<table class="list"><tr><th>variant/test</th><th>observed</th></tr>{rows}'
            "</table>"
        )
    unstable = [s for s in run.slots if s.unstable]
    if unstable:
        rows = "".join(
            f'<tr data-cell="{_h(s.id)}"><td>{_slot_link(s)}</td>'
            f"<td>{_h(s.distribution())}</td></tr>"
            for s in unstable
        )
        out.append(
            '<h2 id="unstable">Unstable cells</h2><p>Repetitions of these cells '
            "observed more than one outcome class.</p>"
            f'<table class="list"><tr><th>cell</th><th>outcomes</th></tr>{rows}</table>'
        )
    if run.not_run:
        items = ", ".join(f"<code>{_h(r)}</code>" for r in run.not_run)
        out.append(f'<h2 id="not-run">Not run ({len(run.not_run)})</h2><p>{items}</p>')
    if run.unreadable:
        rows = "".join(
            f"<tr><td><code>cells/{_h(d)}</code></td><td>{_h(why)}</td></tr>"
            for d, why in run.unreadable
        )
        out.append(
            f'<h2 id="unreadable">Unreadable cells ({len(run.unreadable)})</h2>'
            "<p>These cell directories hold a cell.json the lab cannot use; their cells "
            "count as not run (<code>--resume</code> runs them again).</p>"
            f'<table class="list"><tr><th>directory</th><th>problem</th></tr>{rows}</table>'
        )
    return "".join(out)


def _evidence_html(c: RunCell) -> str:
    if not c.evidence:
        return '<p class="muted">No evidence lines.</p>'
    rows = []
    for e in c.evidence:
        if e.line_no and "console.log" in c.files:
            where = f'<a href="{_h(c.link("console.log"))}">console.log:{e.line_no}</a>'
        elif e.line_no:
            where = f"console.log:{e.line_no}"
        elif e.signature.startswith("agent"):
            where = f'<a href="{_h(c.link("result.jsonl"))}">agent</a>'
        else:
            where = "lab"
        kt = f"{e.ktime:.6f}" if e.ktime is not None else ""
        rows.append(
            f'<tr><td class="ln">{where}</td><td><code>{_h(e.signature)}</code></td>'
            f'<td class="kt">{_h(kt)}</td><td class="text">{_h(e.text)}</td></tr>'
        )
    table = f'<table class="evidence">{"".join(rows)}</table>'
    if c.excerpt:
        lines = []
        for n, text, mark in c.excerpt:
            if not n:
                lines.append("      …")
                continue
            line = f"{n:>6} | {_h(text)}"
            lines.append(f"<mark>{line}</mark>" if mark else line)
        table += (
            "<p>Console excerpt (evidence lines highlighted; full log: "
            f'<a href="{_h(c.link("console.log"))}">console.log</a>):</p>'
            f'<pre class="excerpt">{chr(10).join(lines)}</pre>'
        )
    return table


def _run_cell_html(run: Run, c: RunCell, open_: bool) -> str:
    d = c.data
    t = _dict(d.get("timings"))
    timings = ", ".join(
        f"{k} {_seconds(_num(t.get(k)))}" for k in ("ready", "agent", "qemu", "cell") if k in t
    )
    kernel = _dict(d.get("kernel"))
    klabel = f"{c.arch}/{c.variant}"
    kernels = run.meta.get("kernels")
    klink = (
        f' (<a href="#{_anchor("kernel", klabel)}">provenance</a>)'
        if isinstance(kernels, dict) and klabel in kernels
        else ""
    )
    rule = _line(c.ev.get("rule"), 80)
    p = d.get("params")
    params = (
        " ".join(f"{_line(k, 40)}={_param(v)}" for k, v in p.items()) if isinstance(p, dict) else ""
    )
    rule_text = _line(c.ev.get("rule_text"), 500)
    rows = [
        ("observed", f'<span class="swatch {_outcome_class(c.observed)}">{_h(c.observed)}</span>'),
        ("expected", _h("|".join(c.expected) or "none declared")),
        ("expectation rule", f"<code>{_h(d.get('expected_rule') or '-')}</code>"),
        ("verdict", _badge(c.verdict)),
        ("detail", _h(c.detail)),
        ("classifier rule", f"<code>{_h(rule or '-')}</code> {_h(rule_text)}"),
        ("params", f"<code>{_h(params or '-')}</code>"),
        ("kernel", f"<code>{_h(kernel.get('key') or '-')}</code>{klink}"),
        (
            "accelerator",
            _h(
                " ".join(x for x in (_line(d.get("accel")), _line(d.get("accel_reason"))) if x)
                or "-"
            ),
        ),
        ("cmdline", f"<code>{_h(d.get('cmdline') or '-')}</code>"),
        (
            "qemu",
            _h(
                f"exit {_line(d.get('qemu_exit'))}"
                + (", killed by the lab" if d.get("qemu_killed") else "")
            ),
        ),
        ("timings", _h(timings or "-")),
        ("finished", _h(f"{_line(d.get('finished'))} on {_line(d.get('host') or '?')}")),
    ]
    links = " ".join(f'<a href="{_h(c.link(f))}">{_h(f)}</a>' for f in c.files)
    return (
        f'<details class="run" id="{_anchor("run", c.run_cell_id)}" '
        f'data-run-cell="{_h(c.run_cell_id)}"{" open" if open_ else ""}>'
        f"<summary>{_h(c.run_cell_id)}: {_h(c.observed)} "
        f"{_badge(c.verdict)}</summary>{_kv(rows)}"
        f"<h4>Evidence</h4>{_evidence_html(c)}"
        f"<h4>Reproduce</h4><pre>{_h(d.get('reproducer') or '-')}</pre>"
        f'<p class="links">Files: {links or "none"}</p></details>'
    )


def _details_html(run: Run) -> str:
    out = ['<h2 id="cells">Cell details</h2>']
    for s in run.slots:
        head = (
            f"<h3>{_h(s.id)} {_badge(s.verdict)}"
            + (' <span class="badge unstable">UNSTABLE</span>' if s.unstable else "")
            + "</h3>"
        )
        parts = [head]
        if len(s.runs) > 1 or s.not_run:
            parts.append(
                f"<p>{len(s.runs)} run(s): {_h(s.distribution() or '-')}"
                + (f"; not run: {', '.join(_h(r) for r in s.not_run)}" if s.not_run else "")
                + "</p>"
            )
        for i, c in enumerate(s.runs):
            parts.append(
                _run_cell_html(run, c, i == 0 or c.verdict != "expected" or len(s.runs) <= 3)
            )
        out.append(
            f'<section class="cell-details" id="{_anchor("cell", s.id)}" '
            f'data-cell="{_h(s.id)}">{"".join(parts)}</section>'
        )
    return "".join(out)


def _provenance_html(run: Run) -> str:
    m = run.meta
    out = ['<h2 id="provenance">Build provenance</h2>']
    kernels = _dict(m.get("kernels"))
    if not kernels:
        out.append('<p class="muted">No kernel built in this run.</p>')

    def order(label: str) -> tuple[int, int, str]:
        arch, _, variant = label.partition("/")
        return (
            run.arches.index(arch) if arch in run.arches else len(run.arches),
            run.variants.index(variant) if variant in run.variants else len(run.variants),
            label,
        )

    for label, k in sorted(kernels.items(), key=lambda kv: order(str(kv[0]))):
        if not isinstance(k, dict):
            continue
        src = _dict(k.get("source"))
        kdir = k.get("dir")
        links = []
        for name in ("config", "fragment.config", "build.log", "meta.json"):
            url = _file_url(f"{kdir}/{name}") if isinstance(kdir, str) else None
            if url:
                links.append(f'<a href="{_h(url)}">{_h(name)}</a>')
        tc = k.get("toolchain")
        rows = [
            ("key", f"<code>{_h(k.get('key'))}</code>"),
            ("directory", f"<code>{_h(kdir)}</code>"),
            ("image sha256", f"<code>{_h(k.get('image_sha256'))}</code>"),
            ("config sha256", f"<code>{_h(k.get('config_sha256'))}</code>"),
            ("source", f"{_h(src.get('description'))}<br><code>{_h(src.get('identity'))}</code>"),
            (
                "toolchain",
                _h(
                    "; ".join(f"{_line(a)}: {_line(b)}" for a, b in tc.items())
                    if isinstance(tc, dict)
                    else tc
                ),
            ),
            (
                "build durations",
                _h(", ".join(f"{a} {b}" for a, b in _durations(k.get("durations"))) or "-"),
            ),
            ("reproducer", f"<code>{_h(k.get('reproducer') or '-')}</code>"),
            ("files", " ".join(links) or "-"),
        ]
        series = _list(k.get("series"))
        patches = "".join(
            f"<tr><td>{_h(p.get('series'))}</td><td><code>{_h(p.get('patch'))}</code></td>"
            f"<td><code>{_h(p.get('sha256'))}</code></td></tr>"
            for p in series
            if isinstance(p, dict)
        )
        frags = _list(k.get("fragments"))
        frag_rows = "".join(
            f"<tr><td><code>{_h(f.get('template'))}</code></td>"
            f"<td><code>{_h(f.get('sha256'))}</code></td></tr>"
            for f in frags
            if isinstance(f, dict)
        )
        text = run.fragments.get(str(label))
        embedded = (
            f"<details><summary>rendered fragment.config ({len(text.splitlines())} "
            f"lines)</summary><pre>{_h(text)}</pre></details>"
            if text is not None
            else '<p class="muted">fragment.config not readable when rendered.</p>'
        )
        out.append(
            f'<section class="kernel" id="{_anchor("kernel", str(label))}" '
            f'data-kernel="{_h(label)}"><h3>{_h(label)}</h3>{_kv(rows)}'
            f"<h4>Patches</h4>"
            + (
                f'<table class="list"><tr><th>series</th><th>patch</th><th>sha256</th></tr>'
                f"{patches}</table>"
                if patches
                else '<p class="muted">none</p>'
            )
            + "<h4>Config fragments</h4>"
            + (
                f'<table class="list"><tr><th>template</th><th>sha256</th></tr>{frag_rows}</table>'
                if frag_rows
                else '<p class="muted">none</p>'
            )
            + f"{embedded}</section>"
        )
    failures = m.get("build_failures")
    if isinstance(failures, dict) and failures:
        frows = "".join(
            f'<tr data-kernel="{_h(k)}"><td><code>{_h(k)}</code></td><td>{_h(v)}</td></tr>'
            for k, v in sorted(failures.items())
        )
        out.append(
            '<h3 id="build-failures">Build failures</h3><table class="list">'
            f"<tr><th>kernel</th><th>first error</th></tr>{frows}</table>"
        )
    images = m.get("images")
    if isinstance(images, dict) and images:
        irows = "".join(
            f"<tr><td>{_h(a)}</td><td><code>{_h(i.get('key'))}</code></td>"
            f"<td><code>{_h(i.get('path'))}</code></td></tr>"
            for a, i in sorted(images.items())
            if isinstance(i, dict)
        )
        out.append(
            '<h3 id="images">Guest images</h3><table class="list"><tr><th>arch</th>'
            f"<th>key</th><th>path</th></tr>{irows}</table>"
        )
    return "".join(out)


def render_html(run: Run) -> str:
    """The self-contained HTML report (inline CSS, no scripts, no external fetches)."""
    body = (
        _header_html(run)
        + _legend_html(run)
        + _grids_html(run)
        + _problems_html(run)
        + _details_html(run)
        + _provenance_html(run)
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        # No scripts and nothing fetched: the report is opened from CI artefacts and
        # mail attachments, and it displays text a guest wrote.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>lab run {_h(run.id)}: {_h(run.status)}</title>"
        f"<style>{_css()}</style></head><body>{body}"
        f'<p class="muted">Rendered by lab {_h(__version__)}.</p></body></html>\n'
    )


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


def render_markdown(run: Run) -> str:
    """A summary for a mailing-list reply: readable as plain text, grids indented."""
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
        lines += ["", f"## Unexpected ({len(bad)})"]
        for s in bad:
            first = next(r for r in s.runs if r.verdict == "unexpected")
            exp = "|".join(first.expected) or "none declared"
            lines += [
                "",
                f"### {_md(first.run_cell_id)}: {_md(first.observed)} (expected {_md(exp)})",
                "",
            ]
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


# --- JUnit ----------------------------------------------------------------------------------


def render_junit(run: Run) -> str:
    """One <testsuite> per arch, one <testcase> per run cell (repetitions included)."""
    root = ET.Element("testsuites", name=f"lab {run.id}")
    totals = collections.Counter[str]()
    for arch in run.arches:
        suite = ET.SubElement(root, "testsuite", name=f"lab.{arch}")
        props = ET.SubElement(suite, "properties")
        for k, v in (
            ("run_id", run.id),
            ("status", run.status),
            (
                "config_sha256",
                (run.meta.get("config") or {}).get("sha256")
                if isinstance(run.meta.get("config"), dict)
                else None,
            ),
        ):
            ET.SubElement(props, "property", name=k, value=_line(v))
        n = collections.Counter[str]()
        elapsed = 0.0
        for c in (c for c in run.cells if c.arch == arch):
            name = f"{c.variant}/{c.testcase}" + (f"#{c.repeat}" if c.repeat > 1 else "")
            secs = c.seconds or 0.0
            elapsed += secs
            case = ET.SubElement(
                suite, "testcase", name=name, classname=f"lab.{arch}", time=f"{secs:.3f}"
            )
            n["tests"] += 1
            body = "\n".join(
                f"{f'console.log:{e.line_no}' if e.line_no else e.signature}: {e.text}"
                for e in c.evidence
            )
            if c.verdict == "unexpected":
                n["failures"] += 1
                el = ET.SubElement(
                    case,
                    "failure",
                    type=c.observed,
                    message=_line(
                        f"observed {c.observed}, expected {'|'.join(c.expected) or 'none declared'}"
                        f": {c.detail}",
                        1000,
                    ),
                )
                el.text = body
            elif c.verdict == "infra":
                n["errors"] += 1
                el = ET.SubElement(
                    case, "error", type=c.observed, message=_line(c.detail or c.observed, 1000)
                )
                el.text = body
            out = ET.SubElement(case, "system-out")
            out.text = _clean(
                f"observed: {c.observed}\nexpected: "
                f"{'|'.join(c.expected) or 'none declared'}\n"
                f"rule: {_line(c.ev.get('rule'))}\ndetail: {c.detail}\n"
                f"reproduce: {_line(c.data.get('reproducer'))}\n"
                f"console: {c.link('console.log')}\n"
            )
        for rid in run.not_run:
            a, v, t, rep = _split_id(rid)
            if a != arch:
                continue
            case = ET.SubElement(
                suite,
                "testcase",
                name=f"{v}/{t}" + (f"#{rep}" if rep > 1 else ""),
                classname=f"lab.{arch}",
                time="0.000",
            )
            n["tests"] += 1
            n["skipped"] += 1
            ET.SubElement(case, "skipped", message=f"not run (run {run.status})")
        for k in ("tests", "failures", "errors", "skipped"):
            suite.set(k, str(n[k]))
        suite.set("time", f"{elapsed:.3f}")
        totals.update(n)
        totals["time_ms"] += int(elapsed * 1000)
    for k in ("tests", "failures", "errors", "skipped"):
        root.set(k, str(totals[k]))
    root.set("time", f"{totals['time_ms'] / 1000:.3f}")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


# --- entry points -----------------------------------------------------------------------------


def render(run_dir: Path) -> None:
    """Write report.html, summary.md and junit.xml into run_dir (each atomically)."""
    run = load(run_dir)
    cache.write_atomic(run_dir / "report.html", render_html(run))
    cache.write_atomic(run_dir / "summary.md", render_markdown(run))
    cache.write_atomic(run_dir / "junit.xml", render_junit(run))


def _listing(title: str, items: Sequence[str]) -> list[str]:
    out = [f"  {title} {x}" for x in items[:LIST_LIMIT]]
    if len(items) > LIST_LIMIT:
        out.append(f"  ... and {len(items) - LIST_LIMIT} more {title.strip()} (see summary.md)")
    return out


def text_summary(run_dir: Path) -> str:
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


# --- compare ----------------------------------------------------------------------------------

KINDS = ("regression", "fix", "changed", "only_a", "only_b")


@dataclass(frozen=True)
class Change:
    """A run cell whose outcome or verdict differs between run A and run B.

    A side without a result has observed None and verdict "not run" (planned there
    but without a result) or "absent" (not planned there).
    """

    kind: str  # one of KINDS
    id: str  # run cell id
    a_observed: str | None
    b_observed: str | None
    a_verdict: str
    b_verdict: str


def _outcomes(run_dir: Path) -> tuple[dict[str, tuple[str, str]], set[str]]:
    run = load(run_dir)
    done = {c.run_cell_id: (c.observed, c.verdict) for c in run.cells}
    return done, set(run.not_run)


def compare(run_a: Path, run_b: Path) -> list[Change]:
    """Changed cells, regressions first, then fixes, other changes, cells in one run only."""
    a, a_missing = _outcomes(run_a)
    b, b_missing = _outcomes(run_b)
    changes = []
    for rid in sorted(set(a) | set(b) | a_missing | b_missing):
        if rid not in a and rid not in b:
            continue  # planned in both, run in neither: nothing to compare
        av = "not run" if rid in a_missing else "absent"
        bv = "not run" if rid in b_missing else "absent"
        if rid not in b:
            changes.append(Change("only_a", rid, a[rid][0], None, a[rid][1], bv))
        elif rid not in a:
            changes.append(Change("only_b", rid, None, b[rid][0], av, b[rid][1]))
        elif a[rid] != b[rid]:
            (ao, av), (bo, bv) = a[rid], b[rid]
            if av == "expected" and bv != "expected":
                kind = "regression"
            elif av != "expected" and bv == "expected":
                kind = "fix"
            else:
                kind = "changed"
            changes.append(Change(kind, rid, ao, bo, av, bv))
    changes.sort(key=lambda ch: KINDS.index(ch.kind))  # stable: ids stay sorted per kind
    return changes


_TITLES = {
    "regression": "Regressions (as expected in A, not in B)",
    "fix": "Fixes (not as expected in A, as expected in B)",
    "changed": "Other changes (outcome changed)",
    "only_a": "Only in A",
    "only_b": "Only in B",
}


def format_compare(changes: Sequence[Change], a: str = "A", b: str = "B") -> str:
    """Text for the terminal: one line per change, grouped in KINDS order."""
    if not changes:
        return f"no cell changed between {a} and {b}"
    width = max(len(ch.id) for ch in changes)
    lines = [f"A = {a}", f"B = {b}"]
    for kind in KINDS:
        group = [ch for ch in changes if ch.kind == kind]
        if not group:
            continue
        lines += ["", f"{_TITLES[kind]}: {len(group)}"]
        for ch in group:
            lines.append(
                f"  {ch.id:<{width}}  {ch.a_observed or '-'} -> {ch.b_observed or '-'}"
                f"  ({ch.a_verdict} -> {ch.b_verdict})"
            )
    n = collections.Counter(ch.kind for ch in changes)
    lines += [
        "",
        f"{n['regression']} regression(s), {n['fix']} fix(es), {n['changed']} other "
        f"change(s), {n['only_a'] + n['only_b']} in one run only",
    ]
    return "\n".join(lines)


# --- merge ------------------------------------------------------------------------------------


def _matrix_run(run_dir: Path) -> dict[str, Any]:
    meta = results.load_run(run_dir)
    if not isinstance(meta, dict) or not isinstance(meta.get("cells"), list):
        raise UserError(f"{run_dir}: not a matrix run (run.json has no list of cells)")
    cfg = meta.get("config")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("sha256"), str):
        raise UserError(f"{run_dir}: run.json has no config sha256")
    return meta


def _merge_keyed(into: dict[str, Any], label: str, value: Any, what: str, src: Path) -> None:
    """Add a kernel/image entry; the same label must mean the same content-addressed key
    (paths may differ: shards run on different hosts with different cache dirs)."""
    have = into.get(label)
    if have is None:
        into[label] = value
        return
    k1 = have.get("key") if isinstance(have, dict) else have
    k2 = value.get("key") if isinstance(value, dict) else value
    if k1 != k2:
        raise UserError(
            f"{src}: {what} {label} has key {k2}, another run has {k1}; "
            "the runs did not build the same thing"
        )


def _copy_cell(run_dir: Path, src: Path, dest: Path) -> None:
    """Copy a cell directory's regular files and subdirectories; a symlink is left out
    (a copied results tree must not pull e.g. /etc/passwd into the merged run)."""
    dest.mkdir()
    for path in sorted(src.iterdir()):
        if path.is_symlink():
            continue
        if path.is_dir():
            _copy_cell(run_dir, path, dest / path.name)
        elif path.is_file():
            try:
                f = results.open_inside(run_dir, path)
            except ValueError as exc:
                raise UserError(f"merge: {path}: {exc}") from None
            with f, open(dest / path.name, "wb") as out:
                shutil.copyfileobj(f, out)


def merge(runs: Sequence[Path], out: Path) -> Path:
    """Merge shard runs of one config into a new run directory `out`, then render it.

    The new run is assembled next to `out` and renamed into place, so a failed merge
    leaves nothing behind.
    """
    if not runs:
        raise UserError("merge: no runs given")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists; merge writes a new run directory")
    metas = [_matrix_run(r) for r in runs]
    shas = {m["config"]["sha256"] for m in metas}
    if len(shas) > 1:
        listing = ", ".join(
            f"{r.name}: {m['config']['sha256'][:12]}" for r, m in zip(runs, metas, strict=True)
        )
        raise UserError(f"merge: the runs used different configs ({listing})")

    planned: dict[str, dict[str, Any]] = {}
    kernels: dict[str, Any] = {}
    images: dict[str, Any] = {}
    failures: dict[str, Any] = {}
    cells: dict[str, tuple[Path, Mapping[str, Any]]] = {}  # run cell id -> (dir, cell.json)
    for r, m in zip(runs, metas, strict=True):
        for c in m["cells"]:
            if isinstance(c, dict) and isinstance(c.get("id"), str):
                planned.setdefault(c["id"], c)
        for label, k in _dict(m.get("kernels")).items():
            _merge_keyed(kernels, label, k, "kernel", r)
        for arch, i in _dict(m.get("images")).items():
            _merge_keyed(images, arch, i, "image", r)
        for label, msg in _dict(m.get("build_failures")).items():
            failures.setdefault(label, msg)
        records, unreadable = results.scan_cells(r)
        if unreadable:
            u = unreadable[0]
            raise UserError(
                f"merge: {u.dir}: unreadable cell ({_line(u.reason, 300)}); run "
                f"`lab matrix --resume {r}` to run it again, or remove the directory"
            )
        for rec in records:
            rid = rec.run_cell_id
            if rid in cells:
                other, data = cells[rid]
                if data != rec.data:
                    raise UserError(
                        f"merge: cell {rid} has different results in {other.parent.parent} and {r}"
                    )
                continue
            cells[rid] = (rec.dir, rec.data)
    names = collections.Counter(d.name for d, _ in cells.values())
    clash = [n for n, k in names.items() if k > 1]
    if clash:
        raise UserError(f"merge: two different cells use the directory cells/{clash[0]}")

    first = metas[0]
    sel = {k: v for k, v in _dict(first.get("selection")).items() if k != "shard"}
    if all(
        {k: v for k, v in _dict(m.get("selection")).items() if k != "shard"} == sel for m in metas
    ):
        selection: dict[str, Any] = {**sel, "shard": None}
    else:
        # Different selections (e.g. one run per arch): `--resume` re-plans from the
        # union of the patterns, which is a superset when the runs differ in more than
        # one dimension; the originals are kept for the record.
        def union(key: str) -> list[Any]:
            vals = [v for m in metas for v in _list(_dict(m.get("selection")).get(key))]
            return list(dict.fromkeys(v for v in vals if isinstance(v, str)))

        selection = {
            "variants": union("variants"),
            "arches": union("arches"),
            "testcases": union("testcases"),
            "repeat": max(
                n if isinstance(n := _dict(m.get("selection")).get("repeat"), int) else 1
                for m in metas
            ),
            "shard": None,
            "merged_selections": [m.get("selection") for m in metas],
        }
    ids = [str(m.get("run_id") or r.name) for r, m in zip(runs, metas, strict=True)]
    versions = list(dict.fromkeys(str(m.get("lab_version")) for m in metas))
    missing = sorted(set(planned) - set(cells))
    created = [str(m["created"]) for m in metas if m.get("created")]
    finished = [str(m["finished"]) for m in metas if m.get("finished")]
    meta = {
        "run_id": out.name,
        "lab_version": ", ".join(versions),
        "created": min(created) if created else results.now(),
        "finished": max(finished) if finished else results.now(),
        "merged": results.now(),
        "status": "complete" if not missing else "incomplete",
        "host": results.host_info(),
        "hosts": {i: m.get("host") for i, m in zip(ids, metas, strict=True)},
        "config": first["config"],
        "selection": selection,
        "cells": list(planned.values()),
        "kernels": kernels,
        "build_failures": failures,
        "images": images,
        "not_run": missing,
        "durations": {i: m.get("durations") or {} for i, m in zip(ids, metas, strict=True)},
        "merged_from": ids,
    }
    with cache.staging_dir(out) as tmp:
        (tmp / "cells").mkdir()
        for src, _ in cells.values():
            _copy_cell(src.parent.parent, src, tmp / "cells" / src.name)
        cache.fsync_tree(tmp / "cells")
        results.write_run(tmp, meta)
    render(out)
    return out
