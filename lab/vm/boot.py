"""Booting a built kernel with the guest image: image + overlay -> QEMU -> ready.

Glue between the build cache, the image cache and `Machine`. The per-run overlay
carries the agent, the job and (later) test cases, so editing them never rebuilds
the base image.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from lab import image
from lab.build import Kernel
from lab.config import ArchSpec, BootSpec, LabConfig, Variant
from lab.vm import accel
from lab.vm.machine import Machine
from lab.vm.qemu import Launch, kernel_cmdline

Files = Mapping[str, tuple[bytes, int]]


def image_recipe(cfg: LabConfig) -> image.ImageRecipe:
    return image.recipe_for(cfg.image, cfg.images_dir)


def base_image(cfg: LabConfig, arch: ArchSpec, log: Callable[[str], None]) -> image.BaseImage:
    return image.build_base(image_recipe(cfg), arch.deb_arch, cfg.cache_dir, log=log)


def agent_source() -> bytes:
    return resources.files("lab.guest").joinpath("agent.py").read_bytes()


def overlay_files(
    job: Mapping[str, Any], boot_id: str, extra: Files | None = None
) -> dict[str, tuple[bytes, int]]:
    files: dict[str, tuple[bytes, int]] = {
        "lab/agent.py": (agent_source(), 0o644),
        "lab/job.json": (json.dumps({**job, "boot_id": boot_id}, indent=1).encode(), 0o644),
        "lab/boot-id": (boot_id.encode() + b"\n", 0o644),
    }
    files.update(extra or {})
    return files


@dataclass(frozen=True)
class LaunchRequest:
    """Everything one boot needs, from plain pieces (no lab.toml, no builds): what
    `lab boot` (request()), a cell (CellJob.launch_request) and a lab host's cell all
    hand to launch()."""

    arch: ArchSpec
    kernel_image: Path
    base_image: Path
    agent_job: Mapping[str, Any]  # lab/job.json: what the agent does (shell, exec, a test)
    cmdline: str
    memory_mib: int
    smp: int
    timeouts: BootSpec
    cache_root: Path  # where the KVM probe's answer is cached
    files: Files = field(default_factory=dict)  # more overlay files (test case, binaries)
    boot_id: str = ""  # "" = a fresh random one


def cmdline_for(cfg: LabConfig, arch: ArchSpec, variant: Variant, extra: str = "") -> str:
    return kernel_cmdline(arch, cfg.boot.cmdline, variant.cmdline, extra)


def request(
    cfg: LabConfig,
    arch: ArchSpec,
    variant: Variant,
    kernel: Kernel,
    base: image.BaseImage,
    agent_job: Mapping[str, Any],
    extra_cmdline: str = "",
    memory_mib: int | None = None,
) -> LaunchRequest:
    """The launch of `lab boot`: a kernel and base image from the caches, lab.toml's
    command line and sizes (memory overridable)."""
    return LaunchRequest(
        arch=arch,
        kernel_image=kernel.image,
        base_image=base.path,
        agent_job=agent_job,
        cmdline=cmdline_for(cfg, arch, variant, extra_cmdline),
        memory_mib=memory_mib or arch.qemu.memory_mib,
        smp=arch.qemu.smp,
        timeouts=cfg.boot,
        cache_root=cfg.cache_dir,
    )


def new_workdir(cfg: LabConfig, label: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    d = cfg.cache_dir / "boots" / f"{stamp}-{label.replace('/', '-')}-{secrets.token_hex(3)}"
    d.mkdir(parents=True)
    return d


@dataclass(frozen=True)
class Prepared:
    machine: Machine
    accel: accel.Choice
    launch: Launch


def launch(
    req: LaunchRequest, workdir: Path, log: Callable[[str], None] = lambda _m: None
) -> Prepared:
    """Write the overlay and initrd, pick the accelerator and return a Machine ready to
    start (enter it with started())."""
    boot_id = req.boot_id or secrets.token_hex(8)
    overlay = image.build_overlay(overlay_files(req.agent_job, boot_id, req.files))
    initrd = image.write_initrd(req.base_image, overlay, workdir / "initrd.cpio.gz")
    plan = Launch(
        arch=req.arch,
        accel="tcg",
        kernel=req.kernel_image,
        initrd=initrd,
        cmdline=req.cmdline,
        result_file=workdir / "result.jsonl",
        memory_mib=req.memory_mib,
        smp=req.smp,
    )
    choice = accel.static_choice(req.arch)
    if choice is None:
        choice = accel.choose(
            req.arch, req.cache_root, plan, workdir, req.timeouts.kvm_probe_timeout, boot_id, log
        )
    plan = replace(plan, accel=choice.accel)
    t = req.timeouts
    machine = Machine(plan, workdir, boot_id, t.ready_timeout, t.shutdown_timeout)
    return Prepared(machine, choice, plan)


@contextlib.contextmanager
def started(prepared: Prepared, workdir: Path) -> Iterator[Machine]:
    """The guest running; on the way out QEMU is stopped and the initrd copy dropped
    (the logs stay), however the caller leaves."""
    try:
        with prepared.machine as m:
            yield m
    finally:
        discard_initrd(workdir)


TIMED_OUT = "did not finish within"  # exec_command's why when its deadline expired


def exec_command(
    m: Machine, timeout: float, on_record: Callable[[dict[str, Any]], None]
) -> tuple[int | None, str]:
    """Follow `lab boot --exec`'s command in a ready guest: its exit status and "", or None
    and why it did not finish. The guest is let to power off after the command."""
    how = m.follow(lambda r: r.get("type") == "exit", timeout, on_record)
    exit_rec = m.results.first("exit")
    if exit_rec is not None and isinstance(exit_rec.get("status"), int):
        m.follow(lambda r: r.get("type") == "done", 5.0, on_record)
        m.wait_exit()
        return int(exit_rec["status"]), ""
    why = {
        "timeout": f"{TIMED_OUT} {timeout:.0f}s",
        "exited": "the guest stopped before the command finished",
    }.get(how, "sent an exit record without a status")  # the guest is untrusted
    return None, why


def discard_initrd(workdir: Path) -> None:
    """The initrd is a copy of cached data: drop it, keep the logs."""
    for name in ("initrd.cpio.gz", "kvm-probe.result"):
        (workdir / name).unlink(missing_ok=True)
    shutil.rmtree(workdir / "kvm-probe", ignore_errors=True)
