"""The `lab` command line. Parses arguments, calls the stage modules, prints results.

User errors (LabError) print as one line and exit non-zero; tracebacks are
reserved for bugs. Exit codes: 0 success, 1 a failed result (a build that does
not compile), 2 bad input or infrastructure trouble, 130 interrupted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from lab import (
    __version__,
    boot,
    build,
    cache,
    cell,
    channel,
    classify,
    config,
    doctor,
    failures,
    hosts,
    image,
    kconfig,
    machine,
    matrix,
    proc,
    report,
    results,
    runner,
    selection,
    source,
    testcase,
)
from lab.errors import LabError, UserError, printable
from lab.outcome import CLASSES
from lab.progress import Reporter


class BuildFailed(LabError):
    """A kernel did not compile: a result, exit status 1."""


def _load(args: argparse.Namespace) -> config.LabConfig:
    return config.load(Path(args.config))


# --- build -------------------------------------------------------------------------


def cmd_build(args: argparse.Namespace) -> int:
    cfg = _load(args)
    arches = selection.arches(cfg, args.arch)
    variants = selection.variants(cfg, args.variant, everything=args.all)
    build.check_host_tools()
    if args.refresh_source:
        source.forget_git_refs(cfg.cache_dir)
    results = []
    with Reporter() as reporter:
        plans = [build.plan(cfg, a, v, args.jobs, reporter.line) for a in arches for v in variants]
        # Group by build tree so each shared tree goes from one variant to the next.
        plans.sort(key=lambda p: (p.tree_key, [v.name for v in cfg.variants].index(p.variant.name)))
        for p in plans:
            started = time.monotonic()
            task = reporter.task(p.label)
            try:
                built = build.build(cfg, p, task, force=args.force)
            except LabError:
                task.finish("failed")
                raise
            if built.kernel is None:
                task.finish("failed")
                raise BuildFailed(built.message)
            kernel = built.kernel
            wall = time.monotonic() - started
            if kernel.cached:
                task.finish(f"cached ({wall:.2f}s, no make): {kernel.image}")
            else:
                made = kernel.meta["durations"].get("make", 0.0)
                task.finish(
                    f"built in {wall:.1f}s (make {made:.1f}s, "
                    f"{kernel.meta['objects_compiled']} objects): {kernel.image}"
                )
            results.append(
                {
                    "arch": kernel.arch,
                    "variant": kernel.variant,
                    "key": kernel.key,
                    "cached": kernel.cached,
                    "seconds": round(wall, 2),
                    "image": str(kernel.image),
                    "dir": str(kernel.dir),
                }
            )
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


# --- boot ------------------------------------------------------------------------

BOOT_FAILED = 125  # like timeout(1)/docker: the lab failed, not the command
MAX_CONSOLE = 1 << 30  # bytes of a cell directory's console.log that `lab classify` reads


def _kernel_for(
    cfg: config.LabConfig, arch: config.ArchSpec, variant: config.Variant, reporter: Reporter
) -> build.Kernel:
    build.check_host_tools()
    p = build.plan(cfg, arch, variant, 0, reporter.line)
    task = reporter.task(p.label)
    built = build.build(cfg, p, task)
    if built.kernel is None:  # a result, but lab boot/run cannot go on without the kernel
        task.finish("failed")
        raise LabError(built.message)
    task.finish("kernel cached" if built.kernel.cached else "kernel built")
    return built.kernel


def cmd_boot(args: argparse.Namespace) -> int:
    cfg = _load(args)
    arch = cfg.arch(args.arch)
    variant = cfg.variant(args.variant) if args.variant else cfg.variants[0]
    with Reporter() as reporter:
        kernel = _kernel_for(cfg, arch, variant, reporter)
        base = boot.base_image(cfg, arch, reporter.line)
    job: dict[str, object] = (
        {"mode": "shell"} if args.exec is None else {"mode": "exec", "command": args.exec}
    )
    req = boot.BootRequest(
        arch, variant, kernel, base, job, extra_cmdline=args.append, memory_mib=args.memory
    )
    workdir = boot.new_workdir(cfg, f"{arch.name}-{variant.name}")
    prepared = boot.prepare(cfg, req, workdir, lambda m: print(f"lab: {m}", file=sys.stderr))
    m = prepared.machine
    out: dict[str, list[str]] = {"stdout": [], "stderr": []}
    status: int | None = None

    def on_record(rec: dict[str, object]) -> None:
        if rec.get("type") == "output" and isinstance(rec.get("data"), str):
            stream = "stderr" if rec.get("stream") == "stderr" else "stdout"
            data = str(rec["data"])
            out[stream].append(data)
            if not args.json:
                target = sys.stderr if stream == "stderr" else sys.stdout
                target.write(data)
                target.flush()

    try:
        with m:
            try:
                m.wait_ready()
            except machine.BootError as exc:
                print(f"lab: boot failed: {exc}", file=sys.stderr)
                for line in exc.lines:
                    print(f"  | {line}", file=sys.stderr)
                print(f"lab: console log: {workdir / 'console.log'}", file=sys.stderr)
                return BOOT_FAILED
            if args.exec is None:
                print(
                    f"lab: {arch.name}/{variant.name} ready ({prepared.accel.accel}); Ctrl-] quits",
                    file=sys.stderr,
                )
                m.interact()
                status = 0
            else:
                how = m.follow(lambda r: r.get("type") == "exit", args.timeout, on_record)
                exit_rec = m.results.first("exit")
                if exit_rec is not None and isinstance(exit_rec.get("status"), int):
                    status = int(exit_rec["status"])
                    m.follow(lambda r: r.get("type") == "done", 5.0, on_record)
                    m.wait_exit()
                else:
                    why = {
                        "timeout": f"did not finish within {args.timeout:.0f}s",
                        "exited": "the guest stopped before the command finished",
                    }[how]
                    print(
                        f"lab: command {why}; console log: {workdir / 'console.log'}",
                        file=sys.stderr,
                    )
                    for line in m.console.tail(10) if m.console else []:
                        print(f"  | {line}", file=sys.stderr)
                    status = BOOT_FAILED
    finally:
        boot.discard_initrd(workdir)
    t = m.timings()
    if args.json:
        print(
            json.dumps(
                {
                    "arch": arch.name,
                    "variant": variant.name,
                    "kernel": str(kernel.image),
                    "accel": prepared.accel.accel,
                    "accel_reason": prepared.accel.reason,
                    "qemu_argv": prepared.launch.argv(),
                    "workdir": str(workdir),
                    "timings": {
                        "ready": t.ready,
                        "agent": t.first_result,
                        "command_done": m.arrivals.get("exit"),
                        "total": t.total,
                    },
                    "exit_status": status,
                    "stdout": "".join(out["stdout"]),
                    "stderr": "".join(out["stderr"]),
                },
                indent=2,
            )
        )
    return status if status is not None else BOOT_FAILED


# --- run / classify --------------------------------------------------------------


def new_run_dir(cfg: config.LabConfig, label: str = "") -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run = cfg.results_dir / f"{stamp}{'-' + label if label else ''}-{secrets.token_hex(2)}"
    run.mkdir(parents=True)
    return run


def print_cell(res: results.CellResult, stream: TextIO = sys.stdout) -> None:
    expected = "|".join(res.expected) or "(no expectation declared)"
    word = {"expected": "as expected", "unexpected": "UNEXPECTED", "infra": "INFRASTRUCTURE ERROR"}[
        res.verdict
    ]
    print(f"{res.id}: observed {res.observed}, expected {expected} -> {word}", file=stream)
    print(f"  {res.detail}", file=stream)
    print(f"  rule: {res.rule}: {res.rule_text}", file=stream)
    if res.lines:
        print("  evidence:", file=stream)
        for ev in res.lines[:25]:
            where = f"L{ev.get('line_no')}" if ev.get("line_no") else "agent"
            print(f"    {where:>6} {ev.get('text', '')}", file=stream)
        if len(res.lines) > 25:
            print(f"    ... {len(res.lines) - 25} more in evidence.json", file=stream)
    print(f"  artefacts: {res.dir}", file=stream)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args)
    arch = cfg.arch(args.arch)
    variant = cfg.variant(args.variant) if args.variant else cfg.variants[0]
    tc = testcase.find(cfg.testcases_dir, args.testcase, CLASSES)
    if not tc.runs_on(arch.name):
        raise UserError(
            f"test case {tc.name} does not run on {arch.name} (arches: {', '.join(tc.arches)})"
        )
    the_cell = cell.Cell(arch, variant, tc)
    with Reporter() as reporter:
        kernel = _kernel_for(cfg, arch, variant, reporter)
        base = boot.base_image(cfg, arch, reporter.line)
    run_dir = Path(args.results) if args.results else new_run_dir(cfg, "run")
    res = runner.run_cell(
        cfg,
        the_cell,
        kernel,
        base,
        run_dir / the_cell.dirname,
        lambda m: print(f"lab: {m}", file=sys.stderr),
    )
    if args.json:
        print(
            json.dumps(
                {
                    **cache.read_json(res.dir / "cell.json"),
                    "evidence": cache.read_json(res.dir / "evidence.json"),
                },
                indent=2,
            )
        )
    else:
        print_cell(res)
        print(f"  reproducer: {cell.reproducer(cfg, the_cell)}")
    return res.exit_code


def _cell_facts(cell_dir: Path) -> classify.RunFacts:
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


def cmd_classify(args: argparse.Namespace) -> int:
    path = Path(args.log)
    facts = None
    if path.is_dir():
        if not os.path.lexists(path / "console.log"):
            raise UserError(f"{path}: neither a console log nor a cell directory (no console.log)")
        facts = _cell_facts(path)
        try:  # a cell directory may come from anywhere: nothing outside it is read
            raw = results.read_inside(path, path / "console.log", MAX_CONSOLE, whole=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"{path / 'console.log'}: {exc}") from None
        path = path / "console.log"
    else:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise UserError(f"{path}: no such console log") from None
    # Bytes, then decode: a console's CR CR LF must not turn into extra lines.
    text = raw.decode(errors="replace")
    result = classify.classify(text, facts)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    print(f"{path}: {result.outcome}: {result.detail}")
    print(f"  rule: {result.rule}: {result.rule_text}")
    for ev in result.evidence:
        where = f"L{ev.line_no}" if ev.line_no else "agent"
        print(f"  {where:<7} {ev.text}")
    return 0


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
        report.render(run_dir)
    code = results.exit_code(run.to_json(), records)
    if not quiet:
        print(report.text_summary(run_dir))
    return code


def _open_hosts(
    cfg: config.LabConfig,
    lab_hosts: Sequence[hosts.Host],
    run: results.RunMeta,
    log: Callable[[str], None],
) -> list[runner.Worker]:
    from lab import ssh  # fabric/paramiko load only when hosts are used

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
    from lab import ssh

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
    from lab import ssh

    cfg = _load(args)
    declared = _hosts(cfg)
    if not declared:
        raise UserError(f"{cfg.file}: no [[hosts]] declared (see docs/scaling.md)")
    chosen = hosts.select(declared, args.hosts, cfg.file) if args.hosts else declared
    answers: dict[str, list[ssh.CheckLine]] = {}

    def one(h: hosts.Host) -> None:
        answers[h.name] = ssh.check(cfg, h, upload=not args.no_upload)

    ssh.each_host(chosen, one)
    ok = True
    for h in chosen:
        arches = ", ".join(h.arches) if h.arches else "all"
        print(f"host {h.name} ({h.target}; capacity {h.capacity}; arches {arches})")
        for line in answers.get(h.name, [ssh.CheckLine("check", False, "no answer")]):
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


# --- reproduce ----------------------------------------------------------------------------


def cmd_reproduce(args: argparse.Namespace) -> int:
    cfg = _load(args)
    modes = failures.parse(cfg.extra.get("failure_mode"), cfg.file, CLASSES)
    if args.list or not args.id:
        for m in modes:
            print(f"{m.id:32} {m.who}: {m.testcase} on {', '.join(m.variants)}")
            print(f'{"":32} "{m.claim}"')
        return 0
    chosen = modes if args.id == ["all"] else [failures.find(modes, i, cfg.file) for i in args.id]
    tcs = {t.name: t for t in testcase.discover(cfg.testcases_dir, CLASSES)}
    cells: dict[str, matrix.Planned] = {}
    for m in chosen:
        if m.testcase not in tcs:
            raise LabError(f"failure mode {m.id}: unknown test case {m.testcase!r}")
        arches = args.arch or list(m.arches)
        # every era of the variants the claim names (issue 10)
        names = failures.variant_names(m, [(v.name, v.params) for v in cfg.variants])
        for c in matrix.plan(
            cfg,
            [tcs[m.testcase]],
            matrix.MatrixSpec(),
            names or list(m.variants),
            arches,
            [m.testcase],
        ):
            cells.setdefault(c.id, c)
    header = _run_header(
        cfg,
        list(cells.values()),
        {
            "variants": [],
            "arches": args.arch,
            "testcases": [],
            "repeat": 1,
            "shard": None,
            "failure_modes": [m.id for m in chosen],
        },
    )
    run_dir = results.new_run(cfg.results_dir, "reproduce", header)
    jobs = args.jobs or cfg.jobs or build.default_jobs(cfg)
    code = run_matrix(cfg, list(cells.values()), run_dir, jobs, quiet=True)
    records = {r.id: r for r in results.read_cells(run_dir)}
    answers = []
    for m in chosen:
        print(f"{m.id}: {m.who} <{m.lore_url}>")
        print(f'  claim: "{m.claim}"')
        print(f"  reproduced if: {' or '.join(m.reproduced)}")
        # one line per (era, arch), then each cell's answer and evidence under it
        groups: dict[tuple[str, str], list[matrix.Planned]] = {}
        for c in cells.values():
            v = c.cell.variant
            era, base = failures.era_of(v.name, v.params)
            if m.selects(c.cell.arch.name, v.name, c.cell.testcase.name, base):
                groups.setdefault((era, c.cell.arch.name), []).append(c)
        for (era, arch), group in groups.items():
            lines, got = [], []
            for c in group:
                rec = records.get(c.cell.id)
                if rec is None:
                    lines.append(f"    {c.cell.id}: not run")
                    continue
                ans = failures.answer(m, rec.observed)
                got.append(ans)
                answers.append(
                    {
                        "failure_mode": m.id,
                        "era": era,
                        "cell": c.cell.id,
                        "answer": ans,
                        "observed": rec.observed,
                        "detail": rec.data.get("detail"),
                    }
                )
                lines.append(
                    f"    {c.cell.id}: {ans.upper()}: observed {rec.observed} "
                    f"({rec.data.get('detail', '')})"
                )
                for ev in rec.evidence.get("evidence", [])[:4]:
                    lines.append(
                        f"      {'L' + str(ev['line_no']) if ev['line_no'] else 'agent':>6} "
                        f"{ev['text']}"
                    )
            print(f"  era {era or '-'} {arch}: {failures.summarise(got).upper()}")
            print("\n".join(lines))
    cache.write_json(run_dir / "reproduce.json", answers)
    print(f"run: {run_dir}")
    return code


# --- report / compare / merge --------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    cfg = _load(args)
    run_dir = results.resolve_run(cfg.results_dir, args.run)
    report.render(run_dir)
    print(report.text_summary(run_dir))
    return results.exit_code(results.load_run(run_dir), results.read_cells(run_dir))


def cmd_compare(args: argparse.Namespace) -> int:
    cfg = _load(args)
    a = results.resolve_run(cfg.results_dir, args.run_a)
    b = results.resolve_run(cfg.results_dir, args.run_b)
    changes = report.compare(a, b)
    for run_dir in (a, b):
        for u in results.scan_cells(run_dir)[1]:
            print(
                f"lab: warning: {u.dir}: unreadable cell ({u.reason}); compared as not run",
                file=sys.stderr,
            )
    print(report.format_compare(changes, a.name, b.name))
    return 1 if any(c.kind == "regression" for c in changes) else 0


def cmd_merge(args: argparse.Namespace) -> int:
    cfg = _load(args)
    runs = [results.resolve_run(cfg.results_dir, r) for r in args.runs]
    out = Path(args.output) if args.output else cfg.results_dir / results.new_run_id("merged")
    merged = report.merge(runs, out)
    print(report.text_summary(merged))
    return results.exit_code(results.load_run(merged), results.read_cells(merged))


# --- image ----------------------------------------------------------------------------


def cmd_image(args: argparse.Namespace) -> int:
    cfg = _load(args)
    recipe = boot.image_recipe(cfg)
    for arch in selection.arches(cfg, args.arch):
        img = image.build_base(
            recipe,
            arch.deb_arch,
            cfg.cache_dir,
            refresh=args.refresh,
            log=lambda m: print(f"lab: {m}", file=sys.stderr),
        )
        state = "cached" if img.cache_hit else f"built in {img.build_seconds:.1f}s"
        print(
            f"{arch.name}: {img.path} ({img.compressed_size / 1e6:.2f} MB, "
            f"{img.file_count} files, {state})"
        )
    return 0


# --- config show -------------------------------------------------------------------


def cmd_config_show(args: argparse.Namespace) -> int:
    cfg = _load(args)
    arch = cfg.arch(args.arch)
    variant = cfg.variant(args.variant) if args.variant else cfg.variants[0]
    with Reporter() as reporter:
        p = build.plan(cfg, arch, variant, 0, reporter.line)
        result = build.show_config(cfg, p, reporter)
    print(f"# lab config for {p.label} (key {p.key})")
    for frag in p.fragments:
        print(f"# --- rendered {frag.template}")
        print(frag.text.rstrip())
    print(f"# --- final .config vs base ({p.base}): {p.label}")
    for line in kconfig.diff(kconfig.parse_config(result.base), kconfig.parse_config(result.final)):
        print(line)
    return 0


# --- doctor / setup ------------------------------------------------------------------


def _try_load(args: argparse.Namespace) -> config.LabConfig | None:
    try:
        return _load(args)
    except LabError as exc:
        print(f"lab: warning: {exc} (checking generic prerequisites only)", file=sys.stderr)
        return None


def cmd_doctor(args: argparse.Namespace) -> int:
    results = doctor.checks(_try_load(args), tests=args.tests)
    width = max(len(c.name) for c in results)
    for c in results:
        print(f"{'ok ' if c.ok else 'MISSING'} {c.name:<{width}}  {c.detail}")
    missing = doctor.missing_packages(results)
    if missing:
        print(f"\nto install what is missing: sudo {doctor.apt_line(missing)}")
        print("or, as root: lab setup" + (" --tests" if args.tests else ""))
    unfixable = [c for c in results if not c.ok and not c.package]
    for c in unfixable:
        print(f"not a package (fix by hand): {c.name}: {c.detail}")
    if missing or unfixable:
        return 1
    print("\nall prerequisites present")
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    """Install exactly the packages doctor finds missing, then check again."""
    missing = doctor.missing_packages(doctor.checks(_try_load(args), tests=args.tests))
    if missing:
        print(f"installing: {' '.join(missing)}", file=sys.stderr)
        doctor.install(missing)
    still = [c for c in doctor.checks(_try_load(args), tests=args.tests) if not c.ok]
    if still:
        what = "; ".join(
            f"{c.name} ({c.package + ' installed but ' if c.package else ''}{c.detail})"
            for c in still
        )
        raise LabError(f"still missing after setup: {what}")
    print("all prerequisites present")
    return 0


# --- parser --------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lab", description="A QEMU test lab for Linux kernel patch variants."
    )
    parser.add_argument("--version", action="version", version=f"lab {__version__}")
    parser.add_argument(
        "--config",
        "-c",
        default=os.environ.get("LAB_CONFIG", "lab.toml"),
        help="the lab.toml to use (default: $LAB_CONFIG or ./lab.toml)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("build", help="build kernels (cached; only what changed is rebuilt)")
    b.add_argument(
        "--arch",
        "-a",
        action="append",
        default=[],
        help="arch name or glob, repeatable or comma-separated (default: all)",
    )
    b.add_argument(
        "--variant",
        "-V",
        action="append",
        default=[],
        help="variant name or glob (default: the first variant; --all: every one)",
    )
    b.add_argument("--all", action="store_true", help="every variant on every selected arch")
    b.add_argument("--jobs", "-j", type=int, default=0, help="make -j (default: CPU count)")
    b.add_argument("--force", action="store_true", help="rebuild even when cached")
    b.add_argument(
        "--refresh-source",
        action="store_true",
        help="re-resolve a git source's branch or tag to its current commit",
    )
    b.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    b.set_defaults(func=cmd_build)

    bt = sub.add_parser("boot", help="boot a kernel: interactive console, or --exec CMD")
    bt.add_argument("--arch", "-a", required=True)
    bt.add_argument("--variant", "-V", default="", help="default: the first variant")
    bt.add_argument(
        "--exec",
        "-e",
        metavar="CMD",
        default=None,
        help="run CMD in the guest, print its output, exit with its status",
    )
    bt.add_argument(
        "--timeout", type=float, default=600.0, help="seconds CMD may run (default 600)"
    )
    bt.add_argument("--append", default="", help="extra kernel command line")
    bt.add_argument("--memory", type=int, default=None, help="guest memory in MiB")
    bt.add_argument(
        "--json", action="store_true", help="print timings, accelerator and QEMU argv as JSON"
    )
    bt.set_defaults(func=cmd_boot)

    mx = sub.add_parser("matrix", help="run the variant x arch x test case matrix")
    mx.add_argument("--variant", "-V", action="append", default=[], help="glob, repeatable")
    mx.add_argument("--arch", "-a", action="append", default=[], help="glob, repeatable")
    mx.add_argument("--testcase", "-t", action="append", default=[], help="glob, repeatable")
    mx.add_argument("--jobs", "-j", type=int, default=0, help="parallel cells (default: CPUs)")
    mx.add_argument("--repeat", type=int, default=None, help="run each cell N times")
    mx.add_argument("--shard", default="", help="K/N: run the K-th of N deterministic shards")
    mx.add_argument("--resume", default="", metavar="RUN", help="run what RUN is missing")
    mx.add_argument(
        "--force-config",
        action="store_true",
        help="with --resume: go on although lab.toml changed since RUN started",
    )
    mx.add_argument("--results", default="", help="results directory (default: lab.toml's)")
    mx.add_argument(
        "--list",
        action="store_true",
        help="print the planned cells and their expectations; run nothing",
    )
    mx.add_argument(
        "--hosts",
        default="",
        metavar="NAME,...|all",
        help="also run cells on these SSH lab hosts ([[hosts]] in lab.toml)",
    )
    mx.set_defaults(func=cmd_matrix)

    hs = sub.add_parser("hosts", help="SSH lab hosts ([[hosts]] in lab.toml)")
    hsub = hs.add_subparsers(dest="hosts_command", required=True, metavar="SUBCOMMAND")
    hc = hsub.add_parser(
        "check", help="per host: reachable, python, lab bundle, QEMU, accelerator, disk"
    )
    hc.add_argument("--hosts", default="", metavar="NAME,...|all", help="default: all")
    hc.add_argument(
        "--no-upload",
        action="store_true",
        help="only report whether the lab bundle is there (default: upload it if missing)",
    )
    hc.set_defaults(func=cmd_hosts_check)

    rp = sub.add_parser("reproduce", help="replay failure modes claimed in review")
    rp.add_argument("id", nargs="*", help="failure mode ids, or 'all' (none: list them)")
    rp.add_argument("--arch", "-a", action="append", default=[], help="glob, repeatable")
    rp.add_argument("--jobs", "-j", type=int, default=0)
    rp.add_argument("--list", action="store_true", help="list the failure modes")
    rp.set_defaults(func=cmd_reproduce)

    rr = sub.add_parser("report", help="re-render a run's reports")
    rr.add_argument("run", help="run directory or run id")
    rr.set_defaults(func=cmd_report)
    cp = sub.add_parser("compare", help="cells whose outcome changed between two runs")
    cp.add_argument("run_a")
    cp.add_argument("run_b")
    cp.set_defaults(func=cmd_compare)
    mg = sub.add_parser("merge", help="merge shard runs into one run and report")
    mg.add_argument("runs", nargs="+")
    mg.add_argument("--output", "-o", default="", help="the merged run directory")
    mg.set_defaults(func=cmd_merge)

    r = sub.add_parser("run", help="run one test case on one (arch, variant): one cell")
    r.add_argument("testcase")
    r.add_argument("--arch", "-a", required=True)
    r.add_argument("--variant", "-V", default="", help="default: the first variant")
    r.add_argument(
        "--results",
        default="",
        help="the run directory to put the cell in (default: a new one under results_dir)",
    )
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_run)

    im = sub.add_parser("image", help="build (or show) the guest base image per arch")
    im.add_argument("--arch", "-a", action="append", default=[])
    im.add_argument(
        "--refresh", action="store_true", help="re-resolve Debian package versions and rebuild"
    )
    im.set_defaults(func=cmd_image)

    cl = sub.add_parser("classify", help="classify a saved serial console log offline")
    cl.add_argument("log", help="a console log, or a cell directory (then its records count)")
    cl.add_argument("--json", action="store_true")
    cl.set_defaults(func=cmd_classify)

    c = sub.add_parser("config", help="kernel configuration commands")
    csub = c.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    cs = csub.add_parser("show", help="rendered fragments and the final .config diff vs base")
    cs.add_argument("--arch", "-a", required=True)
    cs.add_argument("--variant", "-V", default="")
    cs.set_defaults(func=cmd_config_show)

    d = sub.add_parser("doctor", help="check host prerequisites")
    d.add_argument("--tests", action="store_true", help="also what the lab's own tests need")
    d.set_defaults(func=cmd_doctor)
    s = sub.add_parser("setup", help="install missing host prerequisites with apt-get (root)")
    s.add_argument("--tests", action="store_true", help="also what the lab's own tests need")
    s.set_defaults(func=cmd_setup)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    proc.install_signal_handlers()
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except BuildFailed as exc:
        print(f"lab: {printable(str(exc))}", file=sys.stderr)
        return 1
    except LabError as exc:
        print(f"lab: error: {printable(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        proc.kill_all()
        print("lab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except proc.Terminated as exc:
        proc.kill_all()
        print(f"lab: {exc}; stopped", file=sys.stderr)
        return 128 + exc.signum
