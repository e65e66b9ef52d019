"""The run directory on disk: new runs, run.json, the finished cells, the run's lock and
its exit status.

    results/<run-id>/
      run.json                 inputs, versions, hashes, host, accelerators, durations,
                               the planned cells and the run's status
      cells/<cell-dir>/        one directory per finished cell (see lab.run.execute)
      report.html, summary.md, junit.xml   rendered by lab.report

A cell counts as finished when its cell.json exists; it is written last, atomically,
so an interrupted run never leaves a half-finished cell that looks complete.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import secrets
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from lab import __version__, cache
from lab.errors import UserError
from lab.results.bounded import MAX_RUN_JSON, loads_bounded, read_inside
from lab.results.model import CellResult, RunMeta, Unreadable, now, read_cell

LOCK = ".lock"  # flock'ed by the lab process running the run (matrix, --resume)


def new_run_id(label: str = "") -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}{'-' + label if label else ''}-{secrets.token_hex(2)}"


def host_info() -> dict[str, Any]:
    return {
        "node": platform.node(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def resolve_run(results_dir: Path, name: str) -> Path:
    """A run directory from a path or a run id under results_dir."""
    for candidate in (Path(name), results_dir / name):
        if (candidate / "run.json").is_file():
            return candidate
    runs = (
        sorted(p.parent.name for p in results_dir.glob("*/run.json"))
        if results_dir.is_dir()
        else []
    )
    hint = f"; runs under {results_dir}: {', '.join(runs[-5:])}" if runs else ""
    raise UserError(f"{name}: not a run directory (no run.json){hint}")


def load_run(run_dir: Path) -> dict[str, Any]:
    f = run_dir / "run.json"
    try:
        data = loads_bounded(read_inside(run_dir, f, MAX_RUN_JSON), MAX_RUN_JSON)
    except (OSError, ValueError) as exc:
        raise UserError(f"{f}: unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{f}: not a JSON object")
    return data


def planned_ids(run: Mapping[str, Any]) -> list[str]:
    """The planned run cell ids in run.json (entries of another shape are ignored)."""
    cells = run.get("cells")
    return [
        c["id"]
        for c in (cells if isinstance(cells, list) else [])
        if isinstance(c, dict) and isinstance(c.get("id"), str)
    ]


@contextlib.contextmanager
def locked_run(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock: one lab process per run (a second `--resume` would
    remove the first one's running cells as leftovers)."""
    fd = cache.try_lock(run_dir / LOCK)
    if fd is None:
        raise UserError(
            f"{run_dir}: another lab process is running this run (it holds {run_dir / LOCK}); "
            "wait for it to finish or stop it first"
        )
    try:
        yield
    finally:
        os.close(fd)


def write_run(run_dir: Path, data: Mapping[str, Any]) -> None:
    RunMeta.from_json(data).write(run_dir)


def scan_cells(run_dir: Path) -> tuple[list[CellResult], list[Unreadable]]:
    """The finished cells of a run, and the cell directories whose cell.json is unusable.

    A directory without cell.json is an interrupted attempt: neither."""
    out: list[CellResult] = []
    bad: list[Unreadable] = []
    cells = run_dir / "cells"
    if not cells.is_dir():
        return out, bad
    for d in sorted(cells.iterdir()):
        if d.is_symlink():
            bad.append(Unreadable(d, "the cell directory is a symlink"))
            continue
        if not d.is_dir() or not os.path.lexists(d / "cell.json"):
            continue
        cell = read_cell(run_dir, d)
        if isinstance(cell, Unreadable):
            bad.append(cell)
        else:
            out.append(cell)
    return out, bad


def read_cells(run_dir: Path) -> list[CellResult]:
    return scan_cells(run_dir)[0]


def finished_ids(run_dir: Path) -> set[str]:
    return {c.run_cell_id for c in read_cells(run_dir)}


def summary_counts(records: Iterable[CellResult]) -> dict[str, int]:
    counts = {"expected": 0, "unexpected": 0, "infra": 0}
    for r in records:
        counts[r.verdict] = counts.get(r.verdict, 0) + 1
    return counts


def exit_code(run: Mapping[str, Any], records: list[CellResult]) -> int:
    """0 all as expected, 1 some unexpected outcome, 2 incomplete or infrastructure error."""
    planned = set(planned_ids(run))
    done = {r.run_cell_id for r in records}
    if planned - done or any(r.verdict == "infra" for r in records):
        return 2
    if any(r.verdict == "unexpected" for r in records):
        return 1
    return 0


def new_run(results_dir: Path, label: str, header: Mapping[str, Any]) -> Path:
    run_id = new_run_id(label)
    run_dir = results_dir / run_id
    (run_dir / "cells").mkdir(parents=True)
    meta = RunMeta(run_id, __version__, now(), "running", host_info())
    RunMeta.from_json({**meta.to_json(), **header}).write(run_dir)
    return run_dir
