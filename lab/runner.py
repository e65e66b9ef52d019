"""Running cells: boot a guest per cell, follow it, classify, write the cell directory.

The side-effect half of cells (lab.cell is the pure half). A cell directory holds:

  console.log, console.timed.log   the raw console and its host-timestamped copy
  result.jsonl                     the agent's records as received
  qemu.argv                        the QEMU command line
  evidence.json                    the classification (outcome, evidence lines, rule)
  cell.json                        inputs, expected vs observed, timings, reproducer
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import platform
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from lab import boot, cache, classify, image, kselftest, matrix, proc, results, source
from lab.build import Kernel
from lab.cell import Cell, expected_banner, job_for, reproducer, verdict_for
from lab.config import ArchSpec, BootSpec, LabConfig, QemuSpec
from lab.errors import LabError
from lab.image import BaseImage
from lab.machine import BootError

MARGIN = 30.0  # seconds the host waits beyond a test case's own (in-guest) deadline


@dataclass(frozen=True)
class CellResult:
    cell_id: str
    run_cell_id: str
    dir: Path
    observed: str
    expected: tuple[str, ...]  # empty: the test case declares no expectation here
    verdict: str  # expected | unexpected | infra
    detail: str
    rule: str
    rule_text: str
    evidence: tuple[Mapping[str, Any], ...]  # {"line_no", "text", ...}
    timings: Mapping[str, float | None]
    host: str = "local"

    @property
    def exit_code(self) -> int:
        return {"expected": 0, "unexpected": 1}.get(self.verdict, 2)

    @classmethod
    def from_dir(cls, directory: Path) -> CellResult:
        """Read a finished cell directory back (e.g. one fetched from a lab host)."""
        data = cache.read_json(directory / "cell.json")
        ev = cache.read_json(directory / "evidence.json")
        return cls(
            cell_id=str(data["id"]),
            run_cell_id=str(data.get("run_cell_id", data["id"])),
            dir=directory,
            observed=str(data["observed"]),
            expected=tuple(data.get("expected", [])),
            verdict=str(data["verdict"]),
            detail=str(ev.get("detail", "")),
            rule=str(ev.get("rule", "")),
            rule_text=str(ev.get("rule_text", "")),
            evidence=tuple(ev.get("evidence", [])),
            timings=data.get("timings", {}),
            host=str(data.get("lab_host", "local")),
        )


@dataclass(frozen=True)
class CellJob:
    """Everything needed to run one cell on any host with QEMU: no lab.toml, no builds.

    The kernel image, base image and overlay travel beside it as files."""

    record: Mapping[str, Any]  # cell.json fields known before the run
    arch: Mapping[str, Any]  # ArchSpec as a dict (with its qemu table)
    cmdline: str
    memory_mib: int
    smp: int
    agent_job: Mapping[str, Any]
    banner: Mapping[str, str] | None
    boot: Mapping[str, Any]  # BootSpec as a dict
    test_timeout: float  # the host's deadline for the test phase

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CellJob:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})

    def arch_spec(self) -> ArchSpec:
        a = dict(self.arch)
        q = dict(a.pop("qemu"))
        q["extra_args"] = tuple(q["extra_args"])
        a["configs"] = tuple(a["configs"])
        return ArchSpec(**a, qemu=QemuSpec(**q))

    def boot_spec(self) -> BootSpec:
        return BootSpec(**self.boot)


def guest_files(
    cfg: LabConfig, cell: Cell, log: Callable[[str], None] = lambda _m: None
) -> dict[str, tuple[bytes, int]]:
    lib = resources.files("lab.guest").joinpath("labguest.py").read_bytes()
    files = {
        "lab/lib/labguest.py": (lib, 0o644),
        f"lab/testcases/{cell.testcase.name}.py": (cell.testcase.path.read_bytes(), 0o644),
    }
    for need in cell.testcase.needs:
        if not need.startswith(kselftest.PREFIX):
            raise LabError(
                f"{cell.testcase.path}: unknown need {need!r} "
                f"(known: {kselftest.PREFIX}<dir>/<name>)"
            )
        src = source.prepare(cfg.source, cfg.cache_dir, log)
        binary = kselftest.build(
            need, cell.arch, src.tree, boot.image_recipe(cfg), cfg.cache_dir, log
        )
        files[f"lab/bin/{binary.name}"] = (binary.read_bytes(), 0o755)
    return files


def prepare_cell(
    cfg: LabConfig,
    cell: Cell,
    kernel: Kernel,
    base: BaseImage,
    run_cell_id: str = "",
    repeat: int = 1,
    log: Callable[[str], None] = lambda _m: None,
) -> tuple[CellJob, dict[str, tuple[bytes, int]]]:
    """The job and the guest files of a cell (local: it may build a kselftest binary)."""
    rule = cell.expectation()
    req = boot.BootRequest(
        arch=cell.arch,
        variant=cell.variant,
        kernel=kernel,
        base=base,
        job=job_for(cell),
        extra_cmdline=cell.testcase.cmdline,
    )
    record = {
        "id": cell.id,
        "run_cell_id": run_cell_id or cell.id,
        "repeat": repeat,
        "arch": cell.arch.name,
        "variant": cell.variant.name,
        "testcase": cell.testcase.name,
        "params": dict(cell.variant.params),
        "expected": list(rule.outcomes) if rule else [],
        "expected_rule": rule.text if rule else None,
        "kernel": {
            "key": kernel.key,
            "image": kernel.image.name,
            "image_sha256": kernel.meta.get("image_sha256"),
            "config_sha256": kernel.meta.get("config_sha256"),
            "dir": str(kernel.dir),
        },
        "image": {"key": base.key, "path": str(base.path)},
        "reproducer": reproducer(cfg, cell),
    }
    job = CellJob(
        record=record,
        arch=dataclasses.asdict(cell.arch),
        cmdline=boot.cmdline_for(cfg, req),
        memory_mib=cell.testcase.memory_mib or cell.arch.qemu.memory_mib,
        smp=cell.arch.qemu.smp,
        agent_job=job_for(cell),
        banner=expected_banner(cell.variant),
        boot=dataclasses.asdict(cfg.boot),
        test_timeout=cell.testcase.timeout + MARGIN,
    )
    return job, guest_files(cfg, cell, log)


def execute(
    job: CellJob,
    kernel_image: Path,
    base_image: Path,
    files: Mapping[str, tuple[bytes, int]],
    directory: Path,
    cache_root: Path,
    log: Callable[[str], None] = lambda _m: None,
) -> CellResult:
    """Boot, run the test case, classify; everything lands in `directory`.

    The same code runs on the controller and on SSH lab hosts."""
    directory.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    boot_id = secrets.token_hex(8)
    overlay = image.build_overlay(boot.overlay_files(job.agent_job, boot_id, files))
    prepared = boot.launch(
        job.arch_spec(),
        kernel_image,
        base_image,
        overlay,
        boot_id,
        job.cmdline,
        job.memory_mib,
        job.smp,
        directory,
        cache_root,
        job.boot_spec(),
        log,
    )
    m = prepared.machine
    deadline: str | None = None
    ready = False
    try:
        with m:
            try:
                m.wait_ready()
                ready = True
            except BootError as exc:
                deadline = "boot" if exc.kind == "hang" else None
            if ready:
                how = m.follow(lambda r: r.get("type") == "done", job.test_timeout)
                if how == "timeout":
                    deadline = "test"
                elif how == "record":
                    m.wait_exit()
    finally:
        boot.discard_initrd(directory)
    if any(r.get("type") == "result" and r.get("timeout") is True for r in m.results.records):
        deadline = deadline or "test"
    # Bytes, then decode: the console's CR CR LF must not become extra lines.
    console = (directory / "console.log").read_bytes().decode(errors="replace")
    facts = classify.RunFacts(
        ready=ready,
        deadline=deadline,
        qemu_exit=m.exit_status,
        records=tuple(m.results.records),
        problems=tuple(m.results.problems),
        expected_banner=job.banner,
    )
    result = classify.classify(console, facts)
    expected = tuple(job.record["expected"])
    t = m.timings()
    timings = {
        "ready": t.ready,
        "agent": t.first_result,
        "qemu": t.total,
        "cell": time.monotonic() - started,
    }
    verdict = verdict_for(result.outcome, expected)
    cache.write_json(directory / "evidence.json", result.to_json())
    cache.write_json(
        directory / "cell.json",
        {
            **job.record,
            "observed": result.outcome,
            "verdict": verdict,
            "detail": result.detail,
            "accel": prepared.accel.accel,
            "accel_reason": prepared.accel.reason,
            "cmdline": prepared.launch.cmdline,
            "timings": timings,
            "qemu_exit": m.exit_status,
            "qemu_killed": m.killed,
            "host": platform.node(),
            "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        },
    )
    return CellResult.from_dir(directory)


def run_cell(
    cfg: LabConfig,
    cell: Cell,
    kernel: Kernel,
    base: BaseImage,
    directory: Path,
    log: Callable[[str], None] = lambda _m: None,
    run_cell_id: str = "",
    repeat: int = 1,
) -> CellResult:
    """Prepare and execute one cell here."""
    job, files = prepare_cell(cfg, cell, kernel, base, run_cell_id, repeat, log)
    return execute(job, kernel.image, base.path, files, directory, cfg.cache_dir, log)


# --- the matrix ---------------------------------------------------------------------


class Stop:
    """Set when the run must stop (Ctrl-C, SIGTERM): no new cell starts."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()


def run_cells(
    cfg: LabConfig,
    cells: list[matrix.Planned],
    run_dir: Path,
    kernels: Mapping[str, Kernel],
    images: Mapping[str, BaseImage],
    jobs: int,
    stop: Stop,
    on_start: Callable[[matrix.Planned], None] = lambda _c: None,
    on_done: Callable[[matrix.Planned, CellResult | None, str], None] = lambda _c, _r, _e: None,
) -> None:
    """Run cells in parallel; each cell's directory is complete or absent.

    A cell interrupted by `stop` is discarded (its directory removed) so that
    `--resume` runs it again; finished cells are never touched.
    """

    def one(p: matrix.Planned) -> None:
        if stop:
            return
        on_start(p)
        d = run_dir / "cells" / p.dirname
        if d.exists():
            shutil.rmtree(d)  # a leftover of an interrupted attempt
        try:
            res = run_cell(
                cfg,
                p.cell,
                kernels[p.kernel],
                images[p.cell.arch.name],
                d,
                run_cell_id=p.id,
                repeat=p.repeat,
            )
        except LabError as exc:
            if stop:
                shutil.rmtree(d, ignore_errors=True)
                return
            _infra_cell(cfg, p, d, str(exc))
            on_done(p, None, str(exc))
            return
        if stop:
            shutil.rmtree(d, ignore_errors=True)  # killed mid-way: not a result
            return
        on_done(p, res, "")

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(one, p) for p in cells]
        try:
            for f in concurrent.futures.as_completed(futures):
                f.result()
        except BaseException:
            stop.set()
            for f in futures:
                f.cancel()
            proc.kill_all()  # every QEMU of every worker, now
            raise


def _infra_cell(cfg: LabConfig, p: matrix.Planned, d: Path, message: str) -> None:
    """A cell the lab could not run (e.g. a kernel that did not build): an infra result."""
    d.mkdir(parents=True, exist_ok=True)
    cache.write_json(
        d / "evidence.json",
        {
            "outcome": "infra_error",
            "detail": message,
            "rule": "lab-error",
            "rule_text": "The lab could not run the cell.",
            "evidence": [],
            "matched": [],
            "fields": {},
        },
    )
    rule = p.cell.expectation()
    cache.write_json(
        d / "cell.json",
        {
            "id": p.cell.id,
            "run_cell_id": p.id,
            "repeat": p.repeat,
            "arch": p.cell.arch.name,
            "variant": p.cell.variant.name,
            "testcase": p.cell.testcase.name,
            "params": dict(p.cell.variant.params),
            "observed": "infra_error",
            "expected": list(rule.outcomes) if rule else [],
            "expected_rule": rule.text if rule else None,
            "verdict": "infra",
            "detail": message,
            "reproducer": reproducer(cfg, p.cell),
            "timings": {},
            "finished": results.now(),
        },
    )
