"""`lab matrix` and `lab hosts check`: kernels, images and cells for a run directory."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from lab import build, cache, config, report, results
from lab.cli.common import _load
from lab.config import hosts, known
from lab.errors import LabError, UserError, printable
from lab.outcome import CLASSES
from lab.progress import Reporter
from lab.run import matrix, runner, testcase
from lab.vm import boot

# --- matrix ---------------------------------------------------------------------------


def _build_kernels(
    cfg: config.LabConfig, pairs: list[tuple[str, str]], reporter: Reporter, jobs: int = 0
) -> tuple[dict[str, build.Kernel], dict[str, str]]:
    """Build each (arch, variant) once; failures are returned, not raised."""
    if not pairs:
        return {}, {}  # e.g. resuming a finished run: no toolchain needed
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


def _kernel_provenance(k: build.Kernel) -> dict[str, object]:
    m = k.meta
    return {
        "key": k.key,
        "dir": str(k.dir),
        "image_sha256": m.get("image_sha256"),
        "config_sha256": m.get("config_sha256"),
        "source": m.get("source"),
        "series": m.get("series"),
        "fragments": m.get("fragments"),
        "toolchain": m.get("toolchain"),
        "durations": m.get("durations"),
        "reproducer": m.get("reproducer"),
    }


def _run_header(
    cfg: config.LabConfig, cells: list[matrix.Planned], selection: dict[str, object]
) -> dict[str, object]:
    """What run.json says about a new run before any cell ran."""
    return {
        "config": {"file": str(cfg.file), "sha256": cache.file_digest(cfg.file)},
        "selection": selection,
        "cells": [{"id": c.id, "dir": f"cells/{c.dirname}", "kernel": c.kernel} for c in cells],
    }


def run_matrix(
    cfg: config.LabConfig,
    cells: list[matrix.Planned],
    run_dir: Path,
    jobs: int,
    quiet: bool = False,
    lab_hosts: Sequence[hosts.Host] = (),
    forced_config: str = "",
) -> int:
    """Build, run, report; returns the run's exit code. Shared by matrix/reproduce.

    `lab_hosts`: SSH lab hosts that run cells beside the `jobs` local slots.
    `forced_config`: the sha256 of a changed lab.toml a `--resume --force-config` uses."""
    with results.locked_run(run_dir):
        return _run_matrix(cfg, cells, run_dir, jobs, quiet, lab_hosts, forced_config)


def _run_matrix(
    cfg: config.LabConfig,
    cells: list[matrix.Planned],
    run_dir: Path,
    jobs: int,
    quiet: bool,
    lab_hosts: Sequence[hosts.Host],
    forced_config: str,
) -> int:
    run = results.RunMeta.from_json(results.load_run(run_dir))
    if forced_config and isinstance(run.config, dict):
        run.config["resumed_sha256"] = [*(run.config.get("resumed_sha256") or []), forced_config]
    done_ids = results.finished_ids(run_dir)
    todo = [c for c in cells if c.id not in done_ids]
    started = time.monotonic()
    stop = runner.Stop()
    status: results.RunStatus = "interrupted"
    try:
        with Reporter() as reporter:
            kernels, failed = _build_kernels(cfg, matrix.kernels(todo), reporter)
            provenance = {label: _kernel_provenance(k) for label, k in kernels.items()}
            run.kernels = {**(run.kernels or {}), **provenance}
            run.build_failures = {**(run.build_failures or {}), **failed}
            images = {}
            for arch_name in sorted({c.cell.arch.name for c in todo}):
                img = boot.base_image(cfg, cfg.arch(arch_name), reporter.line)
                images[arch_name] = img
                run.images = {
                    **(run.images or {}),
                    arch_name: {"key": img.key, "path": str(img.path)},
                }
            seconds = round(time.monotonic() - started, 1)
            run.durations = {**(run.durations or {}), "build_and_images": seconds}
            run.write(run_dir)
            runnable = [c for c in todo if c.kernel in kernels]
            for c in todo:
                if c.kernel in failed:
                    runner.infra_cell(
                        cfg,
                        c,
                        run_dir / "cells" / c.dirname,
                        f"kernel did not build: {failed[c.kernel]}",
                    )
            progress = reporter.task(f"matrix {run_dir.name}")
            total, finished, unexpected = len(runnable), 0, 0
            running: set[str] = set()
            t_cells = time.monotonic()

            def show() -> None:
                eta = ""
                if finished:
                    per = (time.monotonic() - t_cells) / finished
                    eta = f", ETA {per * (total - finished) / 60:.1f} min"
                progress.phase(
                    f"{finished}/{total} done, {unexpected} unexpected{eta}; "
                    f"running: {', '.join(sorted(running)) or '-'}"
                )

            def on_start(p: matrix.Planned) -> None:
                running.add(p.id)
                show()

            def on_done(p: matrix.Planned, res: results.CellResult | None, err: str) -> None:
                nonlocal finished, unexpected
                running.discard(p.id)
                finished += 1
                if res is None:
                    reporter.line(f"[{p.id}] lab error: {err}")
                else:
                    if res.verdict != "expected":
                        unexpected += 1
                    word = {
                        "expected": "as expected",
                        "unexpected": "UNEXPECTED",
                        "infra": "INFRA",
                    }[res.verdict]
                    where = f" on {res.host}" if res.host != "local" else ""
                    reporter.line(
                        f"[{p.id}] {res.observed} (expected "
                        f"{'|'.join(res.expected) or '?'}): {word} "
                        f"{res.timings.get('cell', 0):.1f}s{where}"
                    )
                show()

            show()
            workers: list[runner.Worker] = []
            if lab_hosts and runnable:
                workers = _open_hosts(cfg, lab_hosts, run, reporter.line)
                run.write(run_dir)
            try:
                runner.run_cells(
                    cfg,
                    runnable,
                    run_dir,
                    kernels,
                    images,
                    jobs,
                    stop,
                    on_start,
                    on_done,
                    workers=workers,
                    on_note=reporter.line,
                )
            finally:
                _close_hosts(workers, run)
            progress.finish(f"{finished}/{total} cells, {unexpected} not as expected")
            run.durations["cells"] = round(time.monotonic() - t_cells, 1)
        status = "complete"
    finally:
        records = results.read_cells(run_dir)
        planned = set(results.planned_ids(run.to_json()))
        missing = planned - {r.run_cell_id for r in records}
        run.status = status if not missing or status != "complete" else "incomplete"
        run.not_run = sorted(missing)
        run.finished = results.now()
        last = round(time.monotonic() - started, 1)
        run.durations = {**(run.durations or {}), "last_invocation": last}
        run.write(run_dir)
        report.render(run_dir, known.lookup(cfg.known_issues))
    code = known.gate(results.exit_code(run.to_json(), records), cfg.known_issues, records)
    if not quiet:
        print(report.text_summary(run_dir, known.lookup(cfg.known_issues)))
    return code


def _open_hosts(
    cfg: config.LabConfig,
    lab_hosts: Sequence[hosts.Host],
    run: results.RunMeta,
    log: Callable[[str], None],
) -> list[runner.Worker]:
    from lab.hosts import ssh

    workers, failed = ssh.open_workers(cfg, lab_hosts, log)
    record: dict[str, object] = {}
    for h in lab_hosts:
        w = next((x for x in workers if x.name == h.name), None)
        record[h.name] = {
            "address": h.target,
            "capacity": h.capacity,
            "arches": sorted(w.arches) if w else list(h.arches),
            "python": w.info.python_version if w else None,
            "status": "ok" if w else f"unusable: {failed.get(h.name, '')}",
        }
    run.hosts = record
    return list(workers)


def _close_hosts(workers: Sequence[runner.Worker], run: results.RunMeta) -> None:
    from lab.hosts import ssh

    record = run.hosts
    for w in workers:
        if isinstance(w, ssh.RemoteWorker):
            w.close()
            if isinstance(record, dict) and isinstance(record.get(w.name), dict):
                record[w.name]["cells"] = w.cells
                if w.lost():
                    record[w.name]["status"] = f"lost: {w.lost()}"


def _hosts(cfg: config.LabConfig) -> list[hosts.Host]:
    return hosts.parse(cfg.extra.get("hosts"), cfg.file, list(cfg.arches))


def cmd_hosts_check(args: argparse.Namespace) -> int:
    from lab.hosts import check as hosts_check
    from lab.hosts import ssh

    cfg = _load(args)
    declared = _hosts(cfg)
    if not declared:
        raise UserError(f"{cfg.file}: no [[hosts]] declared (see docs/scaling.md)")
    chosen = hosts.select(declared, args.hosts, cfg.file) if args.hosts else declared
    answers: dict[str, list[hosts_check.CheckLine]] = {}

    def one(h: hosts.Host) -> None:
        answers[h.name] = hosts_check.check(cfg, h, upload=not args.no_upload)

    ssh.each_host(chosen, one)
    ok = True
    for h in chosen:
        arches = ", ".join(h.arches) if h.arches else "all"
        print(f"host {h.name} ({h.target}; capacity {h.capacity}; arches {arches})")
        for line in answers.get(h.name, [hosts_check.CheckLine("check", False, "no answer")]):
            ok = ok and line.ok
            detail = printable(line.detail, one_line=True)  # holds what the host said
            print(f"  {'ok  ' if line.ok else 'FAIL'} {line.label:<11} {detail}")
    return 0 if ok else 2


def cmd_matrix(args: argparse.Namespace) -> int:
    cfg = _load(args)
    tcs = testcase.discover(cfg.testcases_dir, CLASSES)
    for problem in matrix.unknown_rule_keys(cfg, tcs):
        print(
            f"lab: warning: expectation uses a key no variant defines: {problem}", file=sys.stderr
        )
    spec = matrix.parse_spec(cfg.extra.get("matrix"), str(cfg.file))
    declared = _hosts(cfg)  # validated on every run: a typo in [[hosts]] is an error
    lab_hosts = hosts.select(declared, args.hosts, cfg.file) if args.hosts else []
    forced = ""
    if args.force_config and not args.resume:
        raise UserError("--force-config applies only to --resume RUN")
    if args.resume:
        run_dir = results.resolve_run(cfg.results_dir, args.resume)
        run = results.load_run(run_dir)
        conf = run.get("config")
        recorded = conf.get("sha256") if isinstance(conf, dict) else None
        current = cache.file_digest(cfg.file)
        if recorded != current:
            if not args.force_config:
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
            cfg, tcs, spec, sel["variants"], sel["arches"], sel["testcases"], sel["repeat"]
        )
        if sel.get("shard"):
            cells = matrix.shard(cells, *matrix.parse_shard(sel["shard"]))
        print(f"lab: resuming {run_dir}", file=sys.stderr)
    else:
        cells = matrix.plan(cfg, tcs, spec, args.variant, args.arch, args.testcase, args.repeat)
        if args.shard:
            cells = matrix.shard(cells, *matrix.parse_shard(args.shard))
        if not cells:
            raise UserError("the selection holds no cells")
        if args.list:
            for c in cells:
                rule = c.cell.expectation()
                print(
                    f"{c.id:40} expect {'|'.join(rule.outcomes) if rule else '?':24} "
                    f"({rule.text if rule else 'no rule matches'})"
                )
            print(f"{len(cells)} cells, {len(matrix.kernels(cells))} kernels", file=sys.stderr)
            return 0
        header = _run_header(
            cfg,
            cells,
            {
                "variants": args.variant,
                "arches": args.arch,
                "testcases": args.testcase,
                "repeat": args.repeat or spec.repeat,
                "shard": args.shard or None,
            },
        )
        base = Path(args.results) if args.results else cfg.results_dir
        run_dir = results.new_run(base, "matrix", header)
        print(
            f"lab: run {run_dir} ({len(cells)} cells, {len(matrix.kernels(cells))} kernels)",
            file=sys.stderr,
        )
    jobs = args.jobs or cfg.jobs or build.default_jobs(cfg)
    return run_matrix(cfg, cells, run_dir, jobs, lab_hosts=lab_hosts, forced_config=forced)
