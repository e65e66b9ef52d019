"""A matrix run: kernels and base images, then the cells on workers, then the reports.

`lab matrix` and `lab reproduce` plan cells and call run_matrix; this module keeps run.json
(`results.RunMeta`) up to date at each step. Where the cells run is a list of `Worker`s:
the local slots are made here, SSH lab hosts come from the caller (`open_workers`), so the
run stage knows the Worker protocol and nothing about SSH.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lab import build, cache, config, provenance, report, results
from lab.build import prebuilt
from lab.config import known
from lab.errors import LabError, UserError
from lab.progress import Reporter
from lab.run import matrix, needs
from lab.run.job import Artifacts
from lab.run.schedule import infra_cell, run_cells
from lab.run.testcase import TestCase
from lab.run.workers import Stop, Worker
from lab.vm import boot

Log = Callable[[str], None]

# Opens the extra workers (SSH lab hosts) once kernels and images are ready: the workers
# that answered, and what run.json records about every host asked (run.hosts).
OpenWorkers = Callable[[Log], tuple[Sequence[Worker], dict[str, Any]]]

VERDICT_WORDS = {"expected": "as expected", "unexpected": "UNEXPECTED", "infra": "INFRA"}


def build_kernels(
    cfg: config.LabConfig,
    pairs: list[tuple[str, str]],
    reporter: Reporter,
    jobs: int = 0,
    prebuilt_path: str = "",
) -> tuple[dict[str, build.Kernel], dict[str, str]]:
    """Build each (arch, variant) once; failures are returned, not raised.

    `prebuilt_path` (`lab matrix --kernel`): every pair boots that kernel, built
    elsewhere; nothing is built and no toolchain is needed."""
    if not pairs:
        return {}, {}  # e.g. resuming a finished run: no toolchain needed
    if prebuilt_path:
        return {
            f"{a}/{v}": prebuilt.load(Path(prebuilt_path), cfg.arch(a), v) for a, v in pairs
        }, {}
    build.check_host_tools()
    kernels: dict[str, build.Kernel] = {}
    failed: dict[str, str] = {}
    plans = [build.plan(cfg, cfg.arch(a), cfg.variant(v), jobs, reporter.line) for a, v in pairs]
    plans.sort(key=lambda p: p.tree_key)  # neighbours share a build tree
    for p in plans:
        task = reporter.task(p.label)
        try:
            built = build.build(cfg, p, task)
            k, why = built.kernel, built.message
        except LabError as exc:  # bad config, lab trouble: its cells become infra cells too
            k, why = None, str(exc)
        if k is None:
            task.finish("FAILED")
            failed[p.label] = why.splitlines()[0]
            continue
        task.finish(
            f"cached ({k.key})"
            if k.cached
            else f"built in {k.meta['durations'].get('total', 0):.0f}s ({k.key})"
        )
        kernels[p.label] = k
    return kernels, failed


def one_kernel(
    cfg: config.LabConfig,
    arch: config.ArchSpec,
    variant: config.Variant,
    reporter: Reporter,
    prebuilt_path: str = "",
) -> build.Kernel:
    """The kernel `lab boot` and `lab run` need, built if it is not cached; a kernel that
    does not build is an error here (nothing to boot)."""
    if prebuilt_path:  # --kernel: built elsewhere, checked, never built here
        return prebuilt.load(Path(prebuilt_path), arch, variant.name)
    build.check_host_tools()
    p = build.plan(cfg, arch, variant, 0, reporter.line)
    task = reporter.task(p.label)
    built = build.build(cfg, p, task)
    if built.kernel is None:  # a result, but lab boot/run cannot go on without the kernel
        task.finish("failed")
        raise LabError(built.message)
    task.finish("kernel cached" if built.kernel.cached else "kernel built")
    return built.kernel


def kernel_provenance(k: build.Kernel) -> dict[str, object]:
    """What run.json records about a kernel the run used."""
    m = k.meta
    keys = ("image_sha256", "config_sha256", "source", "series", "series_sources")
    return {
        "key": k.key,
        "dir": str(k.dir),
        **{key: m.get(key) for key in (*keys, "fragments", "toolchain")},
        # --kernel: built elsewhere; its path, `uname -r` and config (lab/build/prebuilt.py)
        **({"prebuilt": m["prebuilt"]} if "prebuilt" in m else {}),
        "durations": m.get("durations"),
        "reproducer": m.get("reproducer"),
    }


def run_header(
    cfg: config.LabConfig, cells: Sequence[matrix.Planned], selection: Mapping[str, object]
) -> dict[str, object]:
    """What run.json says about a new run before any cell ran."""
    return {
        "config": {"file": str(cfg.file), "sha256": cache.file_digest(cfg.file)},
        "selection": dict(selection),
        "cells": [{"id": c.id, "dir": f"cells/{c.dirname}", "kernel": c.kernel} for c in cells],
        "provenance": provenance.for_run(
            cfg.file, [(c.cell.testcase.name, c.cell.testcase.path) for c in cells]
        ),
    }


def resume_plan(
    cfg: config.LabConfig,
    tcs: Sequence[TestCase],
    spec: matrix.MatrixSpec,
    run_dir: Path,
    force_config: bool,
) -> tuple[list[matrix.Planned], str]:
    """The cells of an existing run, planned again from its run.json selection, and the
    sha256 of the changed lab.toml a `--force-config` mixes in ("" when unchanged)."""
    run = results.load_run(run_dir)
    conf = run.get("config")
    recorded = conf.get("sha256") if isinstance(conf, dict) else None
    current = cache.file_digest(cfg.file)
    forced = ""
    if recorded != current:
        if not force_config:
            raise UserError(
                f"{run_dir}: the run used a lab.toml with sha256 {str(recorded)[:12]}, "
                f"{cfg.file} now has {current[:12]}: resume with the lab.toml the run "
                "used, or add --force-config to mix cells of both (run.json records both)"
            )
        forced = current
    sel = run.get("selection")
    if not isinstance(sel, dict) or not all(
        k in sel for k in ("variants", "arches", "testcases", "repeat")
    ):
        raise UserError(f"{run_dir / 'run.json'}: no usable 'selection' to resume from")
    cells = matrix.plan(
        cfg, list(tcs), spec, sel["variants"], sel["arches"], sel["testcases"], sel["repeat"]
    )
    if sel.get("shard"):
        cells = matrix.shard(cells, *matrix.parse_shard(sel["shard"]))
    return cells, forced


def prebuilt_for(cells: Sequence[matrix.Planned], path: str) -> build.Kernel:
    """`lab matrix --kernel PATH`: the prebuilt kernel, checked against the selection
    before any run directory exists. One image has one arch, so the selection must too."""
    arches = sorted({c.cell.arch.name for c in cells})
    if len(arches) != 1:
        raise UserError(
            f"--kernel {path}: one kernel image boots on one arch, but the selection has "
            f"{len(arches)} ({', '.join(arches)}); add --arch ARCH"
        )
    first = cells[0].cell
    return prebuilt.load(Path(path), first.arch, first.variant.name)


def run_matrix(
    cfg: config.LabConfig,
    cells: list[matrix.Planned],
    run_dir: Path,
    jobs: int,
    open_workers: OpenWorkers | None = None,
    forced_config: str = "",
    prebuilt_path: str = "",
) -> int:
    """Build, run, report; returns the run's exit code. Shared by matrix and reproduce.

    `open_workers`: more workers (SSH lab hosts) beside the `jobs` local slots, opened
    only when there are cells to run. `forced_config`: the sha256 of a changed lab.toml
    that a `--resume --force-config` uses. `prebuilt_path`: `--kernel`, the kernel every
    cell boots instead of a built one."""
    with results.locked_run(run_dir):
        run = _Run(cfg, cells, run_dir, jobs, open_workers, forced_config)
        run.prebuilt_path = prebuilt_path
        return run.go()


class _Run:
    """One invocation of run_matrix: the run.json it keeps and the progress it shows."""

    def __init__(
        self,
        cfg: config.LabConfig,
        cells: list[matrix.Planned],
        run_dir: Path,
        jobs: int,
        open_workers: OpenWorkers | None,
        forced_config: str,
    ) -> None:
        self.cfg, self.run_dir, self.jobs, self.open_workers = cfg, run_dir, jobs, open_workers
        self.meta = results.RunMeta.from_json(results.load_run(run_dir))
        if forced_config and isinstance(self.meta.config, dict):
            before = self.meta.config.get("resumed_sha256") or []
            self.meta.config["resumed_sha256"] = [*before, forced_config]
        done_ids = results.finished_ids(run_dir)
        self.todo = [c for c in cells if c.id not in done_ids]
        self.prebuilt_path = ""
        self.started = time.monotonic()

    def go(self) -> int:
        status: results.RunStatus = "interrupted"
        try:
            with Reporter() as reporter:
                self._cells(reporter, self._prepare(reporter))
            status = "complete"
        finally:
            records = self._finish(status)
        # Exit 0 also when every cell not as expected is a known issue (lab.toml).
        code = results.exit_code(self.meta.to_json(), records)
        return known.gate(code, self.cfg.known_issues, records)

    def _prepare(self, reporter: Reporter) -> Artifacts:
        """Kernels, base images and test-case needs for the cells still to run, all built
        before any cell is scheduled; a kernel or need that did not build makes its cells
        infra cells now."""
        run, todo = self.meta, self.todo
        kernels, failed = build_kernels(
            self.cfg, matrix.kernels(todo), reporter, prebuilt_path=self.prebuilt_path
        )
        provenance = {label: kernel_provenance(k) for label, k in kernels.items()}
        run.kernels = {**(run.kernels or {}), **provenance}
        run.build_failures = {**(run.build_failures or {}), **failed}
        images = {}
        for arch_name in sorted({c.cell.arch.name for c in todo}):
            img = boot.base_image(self.cfg, self.cfg.arch(arch_name), reporter.line)
            images[arch_name] = img
            run.images = {**(run.images or {}), arch_name: {"key": img.key, "path": str(img.path)}}
        binaries, unmet = needs.resolve(self.cfg, [c.cell for c in todo if c.kernel in kernels])
        seconds = round(time.monotonic() - self.started, 1)
        run.durations = {**(run.durations or {}), "build_and_images": seconds}
        run.write(self.run_dir)
        for c in todo:
            need = needs.failure(c.cell, unmet)
            if c.kernel in failed or need is not None:
                why = f"kernel did not build: {failed[c.kernel]}" if c.kernel in failed else ""
                d = self.run_dir / "cells" / c.dirname
                infra_cell(self.cfg, c, d, why or str(need))
        return Artifacts(kernels, images, binaries, unmet)

    def _cells(self, reporter: Reporter, built: Artifacts) -> None:
        runnable = [c for c in self.todo if built.ready(c)]
        progress = _Progress(reporter, f"matrix {self.run_dir.name}", len(runnable))
        progress.show()
        workers: Sequence[Worker] = []
        if self.open_workers is not None and runnable:
            workers, self.meta.hosts = self.open_workers(reporter.line)
            self.meta.write(self.run_dir)
        try:
            run_cells(
                self.cfg,
                runnable,
                self.run_dir,
                built,
                self.jobs,
                Stop(),
                progress.on_start,
                progress.on_done,
                workers=workers,
                on_note=reporter.line,
            )
        finally:
            self._close(workers)
        progress.task.finish(
            f"{progress.finished}/{progress.total} cells, {progress.unexpected} not as expected"
        )
        self.meta.durations = {
            **(self.meta.durations or {}),
            "cells": round(time.monotonic() - progress.t_cells, 1),
        }

    def _close(self, workers: Sequence[Worker]) -> None:
        """Close every worker and record what each says about its part of the run."""
        record = self.meta.hosts
        for w in workers:
            w.close()
            if isinstance(record, dict) and isinstance(record.get(w.name), dict):
                record[w.name].update(w.summary())

    def _finish(self, status: results.RunStatus) -> list[results.CellResult]:
        """run.json's status and the reports, also after an interruption."""
        run = self.meta
        records = results.read_cells(self.run_dir)
        planned = set(results.planned_ids(run.to_json()))
        missing = planned - {r.run_cell_id for r in records}
        run.status = status if not missing or status != "complete" else "incomplete"
        run.not_run = sorted(missing)
        run.finished = results.now()
        last = round(time.monotonic() - self.started, 1)
        run.durations = {**(run.durations or {}), "last_invocation": last}
        run.write(self.run_dir)
        report.render(self.run_dir, known.lookup(self.cfg.known_issues))
        return records


class _Progress:
    """The matrix's progress line and one line per finished cell."""

    def __init__(self, reporter: Reporter, label: str, total: int) -> None:
        self.reporter = reporter
        self.task = reporter.task(label)
        self.total, self.finished, self.unexpected = total, 0, 0
        self.running: set[str] = set()
        self.t_cells = time.monotonic()

    def show(self) -> None:
        eta = ""
        if self.finished:
            per = (time.monotonic() - self.t_cells) / self.finished
            eta = f", ETA {per * (self.total - self.finished) / 60:.1f} min"
        self.task.phase(
            f"{self.finished}/{self.total} done, {self.unexpected} unexpected{eta}; "
            f"running: {', '.join(sorted(self.running)) or '-'}"
        )

    def on_start(self, p: matrix.Planned) -> None:
        self.running.add(p.id)
        self.show()

    def on_done(self, p: matrix.Planned, res: results.CellResult | None, err: str) -> None:
        self.running.discard(p.id)
        self.finished += 1
        if res is None:
            self.reporter.line(f"[{p.id}] lab error: {err}")
        else:
            if res.verdict != "expected":
                self.unexpected += 1
            where = f" on {res.host}" if res.host != "local" else ""
            self.reporter.line(
                f"[{p.id}] {res.observed} (expected "
                f"{'|'.join(res.expected) or '?'}): {VERDICT_WORDS[res.verdict]} "
                f"{res.timings.get('cell', 0):.1f}s{where}"
            )
        self.show()
