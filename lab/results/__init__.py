"""The results tree of a run, read and written with atomic writes.

    results/<run-id>/
      run.json                 inputs, versions, hashes, host, accelerators, durations,
                               the planned cells and the run's status
      cells/<cell-dir>/        one directory per finished cell (see lab.run.runner)
      report.html, summary.md, junit.xml   rendered by lab.report

A cell counts as finished when its cell.json exists; it is written last, atomically,
so an interrupted run never leaves a half-finished cell that looks complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import platform
import secrets
import stat
import typing
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from lab import __version__, cache
from lab.errors import UserError
from lab.outcome import Outcome, Verdict

RunStatus = Literal["running", "complete", "incomplete", "interrupted"]  # run.json status
STATUSES: tuple[RunStatus, ...] = typing.get_args(RunStatus)

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


@dataclass
class RunMeta:
    """run.json: what a run is (its id, lab version, lab.toml, selection and planned
    cells) and what has happened to it so far (kernels built or failed, base images, lab
    hosts, durations, status). `lab matrix` keeps one and rewrites run.json at each step.

    A field is None when run.json does not have it yet (e.g. `kernels` before the build
    step). Keys this version does not know (a merged run's, another version's) are kept
    in `extra` and written back as they were."""

    run_id: str | None = None
    lab_version: str | None = None
    created: str | None = None
    status: str | None = None  # a RunStatus (any string in a foreign run.json)
    host: Any = None  # host_info() of the controller
    config: Any = None  # {"file", "sha256", "resumed_sha256" (--force-config)}
    selection: Any = None  # variants, arches, testcases, repeat, shard (what --resume replans)
    cells: Any = None  # the planned cells: [{"id", "dir", "kernel"}]
    kernels: dict[str, Any] | None = None  # kernel label -> provenance
    build_failures: dict[str, str] | None = None  # kernel label -> first line of why
    images: dict[str, Any] | None = None  # arch -> {"key", "path"}
    durations: dict[str, Any] | None = None  # seconds per phase
    hosts: Any = None  # lab host name -> address, capacity, status, cells
    not_run: list[str] | None = None
    finished: str | None = None
    # lab.provenance.for_run: the lab's commit, lab.toml's and each test case's sha256
    provenance: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunMeta:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names and v is not None}
        # What lab matrix adds to must be a table; a foreign value of another shape is
        # replaced rather than crashing the run (it is only bookkeeping).
        for key in ("kernels", "build_failures", "images", "durations"):
            if key in known and not isinstance(known[key], dict):
                known[key] = {}
        # Unknown keys, and known ones that are null (None here means "absent").
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**known, extra=extra)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del out["extra"]
        return {**self.extra, **{k: v for k, v in out.items() if v is not None}}

    def write(self, run_dir: Path) -> None:
        cache.write_json(run_dir / "run.json", self.to_json())


def write_run(run_dir: Path, data: Mapping[str, Any]) -> None:
    RunMeta.from_json(data).write(run_dir)


@dataclass(frozen=True)
class CellResult:
    """One finished cell: its directory, cell.json (`data`) and evidence.json
    (`evidence`, {} when missing or unusable).

    The runner builds it and writes it once (`write`); resume, report, merge, reproduce
    and the CLI read it back (`scan_cells`). The properties below are the one place
    where the defaults for a foreign or damaged cell.json live."""

    dir: Path
    data: Mapping[str, Any]  # cell.json
    evidence: Mapping[str, Any]  # evidence.json: the classification

    @classmethod
    def from_json(
        cls, directory: Path, data: Mapping[str, Any], evidence: Mapping[str, Any]
    ) -> CellResult:
        return cls(directory, data, evidence)

    @classmethod
    def from_dir(cls, directory: Path) -> CellResult:
        """A finished cell directory read back (bounded, confined to it)."""
        cell = _read_cell(directory, directory)
        if isinstance(cell, Unreadable):
            raise UserError(f"{directory}: {cell.reason}")
        return cell

    def to_json(self) -> dict[str, Any]:
        """cell.json's contents (evidence.json's are `evidence`)."""
        return dict(self.data)

    @classmethod
    def infra(
        cls,
        directory: Path,
        identity: Mapping[str, Any],
        message: str,
        marks: Mapping[str, Any] | None = None,
    ) -> CellResult:
        """A cell the lab could not run (a kernel that did not build, a lost lab host).

        `identity`: the cell.json fields known before a run (id, expectation,
        reproducer, ...); `marks`: lab_host, requeued_from for a lab host's cell."""
        evidence = {
            "outcome": Outcome.INFRA_ERROR,
            "detail": message,
            "rule": "lab-error",
            "rule_text": "The lab could not run the cell.",
            "evidence": [],
            "matched": [],
            "fields": {},
        }
        data = {
            **identity,
            "observed": Outcome.INFRA_ERROR,
            "verdict": Verdict.INFRA,
            "detail": message,
            "timings": {},
            "finished": now(),
            **(marks or {}),
        }
        return cls(directory, data, evidence)

    def write(self) -> None:
        """evidence.json, then cell.json, the marker of a finished cell: what the marker
        vouches for (the logs, the evidence) is on disk before it is."""
        self.dir.mkdir(parents=True, exist_ok=True)
        cache.write_json(self.dir / "evidence.json", self.evidence)
        cache.fsync_tree(self.dir)
        cache.write_json(self.dir / "cell.json", self.data)

    @property
    def id(self) -> str:
        return str(self.data["id"])

    @property
    def run_cell_id(self) -> str:
        return str(self.data.get("run_cell_id") or self.id)

    @property
    def observed(self) -> str:
        """The outcome class; a damaged cell.json (none, or not a string) reads as
        infra_error: the lab cannot say what the kernel did."""
        v = self.data.get("observed")
        return v if isinstance(v, str) and v else Outcome.INFRA_ERROR

    @property
    def expected(self) -> tuple[str, ...]:
        exp = self.data.get("expected")
        return tuple(str(e) for e in exp) if isinstance(exp, list | tuple) else ()

    @property
    def verdict(self) -> str:
        """As written; a foreign value stays itself (exit_code counts it as infra)."""
        return str(self.data.get("verdict", Verdict.INFRA))

    @property
    def exit_code(self) -> int:
        """The exit status of a command that ran just this cell."""
        v = Verdict.of(self.verdict)
        return v.exit_code if v else 2

    @property
    def detail(self) -> str:
        return str(self.evidence.get("detail", ""))

    @property
    def rule(self) -> str:
        return str(self.evidence.get("rule", ""))

    @property
    def rule_text(self) -> str:
        return str(self.evidence.get("rule_text", ""))

    @property
    def lines(self) -> tuple[Mapping[str, Any], ...]:
        """The evidence lines ({"line_no", "text", ...}) that show why."""
        items = self.evidence.get("evidence")
        return tuple(e for e in items if isinstance(e, dict)) if isinstance(items, list) else ()

    @property
    def timings(self) -> Mapping[str, Any]:
        t = self.data.get("timings")
        return t if isinstance(t, dict) else {}

    @property
    def host(self) -> str:
        """The lab host that ran it, "local" for this machine."""
        return str(self.data.get("lab_host", "local"))

    @property
    def provenance(self) -> Mapping[str, Any]:
        """lab.provenance.for_cell's record ({} for a cell written before it existed)."""
        p = self.data.get("provenance")
        return p if isinstance(p, dict) else {}


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
        cell = _read_cell(run_dir, d)
        if isinstance(cell, Unreadable):
            bad.append(cell)
        else:
            out.append(cell)
    return out, bad


def _read_cell(root: Path, d: Path) -> CellResult | Unreadable:
    """Cell directory d (confined to root), or why its cell.json cannot be used."""
    try:
        data = loads_bounded(read_inside(root, d / "cell.json", MAX_CELL_JSON), MAX_CELL_JSON)
    except (OSError, ValueError) as exc:
        return Unreadable(d, f"cell.json: {exc}")
    problem = _shape(data)
    if problem:
        return Unreadable(d, problem)
    try:
        ev = loads_bounded(read_inside(root, d / "evidence.json", MAX_CELL_JSON), MAX_CELL_JSON)
    except (OSError, ValueError):
        ev = {}
    return CellResult(d, data, ev if isinstance(ev, dict) else {})


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
