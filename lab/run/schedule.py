"""The scheduler: slots of every worker pull cells from one queue; a lost host's cells are
re-queued once; every planned cell gets exactly one result."""

from __future__ import annotations

import dataclasses
import shutil
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.config import LabConfig
from lab.errors import LabError
from lab.results import CellResult
from lab.run import matrix
from lab.run.job import Artifacts, identity
from lab.run.workers import HostDown, LocalWorker, Stop, Worker


@dataclass
class _Queue:
    """Pending cells shared by every slot; a lost host's cells come back to the front."""

    pending: list[tuple[matrix.Planned, tuple[str, ...]]]
    workers: Sequence[Worker]
    stop: Stop
    inflight: int = 0
    cond: threading.Condition = dataclasses.field(default_factory=threading.Condition)

    def _fits(self, w: Worker, p: matrix.Planned, tried: tuple[str, ...]) -> bool:
        return w.serves(p.cell.arch.name) and w.name not in tried

    def take(self, worker: Worker) -> tuple[matrix.Planned, tuple[str, ...], bool] | None:
        """The first pending cell this worker serves, or (flag True) one that no live
        worker serves any more; None when the worker should quit."""
        with self.cond:
            while True:
                if self.stop or worker.lost():
                    return None
                for i, (p, tried) in enumerate(self.pending):
                    if self._fits(worker, p, tried):
                        self.inflight += 1
                        return (*self.pending.pop(i), False)
                live = [w for w in self.workers if not w.lost()]
                for i, (p, tried) in enumerate(self.pending):
                    if not any(self._fits(w, p, tried) for w in live):
                        self.inflight += 1  # orphaned: workers never come back
                        return (*self.pending.pop(i), True)
                if not self.pending and not self.inflight:
                    return None
                # Nothing for us now, but an in-flight cell may come back (host lost).
                self.cond.wait(0.5)

    def done(self) -> None:
        with self.cond:
            self.inflight -= 1
            self.cond.notify_all()

    def put_back(self, p: matrix.Planned, tried: tuple[str, ...]) -> None:
        with self.cond:
            self.inflight -= 1
            self.pending.insert(0, (p, tried))
            self.cond.notify_all()

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()


def run_cells(
    cfg: LabConfig,
    cells: list[matrix.Planned],
    run_dir: Path,
    built: Artifacts,
    jobs: int,
    stop: Stop,
    on_start: Callable[[matrix.Planned], None] = lambda _c: None,
    on_done: Callable[[matrix.Planned, CellResult | None, str], None] = lambda _c, _r, _e: None,
    workers: Sequence[Worker] = (),
    on_note: Callable[[str], None] = lambda _m: None,
) -> None:
    """Run cells on `jobs` local slots plus the slots of `workers` (SSH lab hosts); `built`
    holds every kernel, base image and test-case need they use."""
    everyone = [LocalWorker(cfg, max(1, jobs)), *workers]
    schedule(cfg, cells, run_dir, built, everyone, stop, on_start, on_done, on_note)


def schedule(
    cfg: LabConfig,
    cells: list[matrix.Planned],
    run_dir: Path,
    built: Artifacts,
    workers: Sequence[Worker],
    stop: Stop,
    on_start: Callable[[matrix.Planned], None] = lambda _c: None,
    on_done: Callable[[matrix.Planned, CellResult | None, str], None] = lambda _c, _r, _e: None,
    on_note: Callable[[str], None] = lambda _m: None,
) -> None:
    """Slots pulling from one queue, in plan order; each cell's directory is complete or absent.

    A worker has `slots` threads. A cell interrupted by `stop` is discarded (its
    directory removed) so that `--resume` runs it again; finished cells are never
    touched. A cell whose lab host is lost goes back to the front of the queue once
    (marked `requeued_from`); a second loss makes it an infra_error naming the host.
    A lost host takes no more cells. Every planned cell gets exactly one result.
    """
    _Schedule(cfg, run_dir, built, workers, stop, on_start, on_done, on_note).run(cells)


@dataclass
class _Schedule:
    """One schedule() call: the slots' threads and what each does with a cell."""

    cfg: LabConfig
    run_dir: Path
    built: Artifacts
    workers: Sequence[Worker]
    stop: Stop
    on_start: Callable[[matrix.Planned], None]
    on_done: Callable[[matrix.Planned, CellResult | None, str], None]
    on_note: Callable[[str], None]
    errors: list[BaseException] = dataclasses.field(default_factory=list)
    queue: _Queue = dataclasses.field(init=False)

    def run(self, cells: list[matrix.Planned]) -> None:
        self.queue = _Queue([(p, ()) for p in cells], self.workers, self.stop)
        threads = [
            threading.Thread(target=self.slot, args=(w,), name=f"cell-{w.name}-{i}", daemon=True)
            for w in self.workers
            for i in range(w.slots)
        ]
        try:
            for t in threads:
                t.start()
            # Join with a timeout: the main thread must stay responsive to SIGINT/SIGTERM.
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
            if self.errors:
                raise self.errors[0]
            # Every worker lost (possible only without local slots): nobody else will.
            while not self.stop and self.queue.pending:
                p, tried = self.queue.pending.pop(0)
                self.give_up(p, tried)
        except BaseException:
            self.stop.set()
            self.queue.wake()
            for w in self.workers:
                w.abort()  # every QEMU of every worker, now (remote: close the channels)
            for t in threads:
                t.join(30)
            raise
        finally:
            # Cells fetched from lab hosts are staged here before their rename into cells/.
            shutil.rmtree(self.run_dir / ".staging", ignore_errors=True)

    def slot(self, w: Worker) -> None:
        try:
            while (item := self.queue.take(w)) is not None:
                p, tried, orphan = item
                if orphan:
                    self.give_up(p, tried)
                    self.queue.done()
                else:
                    self.attempt(w, p, tried)
        except BaseException as exc:  # a bug: stop everything, re-raised in the main thread
            self.errors.append(exc)
            self.stop.set()
            self.queue.wake()

    def give_up(self, p: matrix.Planned, tried: tuple[str, ...]) -> None:
        arch = p.cell.arch.name
        lost = "; ".join(f"{w.name}: {w.lost()}" for w in self.workers if w.lost())
        msg = f"no usable worker left for {arch} cells ({lost or 'none serves it'})"
        marks = {"requeued_from": list(tried)} if tried else None
        infra_cell(self.cfg, p, self.run_dir / "cells" / p.dirname, msg, marks)
        self.on_done(p, None, msg)

    def attempt(self, w: Worker, p: matrix.Planned, tried: tuple[str, ...]) -> None:
        if self.stop:
            self.queue.done()
            return
        self.on_start(p)
        d = self.run_dir / "cells" / p.dirname
        if d.exists():
            shutil.rmtree(d)  # a leftover of an interrupted attempt
        marks: dict[str, Any] = {} if isinstance(w, LocalWorker) else {"lab_host": w.name}
        if tried:
            marks["requeued_from"] = list(tried)
        try:
            res = w.run(p, self.built.inputs(p), d, tried)
        except HostDown as exc:
            if self.stop:
                self.discard(d)
            elif not exc.ran:
                self.queue.put_back(p, tried)  # never reached the host: not an attempt
            else:
                self.lost(w, p, tried, d, exc, marks)
            return
        except LabError as exc:
            if self.stop:
                self.discard(d)
            else:
                self.infra(p, d, str(exc), marks or None)
            return
        if self.stop:
            self.discard(d)  # killed mid-way: not a result
            return
        self.queue.done()
        self.on_done(p, res, "")

    def lost(
        self,
        w: Worker,
        p: matrix.Planned,
        tried: tuple[str, ...],
        d: Path,
        exc: HostDown,
        marks: dict[str, Any],
    ) -> None:
        """The cell's host was lost while it ran: re-queue the cell once, then give up."""
        self.on_note(f"[{p.id}] {exc}")
        if tried:  # already re-queued once: give up on the cell
            self.infra(
                p, d, f"{exc} (the cell was re-queued from {', '.join(tried)} before)", marks
            )
            return
        self.on_note(f"[{p.id}] re-queued (was on {w.name})")
        self.queue.put_back(p, (*tried, w.name))

    def infra(self, p: matrix.Planned, d: Path, msg: str, marks: Mapping[str, Any] | None) -> None:
        infra_cell(self.cfg, p, d, msg, marks)
        self.queue.done()
        self.on_done(p, None, msg)

    def discard(self, d: Path) -> None:
        """A cell stopped mid-way is no result: --resume runs it again."""
        shutil.rmtree(d, ignore_errors=True)
        self.queue.done()


def infra_cell(
    cfg: LabConfig,
    p: matrix.Planned,
    d: Path,
    message: str,
    marks: Mapping[str, Any] | None = None,
) -> CellResult:
    """Write planned cell p as one the lab could not run (e.g. its kernel did not build).

    `marks`: more cell.json fields (lab_host, requeued_from for a lab host's cell)."""
    cell = CellResult.infra(d, identity(cfg, p.cell, p.id, p.repeat), message, marks)
    cell.write()
    return cell
