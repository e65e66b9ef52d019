"""`lab reproduce`: the cells of failure modes claimed in review, run as a matrix, and each
cell's answer to its claim (reproduced, not reproduced, different outcome, no answer).

The CLI picks the failure modes and prints; this module plans, runs and answers, and
writes reproduce.json (what `lab reproduce --markdown RUN` renders as the ledger)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import build, cache, results
from lab.config import LabConfig, failures
from lab.config.failures import FailureMode
from lab.errors import UserError
from lab.outcome import CLASSES
from lab.run import matrix, orchestrate, testcase


def plan(
    cfg: LabConfig, modes: Sequence[FailureMode], arches: Sequence[str]
) -> list[matrix.Planned]:
    """Every cell the failure modes name, once: each claim's test case on every era of the
    variants it names, on `arches` (default: the arches the claim names)."""
    tcs = {t.name: t for t in testcase.discover(cfg.testcases_dir, CLASSES)}
    cells: dict[str, matrix.Planned] = {}
    for m in modes:
        if m.testcase not in tcs:
            raise UserError(f"failure mode {m.id}: unknown test case {m.testcase!r}")
        # every era of the variants the claim names (issue 10)
        names = failures.variant_names(m, [(v.name, v.params) for v in cfg.variants])
        for c in matrix.plan(
            cfg,
            [tcs[m.testcase]],
            matrix.MatrixSpec(),
            names or list(m.variants),
            list(arches) or list(m.arches),
            [m.testcase],
        ):
            cells.setdefault(c.id, c)
    return list(cells.values())


@dataclass(frozen=True)
class Group:
    """One failure mode on one (era, arch): its cells and, per cell, the finished record
    (None: not run) and its answer."""

    mode: FailureMode
    era: str
    arch: str
    cells: tuple[tuple[matrix.Planned, results.CellResult | None, str], ...]

    @property
    def summary(self) -> str:
        return failures.summarise([ans for _c, rec, ans in self.cells if rec is not None])


def answer(
    modes: Sequence[FailureMode], cells: Sequence[matrix.Planned], run_dir: Path
) -> list[Group]:
    """Each failure mode's answer per (era, arch), from the finished cells of run_dir."""
    records = {r.id: r for r in results.read_cells(run_dir)}
    out = []
    for m in modes:
        groups: dict[tuple[str, str], list[matrix.Planned]] = {}
        for c in cells:
            v = c.cell.variant
            era, base = failures.era_of(v.name, v.params)
            if m.selects(c.cell.arch.name, v.name, c.cell.testcase.name, base):
                groups.setdefault((era, c.cell.arch.name), []).append(c)
        for (era, arch), group in groups.items():
            rows = []
            for c in group:
                rec = records.get(c.cell.id)
                rows.append((c, rec, failures.answer(m, rec.observed) if rec else ""))
            out.append(Group(m, era, arch, tuple(rows)))
    return out


def ledger(groups: Sequence[Group]) -> list[dict[str, Any]]:
    """reproduce.json: one entry per answered cell."""
    return [
        {
            "failure_mode": g.mode.id,
            "era": g.era,
            "cell": c.cell.id,
            "answer": ans,
            "observed": rec.observed,
            "detail": rec.data.get("detail"),
        }
        for g in groups
        for c, rec, ans in g.cells
        if rec is not None
    ]


def reproduce(
    cfg: LabConfig, modes: Sequence[FailureMode], arches: Sequence[str], jobs: int = 0
) -> tuple[int, Path, list[Group]]:
    """Plan, run (a matrix run of its own) and answer: the run's exit code, its directory
    and the answers; reproduce.json is written into the run."""
    cells = plan(cfg, modes, arches)
    selection = {
        "variants": [],
        "arches": list(arches),
        "testcases": [],
        "repeat": 1,
        "shard": None,
        "failure_modes": [m.id for m in modes],
    }
    header = orchestrate.run_header(cfg, cells, selection)
    run_dir = results.new_run(cfg.results_dir, "reproduce", header)
    code = orchestrate.run_matrix(cfg, cells, run_dir, jobs or cfg.jobs or build.default_jobs(cfg))
    groups = answer(modes, cells, run_dir)
    cache.write_json(run_dir / "reproduce.json", ledger(groups))
    return code, run_dir, groups
