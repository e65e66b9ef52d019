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

import contextlib
import datetime
import json
import os
import platform
import secrets
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from lab import __version__, cache
from lab.errors import UserError

STATUSES = ("running", "complete", "incomplete", "interrupted")

# A results tree may come from elsewhere (a CI artefact, a shard from another host):
# what is read from it is bounded in size and nesting and confined to it.
MAX_CELL_JSON = 4 << 20  # cell.json, evidence.json
MAX_RUN_JSON = 64 << 20  # run.json (lists every planned cell)
MAX_DEPTH = 64  # nesting of any JSON read from a results tree or a lab host
LOCK = ".lock"  # flock'ed by the lab process running the run (matrix, --resume)


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
    raise UserError(f"{name}: not a run directory (no run.json){hint}")


def _depth(value: Any) -> int:
    """The nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d)
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def loads_bounded(raw: bytes, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """Parse untrusted JSON bytes. Raises ValueError naming what is wrong (too large,
    truncated or malformed, nested too deeply); never RecursionError or TypeError."""
    if len(raw) > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes")
    if not raw.strip():
        raise ValueError("empty (truncated?)")
    try:
        value = json.loads(raw)
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth} levels") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at byte {exc.pos}; truncated?)") from None
    if _depth(value) > max_depth:
        raise ValueError(f"nested deeper than {max_depth} levels")
    return value


def open_inside(root: Path, path: Path) -> BinaryIO:
    """A regular file under root, opened for reading. Raises ValueError when it resolves
    outside root (a symlink out of a copied results tree, e.g. to /etc/passwd) or is
    not a regular file (a FIFO would block); OSError when it cannot be opened."""
    real_root = root.resolve()
    real = path.resolve()
    if real_root not in real.parents:
        raise ValueError(f"resolves outside {root} (a symlink?)")
    f = os.fdopen(os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb")
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise ValueError("not a regular file")
    return f


def read_inside(root: Path, path: Path, max_bytes: int, whole: bool = True) -> bytes:
    """open_inside's file, at most max_bytes: larger is a ValueError if `whole`,
    otherwise its first max_bytes are returned."""
    with open_inside(root, path) as f:
        size = os.fstat(f.fileno()).st_size
        if whole and size > max_bytes:
            raise ValueError(f"{size} bytes, larger than {max_bytes}")
        return f.read(max_bytes)


def regular_file(root: Path, path: Path) -> bool:
    """path is a regular file inside root, symlinks resolved (what report links to)."""
    try:
        real = path.resolve()
    except OSError:
        return False
    return root.resolve() in real.parents and real.is_file()


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


@dataclass(frozen=True)
class Unreadable:
    """A cell directory with a cell.json that cannot be used (truncated, wrong shape)."""

    dir: Path
    reason: str  # one line


def _shape(data: Any) -> str:
    """What is wrong with a parsed cell.json ("" if it can be used)."""
    if not isinstance(data, dict):
        return f"cell.json is a JSON {type(data).__name__}, not an object"
    if not isinstance(data.get("id"), str) or not data["id"]:
        return "cell.json has no string 'id'"
    if not isinstance(data.get("run_cell_id", ""), str):
        return "cell.json 'run_cell_id' is not a string"
    return ""


def scan_cells(run_dir: Path) -> tuple[list[CellRecord], list[Unreadable]]:
    """The finished cells of a run, and the cell directories whose cell.json is unusable.

    A directory without cell.json is an interrupted attempt: neither."""
    out: list[CellRecord] = []
    bad: list[Unreadable] = []
    cells = run_dir / "cells"
    if not cells.is_dir():
        return out, bad
    for d in sorted(cells.iterdir()):
        if d.is_symlink():
            bad.append(Unreadable(d, "the cell directory is a symlink"))
            continue
        f = d / "cell.json"
        if not d.is_dir() or not os.path.lexists(f):
            continue
        try:
            data = loads_bounded(read_inside(run_dir, f, MAX_CELL_JSON), MAX_CELL_JSON)
        except (OSError, ValueError) as exc:
            bad.append(Unreadable(d, f"cell.json: {exc}"))
            continue
        problem = _shape(data)
        if problem:
            bad.append(Unreadable(d, problem))
            continue
        try:
            ev = loads_bounded(
                read_inside(run_dir, d / "evidence.json", MAX_CELL_JSON), MAX_CELL_JSON
            )
        except (OSError, ValueError):
            ev = {}
        out.append(CellRecord(d, data, ev if isinstance(ev, dict) else {}))
    return out, bad


def read_cells(run_dir: Path) -> list[CellRecord]:
    return scan_cells(run_dir)[0]


def run_cell_id(rec: CellRecord) -> str:
    return str(rec.data.get("run_cell_id") or rec.id)


def finished_ids(run_dir: Path) -> set[str]:
    return {run_cell_id(c) for c in read_cells(run_dir)}


def summary_counts(records: Iterable[CellRecord]) -> dict[str, int]:
    counts = {"expected": 0, "unexpected": 0, "infra": 0}
    for r in records:
        counts[r.verdict] = counts.get(r.verdict, 0) + 1
    return counts


def exit_code(run: Mapping[str, Any], records: list[CellRecord]) -> int:
    """0 all as expected, 1 some unexpected outcome, 2 incomplete or infrastructure error."""
    planned = set(planned_ids(run))
    done = {run_cell_id(r) for r in records}
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
