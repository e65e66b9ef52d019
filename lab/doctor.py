"""Host prerequisites: what is present, what is missing, the apt-get line that fixes it."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lab.config import LabConfig
from lab.errors import LabError


@dataclass(frozen=True)
class Check:
    name: str
    package: str  # Debian package that provides it
    ok: bool
    detail: str


def _tool(name: str, package: str) -> Check:
    path = shutil.which(name)
    return Check(name, package, path is not None, path or "not found")


def _file(label: str, path: str, package: str) -> Check:
    ok = Path(path).exists()
    return Check(label, package, ok, path if ok else f"{path} missing")


def _any_tool(label: str, names: tuple[str, ...], package: str) -> Check:
    found = next((p for p in map(shutil.which, names) if p), None)
    return Check(label, package, found is not None, found or "not found")


def checks(cfg: LabConfig | None, tests: bool = False) -> list[Check]:
    out = [
        _tool("make", "make"),
        _tool("gcc", "gcc"),
        _tool("flex", "flex"),
        _tool("bison", "bison"),
        _tool("bc", "bc"),
        _tool("patch", "patch"),
        _tool("cpio", "cpio"),
        _tool("xz", "xz-utils"),
        _tool("apt-get", "apt"),
        _file("libelf-dev", "/usr/include/gelf.h", "libelf-dev"),
        _file("libssl-dev", "/usr/include/openssl/ssl.h", "libssl-dev"),
        _file(
            "debian-archive-keyring",
            "/usr/share/keyrings/debian-archive-keyring.gpg",
            "debian-archive-keyring",
        ),
    ]
    if tests:
        # The lab's own tests: loopback sshd for the hosts tier, Chromium for the report.
        out += [
            _any_tool("chromium", ("chromium", "chromium-browser"), "chromium"),
            _file("sshd", "/usr/sbin/sshd", "openssh-server"),
            _tool("ssh-keygen", "openssh-client"),
        ]
    if cfg is None:
        return out
    for arch in cfg.arches.values():
        if arch.cross_compile:
            out.append(
                _tool(
                    f"{arch.cross_compile}gcc", arch.compiler_package or f"{arch.cross_compile}gcc"
                )
            )
        out.append(_tool(arch.qemu.binary, arch.qemu.package or arch.qemu.binary))
    if cfg.source.kind == "debian":
        out.append(_file("kernel source", cfg.source.path, cfg.source.package))
    elif cfg.source.kind in ("tarball", "tree"):
        p = Path(cfg.source.path).expanduser()
        out.append(Check("kernel source", "", p.exists(), str(p)))
    else:
        out.append(_tool("git", "git"))
    return out


def missing_packages(results: list[Check]) -> list[str]:
    return sorted({c.package for c in results if not c.ok and c.package})


def apt_line(packages: list[str]) -> str:
    return "apt-get install -y --no-install-recommends " + " ".join(packages)


def install(packages: list[str]) -> None:
    """Install packages with apt-get; only as root (never sudo behind the user's back)."""
    if not packages:
        return
    if os.geteuid() != 0:
        raise LabError(f"not root; run: sudo {apt_line(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-q"], apt_line(packages).split()):
        proc = subprocess.run(argv, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise LabError(f"{' '.join(argv[:2])} failed: {tail[0]}")
