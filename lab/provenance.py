"""Where a result came from, recorded in run.json and every cell.json.

A result quoted on a list must be traceable to the code that produced it: the lab's
own source (version, git commit, whether the work tree had uncommitted changes), the
lab.toml, the test case and the guest-side files (agent, labguest), and the QEMU that
ran the guest. Kernel identity (key, image and config sha256, prebuilt origin) is
already in cell.json's `kernel`; the accelerator and host in `accel` and `host`.

Git and QEMU are asked once per process, bounded in time; when either is missing or
does not answer, the field is null rather than the run failing.
"""

from __future__ import annotations

import functools
import hashlib
import platform
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from lab import __version__, cache

ASK_TIMEOUT = 5.0  # seconds for `git` and `qemu --version`
ROOT = Path(__file__).resolve().parent.parent  # the checkout the lab runs from, if any


def _ask(argv: list[str]) -> str | None:
    """stdout of a short query, or None when it fails or does not answer in time."""
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=ASK_TIMEOUT, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


@functools.cache
def lab_source() -> dict[str, Any]:
    """{"version", "commit", "dirty", "describe"}: commit and dirty are null when the
    lab is not running from a git checkout (an installed wheel, a lab host's bundle)."""
    out: dict[str, Any] = {
        "version": __version__,
        "commit": None,
        "dirty": None,
        "describe": __version__,
    }
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        return out
    head = _ask([git, "-C", str(ROOT), "rev-parse", "--verify", "HEAD"])
    # --no-optional-locks: status must not take .git/index.lock (concurrent lab runs).
    status = _ask([git, "--no-optional-locks", "-C", str(ROOT), "status", "--porcelain", "-uno"])
    if head is None or status is None:
        return out
    commit = head.strip()
    dirty = bool(status.strip())
    out.update(
        commit=commit,
        dirty=dirty,
        describe=f"{__version__}+g{commit[:12]}{'.dirty' if dirty else ''}",
    )
    return out


@functools.cache
def qemu_version(binary: str) -> str | None:
    """The first line of `binary --version` ("QEMU emulator version 7.2.x ...")."""
    text = _ask([binary, "--version"])
    return text.splitlines()[0].strip()[:200] if text and text.strip() else None


def where_run(qemu_binary: str) -> dict[str, Any]:
    """cell.json fields of the machine that ran the guest (the controller or a lab host)."""
    return {"host_arch": platform.machine(), "qemu_version": qemu_version(qemu_binary)}


def guest_digests() -> dict[str, str]:
    """sha256 of the guest-side files every cell's overlay carries."""
    lab_guest = resources.files("lab.guest")
    return {
        name: hashlib.sha256(lab_guest.joinpath(name).read_bytes()).hexdigest()
        for name in ("agent.py", "labguest.py")
    }


def files_digests(files: Mapping[str, tuple[bytes, int]]) -> dict[str, str]:
    """sha256 per overlay path (test case, labguest, kselftest binaries)."""
    return {path: hashlib.sha256(data).hexdigest() for path, (data, _mode) in sorted(files.items())}


def for_cell(config_file: Path, testcase_file: Path) -> dict[str, Any]:
    """cell.json's `provenance`, known before the cell runs."""
    return {
        "lab": lab_source(),
        "config_sha256": cache.file_digest(config_file),
        "testcase_sha256": cache.file_digest(testcase_file),
        "guest": guest_digests(),
    }


def for_run(config_file: Path, testcases: Iterable[tuple[str, Path]]) -> dict[str, Any]:
    """run.json's `provenance`: the lab, lab.toml and each planned test case's file."""
    return {
        "lab": lab_source(),
        "config_sha256": cache.file_digest(config_file),
        "testcases": {name: cache.file_digest(path) for name, path in sorted(set(testcases))},
        "guest": guest_digests(),
    }
