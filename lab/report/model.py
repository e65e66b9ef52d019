"""The loaded run: Run, Slot, RunCell, Evidence; `load` is the only reader of the run directory."""

from __future__ import annotations

import collections
import functools
import json
import os
import shlex
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import results
from lab.classify.signatures import BY_NAME
from lab.outcome import Verdict
from lab.report.clean import (
    _T,
    CELL_FILES,
    EXCERPT_CONTEXT,
    MAX_CONSOLE,
    MAX_EXCERPT,
    MAX_FRAGMENT,
    MAX_LINE,
    _line,
    _num,
    _split_id,
)

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
    def title(self) -> str:
        """The CI-bot style title of the kernel report that decided ('' when none)."""
        return _line(self.ev.get("title") or "", 300)

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


def bundle_command(run_id: str, dirname: str) -> str:
    """`lab bundle` for a cell of a run under the results directory (lab.cli.export
    resolves RUN_ID/cells/DIR there): a tarball that reruns the cell with QEMU alone."""
    return shlex.join(["lab", "bundle", f"{run_id}/cells/{dirname}", "-o", f"{dirname}.tar.gz"])


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
