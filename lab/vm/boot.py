"""Booting a built kernel with the guest image: image + overlay -> QEMU -> ready.

Glue between the build cache, the image cache and `Machine`. The per-run overlay
carries the agent, the job and (later) test cases, so editing them never rebuilds
the base image.
"""

from __future__ import annotations

import datetime
import json
import secrets
import shutil
from collections.abc import Callable, Mapping
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
class BootRequest:
    arch: ArchSpec
    variant: Variant
    kernel: Kernel
    base: image.BaseImage
    job: Mapping[str, Any]
    extra_cmdline: str = ""
    extra_files: Files = field(default_factory=dict)
    memory_mib: int | None = None
    smp: int | None = None


def cmdline_for(cfg: LabConfig, req: BootRequest) -> str:
    return kernel_cmdline(req.arch, cfg.boot.cmdline, req.variant.cmdline, req.extra_cmdline)


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


def prepare(
    cfg: LabConfig, req: BootRequest, workdir: Path, log: Callable[[str], None] = lambda _m: None
) -> Prepared:
    """Write the initrd, pick the accelerator and return a Machine ready to start."""
    boot_id = secrets.token_hex(8)
    overlay = image.build_overlay(overlay_files(req.job, boot_id, req.extra_files))
    return launch(
        req.arch,
        req.kernel.image,
        req.base.path,
        overlay,
        boot_id,
        cmdline_for(cfg, req),
        req.memory_mib or req.arch.qemu.memory_mib,
        req.smp or req.arch.qemu.smp,
        workdir,
        cfg.cache_dir,
        cfg.boot,
        log,
    )


def launch(
    arch: ArchSpec,
    kernel_image: Path,
    base_image: Path,
    overlay: bytes,
    boot_id: str,
    cmdline: str,
    memory_mib: int,
    smp: int,
    workdir: Path,
    cache_root: Path,
    timeouts: BootSpec,
    log: Callable[[str], None] = lambda _m: None,
) -> Prepared:
    """The same from plain pieces: what a remote lab host gets (no lab.toml, no builds)."""
    initrd = image.write_initrd(base_image, overlay, workdir / "initrd.cpio.gz")
    plan = Launch(
        arch=arch,
        accel="tcg",
        kernel=kernel_image,
        initrd=initrd,
        cmdline=cmdline,
        result_file=workdir / "result.jsonl",
        memory_mib=memory_mib,
        smp=smp,
    )
    choice = accel.static_choice(arch)
    if choice is None:
        choice = accel.choose(
            arch, cache_root, plan, workdir, timeouts.kvm_probe_timeout, boot_id, log
        )
    plan = replace(plan, accel=choice.accel)
    machine = Machine(plan, workdir, boot_id, timeouts.ready_timeout, timeouts.shutdown_timeout)
    return Prepared(machine, choice, plan)


def discard_initrd(workdir: Path) -> None:
    """The initrd is a copy of cached data: drop it, keep the logs."""
    for name in ("initrd.cpio.gz", "kvm-probe.result"):
        (workdir / name).unlink(missing_ok=True)
    shutil.rmtree(workdir / "kvm-probe", ignore_errors=True)
