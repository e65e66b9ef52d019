"""The records of a run directory: RunMeta (run.json) and CellResult (a cell's cell.json
and evidence.json), each written in one place and read back through the same type."""

from __future__ import annotations

import dataclasses
import datetime
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lab import cache
from lab.errors import UserError
from lab.outcome import Outcome, Verdict
from lab.results.bounded import MAX_CELL_JSON, loads_bounded, read_inside

RunStatus = Literal["running", "complete", "incomplete", "interrupted"]  # run.json status
STATUSES: tuple[RunStatus, ...] = typing.get_args(RunStatus)


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


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
        cell = read_cell(directory, directory)
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


def read_cell(root: Path, d: Path) -> CellResult | Unreadable:
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
