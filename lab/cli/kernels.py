"""`lab build` and `lab boot`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lab import build
from lab.build import source
from lab.cli.common import BuildFailed, _load
from lab.cli.options import the_variant
from lab.errors import LabError
from lab.progress import Reporter
from lab.run import orchestrate, selection
from lab.vm import boot, machine

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
DEADLINE = 124  # like timeout(1): a deadline expired (boot hang, command overran --timeout)


def cmd_boot(args: argparse.Namespace) -> int:
    cfg = _load(args)
    arch = cfg.arch(args.arch)
    variant = the_variant(cfg, args.variant)
    with Reporter() as reporter:
        kernel = orchestrate.one_kernel(cfg, arch, variant, reporter, args.kernel)
        base = boot.base_image(cfg, arch, reporter.line)
    job: dict[str, object] = (
        {"mode": "shell"} if args.exec is None else {"mode": "exec", "command": args.exec}
    )
    req = boot.request(cfg, arch, variant, kernel, base, job, args.append, args.memory)
    workdir = boot.new_workdir(cfg, f"{arch.name}-{variant.name}")
    prepared = boot.launch(req, workdir, lambda m: print(f"lab: {m}", file=sys.stderr))
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

    timed_out = False
    with boot.started(prepared, workdir):
        try:
            m.wait_ready()
        except machine.BootError as exc:
            print(f"lab: boot failed: {exc}", file=sys.stderr)
            _console(exc.lines, workdir)
            return DEADLINE if exc.kind == "hang" else BOOT_FAILED
        if args.exec is None:
            print(
                f"lab: {arch.name}/{variant.name} ready ({prepared.accel.accel}); Ctrl-] quits",
                file=sys.stderr,
            )
            m.interact()
            status = 0
        else:
            status, why = boot.exec_command(m, args.timeout, on_record)
            if status is None:
                print(
                    f"lab: command {why}; console log: {workdir / 'console.log'}", file=sys.stderr
                )
                for line in m.console.tail(10) if m.console else []:
                    print(f"  | {line}", file=sys.stderr)
                timed_out = why.startswith(boot.TIMED_OUT)
    if args.json:
        t = m.timings()
        timings = {
            "ready": t.ready,
            "agent": t.first_result,
            "command_done": m.arrivals.get("exit"),
            "total": t.total,
        }
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
                    "timings": timings,
                    "exit_status": status,
                    "stdout": "".join(out["stdout"]),
                    "stderr": "".join(out["stderr"]),
                },
                indent=2,
            )
        )
    if status is None:
        return DEADLINE if timed_out else BOOT_FAILED
    return status


def _console(lines: list[str], workdir: Path) -> None:
    for line in lines:
        print(f"  | {line}", file=sys.stderr)
    print(f"lab: console log: {workdir / 'console.log'}", file=sys.stderr)
