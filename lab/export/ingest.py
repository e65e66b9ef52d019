"""Importing finished LAVA jobs into the run `lab export lava` made: each log becomes a
cell directory classified as a local cell is. The side effects of the way back.

Every log is read, matched to its cell and checked before anything is written, so a bad
one (not a LAVA log, cut short, another run's, a cell already there) changes nothing.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import classify, results
from lab.errors import UserError, printable
from lab.export import lavalog
from lab.outcome import Verdict
from lab.results import CellResult
from lab.run.execute import recorded_facts
from lab.vm import channel

Log = Callable[[str], None]


@dataclass(frozen=True)
class Job:
    """One LAVA log matched to a cell of the run."""

    path: Path
    raw: bytes
    log: lavalog.LavaLog
    cell_id: str
    entry: Mapping[str, Any]  # run.json lava.cells[cell_id]


def _lava_cells(run_dir: Path, run: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    block = run.get("lava")
    cells = block.get("cells") if isinstance(block, dict) else None
    if not isinstance(cells, dict) or not cells:
        raise UserError(
            f"{run_dir}: not a run made by `lab export lava` (no lava cells in run.json)"
        )
    return {
        k: v for k, v in cells.items() if isinstance(v, dict) and isinstance(v.get("boot_id"), str)
    }


def match(run_dir: Path, cells: Mapping[str, Mapping[str, Any]], path: Path) -> Job:
    """Read a log and find its cell; UserError (one line) when it is not one of this run's."""
    try:
        # Non-blocking open: a FIFO named as a log must not hang the import.
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise UserError(f"{path}: not a regular file")
            raw = f.read(lavalog.MAX_LOG + 1)
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        log = lavalog.parse(raw)
    except lavalog.LogError as exc:
        raise UserError(f"{path}: not a usable LAVA job log: {exc}") from None
    by_boot = {e["boot_id"]: cid for cid, e in cells.items()}
    mine = sorted({_text(by_boot[b], 200) for b in log.boot_ids() if b in by_boot})
    if len(mine) > 1:
        raise UserError(f"{path}: names several cells of {run_dir.name} ({', '.join(mine)})")
    if not mine:
        foreign = lavalog.ready_ids(log.console) or any("LABREC" in c for c in log.console)
        what = (
            "a job the lab exported for another run"
            if foreign or any(".cpio.gz" in m and "--" in m for m in log.messages)
            else "not a job the lab exported"
        )
        raise UserError(f"{path}: {what}: it names no boot id of run {run_dir.name}")
    cell_id = next(by_boot[b] for b in log.boot_ids() if b in by_boot)
    return Job(path, raw, log, cell_id, cells[cell_id])


MAX_LAVA_TEXT = 2000  # characters of one LAVA message kept in cell.json


def _text(value: Any, limit: int) -> str:
    """A value from the log (LAVA's, or the guest's through it) as bounded, printable text."""
    return printable(str(value), limit, one_line=True)


def _deadline_or_infra(log: lavalog.LavaLog, ready: bool) -> tuple[str | None, str]:
    """How the job ended, in the lab's terms: (deadline, "") for a boot or test that ran
    out of time (a result about the kernel, as the local runner's deadlines are), (None,
    message) for LAVA's own trouble (an infrastructure error), (None, "") otherwise."""
    if log.complete:
        return None, ""
    error = f"LAVA {_text(log.job.get('error_type', '?'), 40)} error: " + _text(
        log.job.get("error_msg", ""), MAX_LAVA_TEXT
    )
    for case, why in log.failed_actions():
        timed_out = "timed out" in why or "timeout" in why.lower()
        if timed_out and case in lavalog.TEST_ACTIONS:
            return ("test" if ready else "boot"), ""
        if timed_out and case in lavalog.BOOT_ACTIONS:
            return "boot", ""
    if ready and any(
        "end of file" in why or "Connection closed" in why for _c, why in log.failed_actions()
    ):
        return None, ""  # QEMU ended by itself during the test (a panic, a reboot)
    return None, error


def _cell_dir(run_dir: Path, entry: Mapping[str, Any], cell_id: str) -> Path:
    name = entry.get("dir")
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise UserError(
            f"{run_dir / 'run.json'}: lava cell {_text(cell_id, 200)}: bad 'dir' "
            f"{_text(repr(name), 200)}"
        )
    return run_dir / "cells" / name


def write_cell(run_dir: Path, job: Job) -> CellResult:
    """The cell directory of one finished LAVA job, classified as a local cell is."""
    d = _cell_dir(run_dir, job.entry, job.cell_id)
    record = job.entry.get("record")
    record = dict(record) if isinstance(record, dict) else {"id": job.cell_id}
    lines = job.log.console
    got = lavalog.extract(lines)
    ready = job.entry["boot_id"] in lavalog.ready_ids(lines)
    deadline, infra = _deadline_or_infra(job.log, ready)
    lava_facts = {
        "log": str(job.path),
        "boot_id": job.entry["boot_id"],
        "job_result": _text(job.log.job.get("result"), 40),
        "error_type": _text(job.log.job.get("error_type") or "", 40) or None,
        "error_msg": _text(job.log.job.get("error_msg") or "", MAX_LAVA_TEXT) or None,
        "failed_actions": [_text(f"{c}: {w}", 200) for c, w in job.log.failed_actions()[:20]],
        "records_complete": got.ended,
    }
    staging = run_dir / ".staging" / d.name
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (staging / "lava.log").write_bytes(job.raw)
    (staging / "console.log").write_text(got.console)
    (staging / "result.jsonl").write_bytes(b"".join(r + b"\n" for r in got.records))
    marks = {"lab_host": "lava", "host": "lava", "lava": lava_facts}
    if infra:
        cell = CellResult.infra(staging, record, infra, marks)
        cell = CellResult.from_json(
            staging,
            cell.data,
            {
                **cell.evidence,
                "rule": "lava-incomplete",
                "rule_text": LAVA_INCOMPLETE,
                "evidence": [{"line_no": 0, "ktime": None, "signature": "lava:job", "text": infra}],
            },
        )
    else:
        reader = channel.Reader()
        reader.feed(b"".join(r + b"\n" for r in got.records))
        banner = job.entry.get("banner")
        facts = classify.RunFacts.from_mapping(
            {
                "ready": ready,
                "deadline": deadline,
                "qemu_exit": 0 if got.ended else None,
                "records": list(reader.records),
                "problems": [*got.problems, *reader.problems],
                "expected_banner": banner if isinstance(banner, dict) else None,
            }
        )
        result = classify.classify(got.console, facts)
        expected = tuple(str(e) for e in record.get("expected") or ())
        cell = CellResult.from_json(
            staging,
            {
                **record,
                **recorded_facts(facts),
                "observed": result.outcome,
                "verdict": Verdict.for_outcome(result.outcome, expected),
                "detail": result.detail,
                "timings": {"lava_job": job.log.duration},
                "finished": results.now(),
                **marks,
            },
            result.to_json(),
        )
    cell.write()
    if d.exists():
        shutil.rmtree(d)  # checked by the caller: only an unfinished attempt
    staging.rename(d)
    return CellResult.from_dir(d)


LAVA_INCOMPLETE = "LAVA marked the job incomplete for a reason of its own (not the kernel's)."


def import_logs(
    run_dir: Path, logs: Sequence[Path], log: Log = lambda _m: None
) -> list[CellResult]:
    """Every log is checked before anything is written: a bad one changes nothing."""
    with results.locked_run(run_dir):
        run = results.load_run(run_dir)
        cells = _lava_cells(run_dir, run)
        jobs = [match(run_dir, cells, p) for p in logs]
        seen: dict[str, Path] = {}
        for j in jobs:
            if j.cell_id in seen:
                raise UserError(
                    f"{j.path}: the same cell ({_text(j.cell_id, 200)}) as {seen[j.cell_id]}"
                )
            seen[j.cell_id] = j.path
            d = _cell_dir(run_dir, j.entry, j.cell_id)
            if (d / "cell.json").exists():
                raise UserError(
                    f"{j.path}: cell {_text(j.cell_id, 200)} is already in {run_dir.name} ({d})"
                )
        done = [write_cell(run_dir, j) for j in jobs]
        shutil.rmtree(run_dir / ".staging", ignore_errors=True)
        meta = results.RunMeta.from_json(results.load_run(run_dir))
        finished = results.finished_ids(run_dir)
        planned = results.planned_ids(meta.to_json())
        meta.status = "complete" if set(planned) <= finished else "incomplete"
        if meta.status == "complete":
            meta.finished = results.now()
        meta.write(run_dir)
        for c in done:
            log(f"{c.id}: {c.observed} ({c.verdict})")
        return done
