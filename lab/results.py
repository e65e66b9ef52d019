"""The results tree of a run, read and written with atomic writes.

    results/<run-id>/
      run.json                 inputs, versions, hashes, host, accelerators, durations,
                               the planned cells and the run's status
      cells/<cell-dir>/        one directory per finished cell (see lab.runner)
      report.html, summary.md, junit.xml   rendered by lab.report

A cell counts as finished when its cell.json exists; it is written last, atomically,
so an interrupted run never leaves a half-finished cell that looks complete.
"""

from __future__ import annotations

import datetime
import os
import platform
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import __version__, cache
from lab.errors import LabError

STATUSES = ("running", "complete", "incomplete", "interrupted")


def new_run_id(label: str = "") -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}{'-' + label if label else ''}-{secrets.token_hex(2)}"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


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
    runs = sorted(p.name for p in results_dir.glob("*/run.json")) if results_dir.is_dir() else []
    hint = (
        f"; runs under {results_dir}: {', '.join(r.split('/')[0] for r in runs[-5:])}"
        if runs
        else ""
    )
    raise LabError(f"{name}: not a run directory (no run.json){hint}")


def load_run(run_dir: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = cache.read_json(run_dir / "run.json")
    except (OSError, ValueError) as exc:
        raise LabError(f"{run_dir / 'run.json'}: unreadable: {exc}") from None
    return data


def write_run(run_dir: Path, data: Mapping[str, Any]) -> None:
    cache.write_json(run_dir / "run.json", dict(data))


@dataclass(frozen=True)
class CellRecord:
    """A finished cell as read back from disk."""

    dir: Path
    data: Mapping[str, Any]  # cell.json
    evidence: Mapping[str, Any]  # evidence.json

    @property
    def id(self) -> str:
        return str(self.data["id"])

    @property
    def observed(self) -> str:
        return str(self.data.get("observed", "infra_error"))

    @property
    def verdict(self) -> str:
        return str(self.data.get("verdict", "infra"))


def read_cells(run_dir: Path) -> list[CellRecord]:
    out: list[CellRecord] = []
    cells = run_dir / "cells"
    if not cells.is_dir():
        return out
    for d in sorted(cells.iterdir()):
        f = d / "cell.json"
        if not f.is_file():
            continue
        try:
            data = cache.read_json(f)
        except ValueError:
            continue
        try:
            ev = cache.read_json(d / "evidence.json")
        except (OSError, ValueError):
            ev = {}
        out.append(CellRecord(d, data, ev))
    return out


def finished_ids(run_dir: Path) -> set[str]:
    return {c.data.get("run_cell_id", c.id) for c in read_cells(run_dir)}


def summary_counts(records: Iterable[CellRecord]) -> dict[str, int]:
    counts = {"expected": 0, "unexpected": 0, "infra": 0}
    for r in records:
        counts[r.verdict] = counts.get(r.verdict, 0) + 1
    return counts


def exit_code(run: Mapping[str, Any], records: list[CellRecord]) -> int:
    """0 all as expected, 1 some unexpected outcome, 2 incomplete or infrastructure error."""
    planned = {c["id"] for c in run.get("cells", [])}
    done = {r.data.get("run_cell_id", r.id) for r in records}
    if planned - done or any(r.verdict == "infra" for r in records):
        return 2
    if any(r.verdict == "unexpected" for r in records):
        return 1
    return 0


def new_run(results_dir: Path, label: str, header: Mapping[str, Any]) -> Path:
    run_id = new_run_id(label)
    run_dir = results_dir / run_id
    (run_dir / "cells").mkdir(parents=True)
    write_run(
        run_dir,
        {
            "run_id": run_id,
            "lab_version": __version__,
            "created": now(),
            "status": "running",
            "host": host_info(),
            **header,
        },
    )
    return run_dir
