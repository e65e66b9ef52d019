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
import datetime
import platform
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lab import boot, cache, classify, kselftest, matrix, proc, results, source
from lab.build import Kernel
from lab.cell import Cell, expected_banner, job_for, reproducer, verdict_for
from lab.config import LabConfig
from lab.errors import LabError
from lab.image import BaseImage
from lab.machine import BootError

MARGIN = 30.0  # seconds the host waits beyond a test case's own (in-guest) deadline


@dataclass(frozen=True)
class CellResult:
    cell: Cell
    dir: Path
    observed: str
    expected: tuple[str, ...]  # empty: the test case declares no expectation here
    verdict: str  # expected | unexpected | infra
    classification: classify.Classification
    timings: Mapping[str, float | None]

    @property
    def exit_code(self) -> int:
        return {"expected": 0, "unexpected": 1}.get(self.verdict, 2)


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
    """Boot, run the test case, classify; everything lands in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    req = boot.BootRequest(
        arch=cell.arch,
        variant=cell.variant,
        kernel=kernel,
        base=base,
        job=job_for(cell),
        extra_cmdline=cell.testcase.cmdline,
        extra_files=guest_files(cfg, cell),
        memory_mib=cell.testcase.memory_mib or None,
    )
    started = time.monotonic()
    prepared = boot.prepare(cfg, req, directory, log)
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
                how = m.follow(lambda r: r.get("type") == "done", cell.testcase.timeout + MARGIN)
                if how == "timeout":
                    deadline = "test"
                elif how == "record":
                    m.wait_exit()
    finally:
        boot.discard_initrd(directory)
    if any(r.get("type") == "result" and r.get("timeout") is True for r in m.results.records):
        deadline = deadline or "test"
    console = (directory / "console.log").read_bytes().decode(errors="replace")
    facts = classify.RunFacts(
        ready=ready,
        deadline=deadline,
        qemu_exit=m.exit_status,
        records=tuple(m.results.records),
        problems=tuple(m.results.problems),
        expected_banner=expected_banner(cell.variant),
    )
    result = classify.classify(console, facts)
    rule = cell.expectation()
    expected = rule.outcomes if rule else ()
    observed = result.outcome
    t = m.timings()
    timings = {
        "ready": t.ready,
        "agent": t.first_result,
        "qemu": t.total,
        "cell": time.monotonic() - started,
    }
    verdict = verdict_for(observed, expected)
    cache.write_json(directory / "evidence.json", result.to_json())
    cache.write_json(
        directory / "cell.json",
        {
            "id": cell.id,
            "run_cell_id": run_cell_id or cell.id,
            "repeat": repeat,
            "arch": cell.arch.name,
            "variant": cell.variant.name,
            "testcase": cell.testcase.name,
            "params": dict(cell.variant.params),
            "observed": observed,
            "expected": list(expected),
            "expected_rule": rule.text if rule else None,
            "verdict": verdict,
            "detail": result.detail,
            "kernel": {
                "key": kernel.key,
                "image_sha256": kernel.meta.get("image_sha256"),
                "config_sha256": kernel.meta.get("config_sha256"),
                "dir": str(kernel.dir),
            },
            "image": {"key": base.key, "path": str(base.path)},
            "accel": prepared.accel.accel,
            "accel_reason": prepared.accel.reason,
            "cmdline": prepared.launch.cmdline,
            "timings": timings,
            "qemu_exit": m.exit_status,
            "qemu_killed": m.killed,
            "reproducer": reproducer(cfg, cell),
            "host": platform.node(),
            "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        },
    )
    return CellResult(cell, directory, observed, expected, verdict, result, timings)


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
            res = run_cell(cfg, p.cell, kernels[p.kernel], images[p.cell.arch.name], d,
                           run_cell_id=p.id, repeat=p.repeat)
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
    cache.write_json(d / "evidence.json", {
        "outcome": "infra_error", "detail": message, "rule": "lab-error",
        "rule_text": "The lab could not run the cell.", "evidence": [], "matched": [],
        "fields": {}})
    rule = p.cell.expectation()
    cache.write_json(d / "cell.json", {
        "id": p.cell.id, "run_cell_id": p.id, "repeat": p.repeat, "arch": p.cell.arch.name,
        "variant": p.cell.variant.name, "testcase": p.cell.testcase.name,
        "params": dict(p.cell.variant.params), "observed": "infra_error",
        "expected": list(rule.outcomes) if rule else [],
        "expected_rule": rule.text if rule else None, "verdict": "infra", "detail": message,
        "reproducer": reproducer(cfg, p.cell), "timings": {}, "finished": results.now(),
    })
