"""cell.json and evidence.json as the runner writes them, pinned byte for byte.

The report goldens and the hostile-results tests check how cell directories are read;
these check how they are written: by `lab.run.execute` after a (scripted) guest run, and
for a cell the lab could not run (an infra cell). The runner's clock, host name and
QEMU are replaced by fixed values, so the bytes are the same on every machine.
"""

from __future__ import annotations

import datetime
import json
import os
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lab import cache, classify, provenance, results
from lab.config import LabConfig, load
from lab.run import execute as run_execute
from lab.run import job as run_job
from lab.run import matrix, testcase
from lab.run.execute import execute_here
from lab.run.job import Inputs
from lab.run.schedule import infra_cell
from lab.vm import boot
from lab.vm.accel import Choice
from lab.vm.machine import BootError, Timings
from lab.vm.qemu import Launch

REPO = Path(__file__).resolve().parent.parent
FINISHED = "2026-11-26T08:30:00+00:00"

CONSOLE = (
    "[    0.000000] Linux version 6.1.0 (lab@build) #1 SMP\n"
    "[    0.450000] secretmem: lab variant pool=none fallback=0 reserve=0 fault=oom "
    "sigbus=none memlock=6.1 charge=page v16lit=0 enabled=1\n"
    "[    0.460000] lab era: 6.1 oom semantics\n"
    "LABREADY b0\n"
    "[    3.000000] lab: testcase api start\n"
    "[    4.000000] reboot: Power down\n"
)
PASS_RECORDS = (
    {"type": "ready", "boot_id": "b0", "uptime": 1.5},
    {"type": "result", "testcase": "api", "verdict": "pass", "observed": "pass",
     "message": "", "data": {}},
    {"type": "done"},
)  # fmt: skip

GOLDEN = Path(__file__).resolve().parent / "data" / "cell-record"
# What provenance records about this machine and checkout, pinned (lab.provenance).
FIXED_SOURCE = {"version": "$VERSION", "commit": "$COMMIT", "dirty": False, "describe": "$DESCRIBE"}
REGEN = os.environ.get("LAB_REGEN") == "1"  # rewrite the files below instead of comparing


def _plan() -> tuple[LabConfig, matrix.Planned]:
    cfg = load(REPO / "lab.toml")
    tcs = testcase.discover(cfg.testcases_dir, classify.CLASSES)
    (p,) = matrix.plan(cfg, tcs, matrix.MatrixSpec(), [cfg.variants[0].name], ["x86_64"], ["api"])
    return cfg, p


def _check(d: Path, name: str, tmp_path: Path) -> None:
    """d's cell.json and evidence.json against GOLDEN/<name>.{cell,evidence}.json."""
    for kind in ("cell", "evidence"):
        text = (d / f"{kind}.json").read_text()
        text = text.replace(str(tmp_path), "$TMP").replace(str(REPO), "$REPO")
        text = unhash(text)
        golden = GOLDEN / f"{name}.{kind}.json"
        if REGEN:
            golden.parent.mkdir(exist_ok=True)
            golden.write_text(text)
        assert text == golden.read_text(), f"{golden} differs (LAB_REGEN=1 rewrites it)"


def fixed_provenance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(provenance, "lab_source", lambda: dict(FIXED_SOURCE))
    monkeypatch.setattr(
        provenance,
        "where_run",
        lambda _q: {"host_arch": "x86_64", "qemu_version": "QEMU emulator version 7.2.0"},
    )


def unhash(text: str) -> str:
    """The sha256 of files that other changes edit (lab.toml, test cases, guest files)
    as placeholders: the records pin where each digest goes, not the files' contents."""
    files = [REPO / "lab.toml", *sorted((REPO / "testcases").glob("*.py"))]
    files += [REPO / "lab" / "guest" / n for n in ("agent.py", "labguest.py")]
    for f in files:
        text = text.replace(cache.file_digest(f), f"$SHA256({f.relative_to(REPO)})")
    return text


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (results, results.model, results.store):  # defined in model, re-exported
        monkeypatch.setattr(module, "now", lambda: FINISHED)
    fixed = datetime.datetime.fromisoformat(FINISHED)
    clock = types.SimpleNamespace(now=lambda _tz=None: fixed)
    monkeypatch.setattr(run_execute, "datetime", types.SimpleNamespace(datetime=clock, UTC=None))
    ticks = iter(float(i) for i in range(1000))
    monkeypatch.setattr(run_execute, "time", types.SimpleNamespace(monotonic=lambda: next(ticks)))
    monkeypatch.setattr(run_execute, "platform", types.SimpleNamespace(node=lambda: "controller"))
    fixed_provenance(monkeypatch)


def test_an_infra_cell_is_written_byte_for_byte(fixed_clock: None, tmp_path: Path) -> None:
    cfg, p = _plan()
    d = tmp_path / "cells" / p.dirname
    message = "kernel did not build: x86_64-C0: build failed (make exit 2)"
    infra_cell(cfg, p, d, message, {"lab_host": "h1", "requeued_from": ["h0"]})
    assert sorted(f.name for f in d.iterdir()) == ["cell.json", "evidence.json"]
    _check(d, "infra", tmp_path)


# --- a cell the runner executed --------------------------------------------------------


@dataclass
class _Results:
    records: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)


class ScriptedMachine:
    """What lab.run.execute uses of a Machine, playing back one recorded guest run."""

    def __init__(self, workdir: Path, records: tuple[dict[str, Any], ...], how: str) -> None:
        self.workdir = workdir
        self.results = _Results(list(records))
        self.how = how  # what follow() returns; "boot-hang": the ready marker never came
        self.exit_status: int | None = 0 if how == "record" else None
        self.killed = how != "record"

    def __enter__(self) -> ScriptedMachine:
        (self.workdir / "console.log").write_text(CONSOLE)
        return self

    def __exit__(self, *_exc: object) -> None:
        pass

    def wait_ready(self) -> None:
        if self.how == "boot-hang":
            raise BootError("hang", "no ready marker within 60s", [])

    def follow(self, _until: Callable[[dict[str, Any]], bool], _timeout: float) -> str:
        return self.how

    def wait_exit(self) -> None:
        pass

    def timings(self) -> Timings:
        return Timings(1.25, 2.5, 4.0)


def _scripted_launch(records: tuple[dict[str, Any], ...], how: str) -> Callable[..., boot.Prepared]:
    def launch(req: boot.LaunchRequest, workdir: Path, *_rest: Any) -> boot.Prepared:
        machine = ScriptedMachine(workdir, records, how)
        spec = Launch(req.arch, "tcg", req.kernel_image, workdir / "initrd.cpio.gz", req.cmdline,
                      workdir / "result.jsonl", req.memory_mib, req.smp)  # fmt: skip
        return boot.Prepared(machine, Choice("tcg", "kvm disabled in lab.toml"), spec)  # type: ignore[arg-type]

    return launch


def _executed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> results.CellResult:
    cfg, p = _plan()
    from test_golden import _base, _kernel  # the golden's fixed kernel and base image

    kernel, base = _kernel(cfg, "x86_64", "C0"), _base(cfg, "x86_64")
    monkeypatch.setattr(boot, "launch", _scripted_launch(PASS_RECORDS, how))
    monkeypatch.setattr(run_job, "guest_files", lambda *_a, **_k: {})
    d = tmp_path / "cells" / p.dirname
    inputs = Inputs(kernel, base)
    res = execute_here(cfg, p.cell, inputs, d, run_cell_id=p.id, repeat=p.repeat)
    assert res.dir == d and res.run_cell_id == p.id
    return res


@pytest.mark.parametrize("how", ["record", "timeout", "boot-hang"])
def test_an_executed_cell_is_written_byte_for_byte(
    how: str, fixed_clock: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _check(_executed(tmp_path, monkeypatch, how).dir, how, tmp_path)


def test_the_cell_result_is_what_was_written(
    fixed_clock: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner's CellResult (never read back from disk) says what cell.json says."""
    res = _executed(tmp_path, monkeypatch, "record")
    again = results.CellResult.from_dir(res.dir)
    assert json.loads(json.dumps(res.to_json())) == again.to_json()
    assert json.loads(json.dumps(res.evidence)) == again.evidence
    for view in ("id", "observed", "verdict", "expected", "detail", "rule", "lines", "host"):
        assert getattr(res, view) == getattr(again, view), view
    assert again.observed == "pass" and again.verdict == "expected" and again.exit_code == 0


def test_an_infra_cell_result_is_what_was_written(fixed_clock: None, tmp_path: Path) -> None:
    cfg, p = _plan()
    res = infra_cell(cfg, p, tmp_path / "c", "lab host h1 lost", {"lab_host": "h1"})
    again = results.CellResult.from_dir(tmp_path / "c")
    assert json.loads(json.dumps(res.to_json())) == again.to_json()
    assert (again.observed, again.verdict, again.exit_code, again.host) == (
        "infra_error",
        "infra",
        2,
        "h1",
    )
