"""QEMU command lines, built as pure functions of immutable data.

The console is the first serial port on stdio (pexpect reads it). Structured
results travel apart from it on a virtio-serial port named `lab.result`, backed by
a host file, so kernel messages can never corrupt them. `-no-reboot` plus the
kernel's `panic=-1` turn both a finished guest (`reboot -f`) and a panic into a
QEMU exit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lab.config import ArchSpec

RESULT_PORT = "lab.result"


@dataclass(frozen=True)
class Launch:
    """Everything one QEMU run needs; `argv()` renders it."""

    arch: ArchSpec
    accel: str  # kvm | tcg
    kernel: Path
    initrd: Path
    cmdline: str
    result_file: Path
    memory_mib: int
    smp: int

    def argv(self) -> list[str]:
        q = self.arch.qemu
        args = [q.binary, *machine_args(self.arch, self.accel)]
        args += [
            "-m",
            str(self.memory_mib),
            "-smp",
            str(self.smp),
            *CONSOLE_ARGS,
            "-device",
            "virtio-serial-device",
            "-chardev",
            f"file,id=result,path={_option_value(self.result_file)}",
            "-device",
            f"virtserialport,chardev=result,name={RESULT_PORT}",
            "-kernel",
            str(self.kernel),
            "-initrd",
            str(self.initrd),
            "-append",
            self.cmdline,
            *q.extra_args,
        ]
        return args


# No default devices, no window; the console is the first serial port on stdio; a guest
# reboot ends QEMU. signal=off: a Ctrl-C typed at `lab boot` reaches the guest, not QEMU.
CONSOLE_ARGS = (
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-no-reboot",
    "-chardev",
    "stdio,id=con,signal=off",
    "-serial",
    "chardev:con",
)


def machine_args(arch: ArchSpec, accel: str) -> list[str]:
    """-M, -accel and -cpu for the arch (shared with exported LAVA device dictionaries)."""
    q = arch.qemu
    args = ["-M", q.machine, "-accel", accel]
    if q.cpu:
        args += ["-cpu", "host" if accel == "kvm" and q.cpu == "max" else q.cpu]
    return args


def _option_value(value: object) -> str:
    """QEMU splits option strings at ',' and reads ',,' as a literal comma: a results or
    cache path holding a comma must not end the value or inject another option."""
    return str(value).replace(",", ",,")


def kernel_cmdline(arch: ArchSpec, *extra: str) -> str:
    """console= first, then panic=-1 (a panic ends QEMU at once), then additions."""
    parts = [f"console={arch.qemu.console}", "panic=-1", arch.cmdline, *extra]
    return " ".join(" ".join(parts).split())
