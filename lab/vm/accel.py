"""Choosing the accelerator: KVM only when a probe proves it boots a guest here.

On some hosts /dev/kvm exists but guests hang (paravirtual-only KVM) or QEMU aborts.
The probe boots the real kernel and image under KVM with a short deadline and
accepts KVM only if the ready marker appears. The answer is remembered per host,
host kernel, QEMU version and guest arch.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from lab import cache
from lab.config import ArchSpec
from lab.errors import LabError
from lab.vm.qemu import Launch

# `uname -m` of hosts that can run each guest arch under KVM.
_NATIVE = {"x86_64": ("x86_64",), "arm64": ("aarch64", "arm64")}


@dataclass(frozen=True)
class Choice:
    accel: str  # kvm | tcg
    reason: str


@functools.lru_cache(maxsize=8)
def qemu_version(binary: str) -> str:
    """`qemu --version`, asked once per process (every boot computes the probe key)."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.splitlines()[0].strip() if out else ""


def _kvm_usable_device() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def probe_key(arch: ArchSpec) -> str:
    return cache.digest_json(
        {
            "host": platform.node(),
            "host_kernel": platform.release(),
            "qemu": qemu_version(arch.qemu.binary),
            "machine": arch.qemu.machine,
            "arch": arch.name,
        }
    )[:16]


def static_choice(arch: ArchSpec) -> Choice | None:
    """The answer when no probe is needed (or possible)."""
    requested = arch.qemu.accel
    if requested == "tcg":
        return Choice("tcg", "requested in lab.toml")
    if requested == "kvm":
        return Choice("kvm", "requested in lab.toml")
    if platform.machine() not in _NATIVE.get(arch.name, ()):
        return Choice("tcg", f"guest {arch.name} on a {platform.machine()} host")
    if not _kvm_usable_device():
        return Choice("tcg", "/dev/kvm missing or not accessible")
    return None


def choose(
    arch: ArchSpec,
    cache_root: Path,
    launch: Launch,
    workdir: Path,
    timeout: float,
    boot_id: str,
    log: Callable[[str], None] = lambda _m: None,
) -> Choice:
    """KVM if proven to boot a guest on this host, else TCG; remembered per host."""
    fixed = static_choice(arch)
    if fixed is not None:
        return fixed
    memo = cache_root / "probes" / f"accel-{arch.name}-{probe_key(arch)}.json"
    try:
        known = cache.read_json(memo)
        return Choice(known["accel"], known["reason"] + " (remembered)")
    except (FileNotFoundError, ValueError, KeyError):
        pass
    log(f"probing KVM for {arch.name} (once per host and QEMU version)")
    choice = _probe(launch, workdir, timeout, boot_id)
    log(choice.reason)
    cache.write_json(memo, {"accel": choice.accel, "reason": choice.reason})
    return choice


def _probe(launch: Launch, workdir: Path, timeout: float, boot_id: str) -> Choice:
    """Boot `launch` (its initrd holds `boot_id`, which the ready marker must carry)."""
    from lab.vm.machine import BootError, Machine  # the probe is the one place that boots

    probe = replace(launch, accel="kvm", result_file=workdir / "kvm-probe.result")
    try:
        with Machine(probe, workdir / "kvm-probe", boot_id, timeout, 1.0) as m:
            seconds = m.wait_ready()
    except BootError as exc:
        return Choice("tcg", f"KVM probe failed ({exc.kind}: {exc}); using TCG")
    except LabError as exc:
        return Choice("tcg", f"KVM probe failed ({exc}); using TCG")
    return Choice("kvm", f"KVM probe booted a guest in {seconds:.1f}s")
