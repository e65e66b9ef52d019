"""Running cells: boot a guest per cell, follow it, classify, write the cell directory.

The side-effect half of cells (lab.run.cell is the pure half). A cell directory holds:

  console.log, console.timed.log   the raw console and its host-timestamped copy
  result.jsonl                     the agent's records as received
  qemu.argv                        the QEMU command line
  evidence.json                    the classification (outcome, evidence lines, rule)
  cell.json                        inputs, expected vs observed, timings, reproducer
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from lab import cache, classify, proc, results
from lab.build import Kernel
from lab.config import ArchSpec, BootSpec, LabConfig, QemuSpec
from lab.errors import InfraError, LabError, UserError
from lab.image import BaseImage
from lab.outcome import Deadline, Verdict
from lab.results import CellResult
from lab.run import matrix, needs
from lab.run.cell import Cell, expected_banner, job_for, reproducer
from lab.vm import boot, channel
from lab.vm.boot import Files, LaunchRequest
from lab.vm.machine import BootError

MARGIN = 30.0  # seconds the host waits beyond a test case's own (in-guest) deadline


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
        return arch_from_json(self.arch)

    def boot_spec(self) -> BootSpec:
        return BootSpec(**self.boot)

    def launch_request(
        self, kernel_image: Path, base_image: Path, files: Files, cache_root: Path
    ) -> LaunchRequest:
        """The boot of this job, wherever it runs (the images are the host's copies)."""
        return LaunchRequest(
            arch=self.arch_spec(),
            kernel_image=kernel_image,
            base_image=base_image,
            agent_job=self.agent_job,
            cmdline=self.cmdline,
            memory_mib=self.memory_mib,
            smp=self.smp,
            timeouts=self.boot_spec(),
            cache_root=cache_root,
            files=files,
        )


@dataclass(frozen=True)
class Artifacts:
    """What a matrix run built before scheduling its cells: kernels by label, base images
    by arch, test-case needs by (arch, need), and the needs that did not build."""

    kernels: Mapping[str, Kernel]
    images: Mapping[str, BaseImage]
    binaries: Mapping[needs.Need, Path]
    unmet: Mapping[needs.Need, LabError]

    def ready(self, p: matrix.Planned) -> bool:
        """Everything the planned cell needs was built."""
        return p.kernel in self.kernels and needs.failure(p.cell, self.unmet) is None


@dataclass(frozen=True)
class Inputs:
    """What a cell boots and carries, built before the cell is scheduled: its kernel,
    the base image of its arch and the binaries its test case needs (need -> file)."""

    kernel: Kernel
    base: BaseImage
    binaries: Mapping[str, Path] = dataclasses.field(default_factory=dict)


def arch_from_json(data: Mapping[str, Any]) -> ArchSpec:
    """An ArchSpec from dataclasses.asdict() output (after a JSON round trip)."""
    a = dict(data)
    q = dict(a.pop("qemu"))
    q["extra_args"] = tuple(q["extra_args"])
    a["configs"] = tuple(a["configs"])
    return ArchSpec(**a, qemu=QemuSpec(**q))


def guest_files(cell: Cell, binaries: Mapping[str, Path]) -> dict[str, tuple[bytes, int]]:
    """The overlay files of a cell: the guest library, its test case and the binaries
    its needs resolved to (lab.run.needs built them before scheduling)."""
    lib = resources.files("lab.guest").joinpath("labguest.py").read_bytes()
    files = {
        "lab/lib/labguest.py": (lib, 0o644),
        f"lab/testcases/{cell.testcase.name}.py": (cell.testcase.path.read_bytes(), 0o644),
    }
    for need in cell.testcase.needs:
        binary = binaries.get(need)
        if binary is None:  # needs.resolve runs first; a cell it failed is an infra cell
            raise InfraError(f"{cell.id}: {need} was not built before the cell was prepared")
        files[f"lab/bin/{binary.name}"] = (binary.read_bytes(), 0o755)
    return files


def prepare_cell(
    cfg: LabConfig,
    cell: Cell,
    inputs: Inputs,
    run_cell_id: str = "",
    repeat: int = 1,
) -> tuple[CellJob, dict[str, tuple[bytes, int]]]:
    """The job and the guest files of a cell: reads files, builds and starts nothing."""
    kernel, base = inputs.kernel, inputs.base
    record = {
        **identity(cfg, cell, run_cell_id, repeat),
        "kernel": {
            "key": kernel.key,
            "image": kernel.image.name,
            "image_sha256": kernel.meta.get("image_sha256"),
            "config_sha256": kernel.meta.get("config_sha256"),
            "dir": str(kernel.dir),
        },
        "image": {"key": base.key, "path": str(base.path)},
    }
    job = CellJob(
        record=record,
        arch=dataclasses.asdict(cell.arch),
        cmdline=boot.cmdline_for(cfg, cell.arch, cell.variant, cell.testcase.cmdline),
        memory_mib=cell.testcase.memory_mib or cell.arch.qemu.memory_mib,
        smp=cell.arch.qemu.smp,
        agent_job=job_for(cell),
        banner=expected_banner(cell.variant),
        boot=dataclasses.asdict(cfg.boot),
        test_timeout=cell.testcase.timeout + MARGIN,
    )
    return job, guest_files(cell, inputs.binaries)


def identity(cfg: LabConfig, cell: Cell, run_cell_id: str = "", repeat: int = 1) -> dict[str, Any]:
    """The cell.json fields known before the cell runs: which cell, what it expects,
    how to run it again. An infra cell (CellResult.infra) has just these."""
    rule = cell.expectation()
    return {
        "id": cell.id,
        "run_cell_id": run_cell_id or cell.id,
        "repeat": repeat,
        "arch": cell.arch.name,
        "variant": cell.variant.name,
        "testcase": cell.testcase.name,
        "params": dict(cell.variant.params),
        "expected": list(rule.outcomes) if rule else [],
        "expected_rule": rule.text if rule else None,
        "reproducer": reproducer(cfg, cell),
    }


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


# --- the matrix ---------------------------------------------------------------------


class Stop:
    """Set when the run must stop (Ctrl-C, SIGTERM): no new cell starts."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()


class HostDown(InfraError):
    """A lab host stopped answering (or could not take the cell): run it elsewhere.

    `ran` is False when the cell never reached the host (it was already known to be
    gone), so the attempt does not count against the cell's single retry."""

    def __init__(self, host: str, message: str, ran: bool = True) -> None:
        super().__init__(f"lab host {host}: {message}")
        self.host = host
        self.reason = message
        self.ran = ran


class Worker(Protocol):
    """Somewhere cells run: this machine, or one SSH lab host (lab.hosts.ssh.RemoteWorker)."""

    @property
    def name(self) -> str:
        """The worker's name: local, or the lab host's name."""
        ...

    @property
    def slots(self) -> int:
        """Cells it runs at once."""
        ...

    def serves(self, arch: str) -> bool: ...

    def run(
        self,
        p: matrix.Planned,
        inputs: Inputs,
        directory: Path,
        requeued_from: tuple[str, ...],
    ) -> CellResult:
        """Run the cell; its directory is complete when this returns. Raises HostDown
        when the host is lost, LabError when the cell cannot run (an infra result)."""
        ...

    def lost(self) -> str:
        """Why the worker is gone ("" while it is usable)."""
        ...

    def abort(self) -> None:
        """Stop in-flight cells now (Ctrl-C, SIGTERM)."""
        ...

    def close(self) -> None:
        """Release what the worker holds (connections) once the run has ended."""
        ...

    def summary(self) -> dict[str, Any]:
        """What run.json adds about the worker when the run ends (its `hosts` entry)."""
        ...


@dataclass(frozen=True)
class LocalWorker:
    """This machine: prepare and execute in-process (the behaviour before lab hosts)."""

    cfg: LabConfig
    slots: int
    name: str = "local"

    def serves(self, arch: str) -> bool:
        return True

    def run(
        self,
        p: matrix.Planned,
        inputs: Inputs,
        directory: Path,
        requeued_from: tuple[str, ...],
    ) -> CellResult:
        res = execute_here(self.cfg, p.cell, inputs, directory, run_cell_id=p.id, repeat=p.repeat)
        if requeued_from:
            # cell.json is written last; rewriting it (atomically) keeps the cell complete.
            data = cache.read_json(directory / "cell.json")
            cache.write_json(
                directory / "cell.json", {**data, "requeued_from": list(requeued_from)}
            )
        return res

    def lost(self) -> str:
        return ""

    def abort(self) -> None:
        proc.kill_all()

    def close(self) -> None:
        pass  # nothing held between cells

    def summary(self) -> dict[str, Any]:
        return {}  # run.json has no entry for this machine's slots


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
    kernels: Mapping[str, Kernel],
    images: Mapping[str, BaseImage],
    jobs: int,
    stop: Stop,
    on_start: Callable[[matrix.Planned], None] = lambda _c: None,
    on_done: Callable[[matrix.Planned, CellResult | None, str], None] = lambda _c, _r, _e: None,
    workers: Sequence[Worker] = (),
    on_note: Callable[[str], None] = lambda _m: None,
    binaries: Mapping[needs.Need, Path] | None = None,
) -> None:
    """Run cells on `jobs` local slots plus the slots of `workers` (SSH lab hosts).

    `binaries`: what the cells' test cases need, built (lab.run.needs.resolve)."""
    everyone = [LocalWorker(cfg, max(1, jobs)), *workers]
    schedule(
        cfg, cells, run_dir, kernels, images, everyone, stop, on_start, on_done, on_note, binaries
    )


def schedule(
    cfg: LabConfig,
    cells: list[matrix.Planned],
    run_dir: Path,
    kernels: Mapping[str, Kernel],
    images: Mapping[str, BaseImage],
    workers: Sequence[Worker],
    stop: Stop,
    on_start: Callable[[matrix.Planned], None] = lambda _c: None,
    on_done: Callable[[matrix.Planned, CellResult | None, str], None] = lambda _c, _r, _e: None,
    on_note: Callable[[str], None] = lambda _m: None,
    binaries: Mapping[needs.Need, Path] | None = None,
) -> None:
    """Slots pulling from one queue, in plan order; each cell's directory is complete or absent.

    A worker has `slots` threads. A cell interrupted by `stop` is discarded (its
    directory removed) so that `--resume` runs it again; finished cells are never
    touched. A cell whose lab host is lost goes back to the front of the queue once
    (marked `requeued_from`); a second loss makes it an infra_error naming the host.
    A lost host takes no more cells. Every planned cell gets exactly one result.
    """
    queue = _Queue([(p, ()) for p in cells], workers, stop)
    errors: list[BaseException] = []

    def give_up(p: matrix.Planned, tried: tuple[str, ...]) -> None:
        arch = p.cell.arch.name
        lost = "; ".join(f"{w.name}: {w.lost()}" for w in workers if w.lost())
        msg = f"no usable worker left for {arch} cells ({lost or 'none serves it'})"
        d = run_dir / "cells" / p.dirname
        infra_cell(cfg, p, d, msg, {"requeued_from": list(tried)} if tried else None)
        on_done(p, None, msg)

    def attempt(w: Worker, p: matrix.Planned, tried: tuple[str, ...]) -> None:
        if stop:
            queue.done()
            return
        on_start(p)
        d = run_dir / "cells" / p.dirname
        if d.exists():
            shutil.rmtree(d)  # a leftover of an interrupted attempt
        marks: dict[str, Any] = {} if isinstance(w, LocalWorker) else {"lab_host": w.name}
        if tried:
            marks["requeued_from"] = list(tried)
        try:
            built = needs.binaries(p.cell, binaries or {})
            inputs = Inputs(kernels[p.kernel], images[p.cell.arch.name], built)
            res = w.run(p, inputs, d, tried)
        except HostDown as exc:
            if stop:
                shutil.rmtree(d, ignore_errors=True)
                queue.done()
                return
            if not exc.ran:
                queue.put_back(p, tried)  # never reached the host: not an attempt
                return
            on_note(f"[{p.id}] {exc}")
            if tried:  # already re-queued once: give up on the cell
                msg = f"{exc} (the cell was re-queued from {', '.join(tried)} before)"
                infra_cell(cfg, p, d, msg, marks)
                queue.done()
                on_done(p, None, msg)
                return
            on_note(f"[{p.id}] re-queued (was on {w.name})")
            queue.put_back(p, (*tried, w.name))
            return
        except LabError as exc:
            if stop:
                shutil.rmtree(d, ignore_errors=True)
                queue.done()
                return
            infra_cell(cfg, p, d, str(exc), marks or None)
            queue.done()
            on_done(p, None, str(exc))
            return
        if stop:
            shutil.rmtree(d, ignore_errors=True)  # killed mid-way: not a result
            queue.done()
            return
        queue.done()
        on_done(p, res, "")

    def slot(w: Worker) -> None:
        try:
            while (item := queue.take(w)) is not None:
                p, tried, orphan = item
                if orphan:
                    give_up(p, tried)
                    queue.done()
                else:
                    attempt(w, p, tried)
        except BaseException as exc:  # a bug: stop everything, re-raised in the main thread
            errors.append(exc)
            stop.set()
            queue.wake()

    threads = [
        threading.Thread(target=slot, args=(w,), name=f"cell-{w.name}-{i}", daemon=True)
        for w in workers
        for i in range(w.slots)
    ]
    try:
        for t in threads:
            t.start()
        # Join with a timeout: the main thread must stay responsive to SIGINT/SIGTERM.
        for t in threads:
            while t.is_alive():
                t.join(0.2)
        if errors:
            raise errors[0]
        # Every worker lost (possible only without local slots): nobody else will.
        while not stop and queue.pending:
            p, tried = queue.pending.pop(0)
            give_up(p, tried)
    except BaseException:
        stop.set()
        queue.wake()
        for w in workers:
            w.abort()  # every QEMU of every worker, now (remote: close the channels)
        for t in threads:
            t.join(30)
        raise
    finally:
        # Cells fetched from lab hosts are staged here before their rename into cells/.
        shutil.rmtree(run_dir / ".staging", ignore_errors=True)


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
