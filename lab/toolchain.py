"""The compiler an arch builds with: present or not, and its exact version."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from lab.config import ArchSpec
from lab.errors import UserError


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
    gcc_name = f"{arch.cross_compile}gcc"
    gcc = shutil.which(gcc_name)
    if gcc is None:
        package = arch.compiler_package or gcc_name
        raise UserError(
            f"{gcc_name} not found (needed for {arch.name}); "
            f"install it with: sudo apt-get install {package}"
        )
    return Toolchain(
        gcc=gcc,
        gcc_version=_first_line([gcc, "--version"]),
        ld_version=_first_line([f"{arch.cross_compile}ld", "--version"]),
    )
