"""Running one cell: boot a guest, follow it, classify, write the cell directory once.

The side-effect half of cells (lab.run.cell is the pure half). A cell directory holds:

  console.log, console.timed.log   the raw console and its host-timestamped copy
  result.jsonl                     the agent's records as received
  qemu.argv                        the QEMU command line
  evidence.json                    the classification (outcome, evidence lines, rule)
  cell.json                        inputs, expected vs observed, timings, reproducer

execute() is the same code on the controller and on a lab host (lab.hosts.remote).
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lab import classify, ktap, provenance, results
from lab.build import Kernel
from lab.config import LabConfig
from lab.errors import LabError, UserError
from lab.image import BaseImage
from lab.outcome import Deadline, Verdict
from lab.results import CellResult
from lab.run import needs
from lab.run.cell import Cell
from lab.run.job import CellJob, Inputs, prepare_cell
from lab.vm import boot, channel
from lab.vm.machine import BootError


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
    req = job.launch_request(kernel_image, base_image, files, cache_root)
    prepared = boot.launch(req, directory, log)
    m = prepared.machine
    deadline: Deadline | None = None
    ready = False
    with boot.started(prepared, directory):
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
    verdict = Verdict.for_outcome(result.outcome, expected)
    cell = CellResult.from_json(
        directory,
        {
            **job.record,
            **recorded_facts(facts),
            **ktap.cell_fields(facts.records),  # a selftest's KTAP, per subtest
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
            **provenance.where_run(job.arch.qemu.binary),
            "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        },
        result.to_json(),
    )
    cell.write()
    return cell


def recorded_facts(facts: classify.RunFacts) -> dict[str, Any]:
    """The run facts classify used, as cell.json keys: with result.jsonl (records,
    problems) they let `lab classify CELLDIR` re-classify exactly as the runner did."""
    return {
        "ready": facts.ready,
        "deadline": facts.deadline,
        "qemu_exit": facts.qemu_exit,
        "banner": dict(facts.expected_banner) if facts.expected_banner else None,
    }


def cell_facts(cell_dir: Path) -> classify.RunFacts:
    """What the lab knew about a recorded cell: its records and the run facts the runner
    wrote into cell.json (a cell directory may come from anywhere: bounded, confined)."""
    reader = channel.Reader()
    try:
        if os.path.lexists(cell_dir / "result.jsonl"):
            reader.feed(
                results.read_inside(
                    cell_dir, cell_dir / "result.jsonl", channel.MAX_TOTAL, whole=False
                )
            )
        info = (
            results.loads_bounded(
                results.read_inside(cell_dir, cell_dir / "cell.json", results.MAX_CELL_JSON),
                results.MAX_CELL_JSON,
            )
            if os.path.lexists(cell_dir / "cell.json")
            else {}
        )
    except (OSError, ValueError) as exc:
        raise UserError(f"{cell_dir}: unreadable cell: {exc}") from None
    if not isinstance(info, dict):
        raise UserError(f"{cell_dir}/cell.json: not a JSON object")
    records = list(reader.records)
    # A cell recorded before cell.json kept `ready`: inferred from the agent's records.
    ready = info.get("ready", any(r.get("type") == "ready" for r in records))
    try:
        return classify.RunFacts.from_mapping(
            {
                "ready": ready,
                "deadline": info.get("deadline"),
                "qemu_exit": info.get("qemu_exit"),
                "records": records,
                "problems": list(reader.problems),
                "expected_banner": info.get("banner"),
            }
        )
    except LabError as exc:
        raise UserError(f"{cell_dir / 'cell.json'}: {exc}") from None


def run_cell(
    cfg: LabConfig,
    cell: Cell,
    kernel: Kernel,
    base: BaseImage,
    directory: Path,
    log: Callable[[str], None] = lambda _m: None,
) -> CellResult:
    """Build what the cell's test case needs, then prepare and execute the cell here
    (`lab run`; a matrix builds the needs of all its cells before scheduling them)."""
    built, failed = needs.resolve(cfg, [cell], log)
    problem = needs.failure(cell, failed)
    if problem is not None:
        raise problem
    return execute_here(
        cfg, cell, Inputs(kernel, base, needs.binaries(cell, built)), directory, log
    )


def execute_here(
    cfg: LabConfig,
    cell: Cell,
    inputs: Inputs,
    directory: Path,
    log: Callable[[str], None] = lambda _m: None,
    run_cell_id: str = "",
    repeat: int = 1,
) -> CellResult:
    """Prepare and execute one cell on this machine, its inputs built."""
    job, files = prepare_cell(cfg, cell, inputs, run_cell_id, repeat)
    return execute(job, inputs.kernel.image, inputs.base.path, files, directory, cfg.cache_dir, log)
