"""The compiler an arch builds with: present or not, and its exact version."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from lab import prereqs
from lab.config import ArchSpec


@dataclass(frozen=True)
class Toolchain:
    gcc: str  # path
    gcc_version: str  # first line of `gcc --version`
    ld_version: str

    def describe(self) -> dict[str, str]:
        return {"gcc": self.gcc, "gcc_version": self.gcc_version, "ld_version": self.ld_version}


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    except OSError:
        return ""
    return out.splitlines()[0].strip() if out else ""


def detect(arch: ArchSpec) -> Toolchain:
    """Find the arch's compiler or fail naming it and the package that provides it."""
    cc, ld = prereqs.compiler(arch), prereqs.linker(arch)
    prereqs.require((cc, ld), f"build for {arch.name}")
    gcc = cc.locate()
    assert gcc is not None  # require() just found it
    return Toolchain(
        gcc=gcc,
        gcc_version=_first_line([gcc, "--version"]),
        ld_version=_first_line([ld.name, "--version"]),
    )
