"""Shared fixtures. The `real` tier builds kernels and boots QEMU; it shares one
cache (LAB_CACHE_DIR, default ~/.cache/lab) so each kernel is built once per run."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def mini_lab(tmp_path: Path) -> Path:
    """A small lab.toml with its own kernels/ dir, for loader and CLI error tests."""
    (tmp_path / "kernels" / "config").mkdir(parents=True)
    (tmp_path / "kernels" / "patches").mkdir()
    (tmp_path / "kernels" / "config" / "base.config.j2").write_text("CONFIG_PRINTK=y\n")
    (tmp_path / "kernels" / "config" / "knob.config.j2").write_text(
        "{% if knob %}CONFIG_FOO=y{% else %}# CONFIG_FOO is not set{% endif %}\n"
    )
    (tmp_path / "lab.toml").write_text(
        textwrap.dedent("""\
        [lab]
        cache_dir = "cache"
        [source]
        kind = "tarball"
        path = "linux.tar.xz"
        [build]
        configs = ["base.config.j2"]
        [arch.x86_64]
        make_arch = "x86_64"
        target = "bzImage"
        image = "arch/x86/boot/bzImage"
        deb_arch = "amd64"
        [arch.x86_64.qemu]
        binary = "qemu-system-x86_64"
        machine = "microvm"
        console = "ttyS0"
        [variants.demo]
        configs = ["knob.config.j2"]
        [variants.demo.axes]
        knob = [false, true]
        """)
    )
    return tmp_path


def real_cache_dir() -> Path:
    return Path(os.environ.get("LAB_CACHE_DIR") or Path.home() / ".cache" / "lab")


@pytest.fixture(scope="session")
def have_tools() -> None:
    for tool in ("make", "gcc", "aarch64-linux-gnu-gcc"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} missing: run ./labw setup (the real tier needs it)")
