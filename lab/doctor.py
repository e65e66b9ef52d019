"""Host prerequisites: what is present, what is missing, the apt-get line that fixes it.

The rows come from lab/prereqs.py, the table the build, image, selftest and boot code take
their programs from; this module only probes them and installs the missing packages."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from lab import image, prereqs
from lab.config import LabConfig
from lab.errors import LabError


@dataclass(frozen=True)
class Check:
    name: str
    package: str  # Debian package that provides it ("" = only the user can fix it)
    ok: bool
    detail: str


def checks(
    cfg: LabConfig | None, tests: bool = False, keyrings: tuple[str, ...] | None = None
) -> list[Check]:
    out = []
    if keyrings is None:
        keyrings, problem = image_keyrings(cfg)
        if problem:
            out.append(Check("guest image apt sources", "", False, problem))
    for need in prereqs.for_config(cfg, keyrings, tests):
        where = need.locate()
        if where is not None:
            detail = where
        else:
            detail = f"{need.path} missing" if need.path else "not found"
            detail += f" ({need.why})"
        out.append(Check(need.name, need.package, where is not None, detail))
    return out


def image_keyrings(cfg: LabConfig | None) -> tuple[tuple[str, ...], str]:
    """The keyrings the guest image's apt sources are verified with (the configured ones, or
    those the host's apt sources name), and what is wrong with those sources ("" if nothing)."""
    if cfg is None:
        return (prereqs.DEBIAN_KEYRING,), ""
    try:
        recipe = image.recipe_for(cfg.image, cfg.images_dir)
    except LabError as exc:
        return (prereqs.DEBIAN_KEYRING,), str(exc)
    return image.recipe_keyrings(recipe), ""


def missing_packages(results: list[Check]) -> list[str]:
    return sorted({c.package for c in results if not c.ok and c.package})


apt_line = prereqs.apt_line


def install(packages: list[str]) -> None:
    """Install packages with apt-get; only as root (never sudo behind the user's back)."""
    if not packages:
        return
    if os.geteuid() != 0:
        raise LabError(f"not root; run: sudo {apt_line(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = prereqs.program("apt-get")
    for argv in ([apt, "update", "-q"], [apt, *apt_line(packages).split()[1:]]):
        proc = subprocess.run(argv, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise LabError(f"{' '.join(argv[:2])} failed: {tail[0]}")
