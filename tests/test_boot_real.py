"""Real boots in QEMU (TCG here) of real kernels on both arches. Slow tier."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from realtools import REPO, alive, children, cmdline, lab, qemu_processes

pytestmark = pytest.mark.real

ARCHES = [("x86_64", "x86_64"), ("arm64", "aarch64")]


@pytest.mark.parametrize(("arch", "machine"), ARCHES)
def test_exec_prints_output_and_returns_status(arch: str, machine: str) -> None:
    before = set(qemu_processes())
    p = lab("boot", "--arch", arch, "--exec", 'uname -m; python3 -c "print(6*7)"')
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [machine, "42"]
    failing = lab("boot", "--arch", arch, "--exec", "echo out; echo err >&2; exit 7")
    assert failing.returncode == 7, failing.stderr
    assert failing.stdout == "out\n" and "err" in failing.stderr
    assert set(qemu_processes()) <= before


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_json_reports_timings_accel_and_argv(arch: str) -> None:
    import json

    p = lab("boot", "--arch", arch, "--exec", "true", "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["accel"] in ("tcg", "kvm") and info["accel_reason"]
    assert info["qemu_argv"][0].startswith("qemu-system-")
    t = info["timings"]
    assert 0 < t["ready"] < t["command_done"] <= t["total"]
    assert info["exit_status"] == 0


def test_panic_at_boot_is_reported_with_its_line() -> None:
    before = set(qemu_processes())
    t0 = time.monotonic()
    p = lab("boot", "--arch", "x86_64", "--append", "rdinit=/nonexistent", "--exec", "true")
    assert p.returncode == 125
    assert (
        "boot failed: kernel panic during boot: Kernel panic - not syncing: VFS: Unable to "
        "mount root fs" in p.stderr
    )
    assert time.monotonic() - t0 < 60  # at once, not after the boot deadline
    assert set(qemu_processes()) <= before


def test_a_command_past_its_timeout_exits_124() -> None:
    before = set(qemu_processes())
    p = lab("boot", "--arch", "x86_64", "--exec", "sleep 600", "--timeout", "5")
    assert p.returncode == 124, p.stderr
    assert "did not finish within 5s" in p.stderr
    assert set(qemu_processes()) <= before


def _lab_toml_with(tmp_path: Path, old: str, new: str) -> Path:
    text = (REPO / "lab.toml").read_text()
    assert old in text
    text = text.replace(old, new)
    text = text.replace(
        "[lab]\n",
        f'[lab]\nkernels_dir = "{REPO}/kernels"\n'
        f'testcases_dir = "{REPO}/testcases"\n'
        f'images_dir = "{REPO}/images"\n',
        1,
    )
    f = tmp_path / "lab.toml"
    f.write_text(text)
    return f


def test_init_that_never_prints_the_marker_is_a_hang(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "init").write_text("#!/bin/busybox sh\n/bin/busybox sleep 100000\n")
    cfg = _lab_toml_with(tmp_path, "ready_timeout = 60", "ready_timeout = 10")
    cfg.write_text(
        cfg.read_text().replace(f'images_dir = "{REPO}/images"', f'images_dir = "{images}"')
    )
    before = set(qemu_processes())
    p = lab("boot", "--arch", "x86_64", "--exec", "true", config=cfg)
    assert p.returncode == 124  # a deadline, as timeout(1) says it
    assert "no ready marker within 10s (boot hang)" in p.stderr
    assert set(qemu_processes()) <= before


def test_missing_qemu_binary_names_the_package(tmp_path: Path) -> None:
    cfg = _lab_toml_with(tmp_path, 'binary = "qemu-system-x86_64"', 'binary = "qemu-system-nosuch"')
    p = lab("boot", "--arch", "x86_64", "--exec", "true", config=cfg)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1] == (
        "lab: error: qemu-system-nosuch not found (needed to boot x86_64); install with: "
        "sudo apt-get install -y --no-install-recommends qemu-system-x86"
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_leave_no_qemu(sig: signal.Signals) -> None:
    argv = [
        sys.executable,
        "-m",
        "lab",
        "--config",
        str(REPO / "lab.toml"),
        "boot",
        "--arch",
        "x86_64",
        "--exec",
        "sleep 600",
    ]
    p = subprocess.Popen(
        argv,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        qemu = None
        deadline = time.monotonic() + 120
        while qemu is None and time.monotonic() < deadline:
            # The guest's QEMU (it has -kernel), not a `qemu-system-* --version` the lab
            # asks for its probe key and provenance, which exits at once.
            qemu = next(
                (c for c in children(p.pid) if re.search(r"qemu-system\S*\s.*-kernel", cmdline(c))),
                None,
            )
            time.sleep(0.2)
        assert qemu is not None, "lab never started QEMU"
        time.sleep(4)  # let the guest boot into `sleep 600`
        assert alive(qemu)
        os.kill(p.pid, sig)
        p.wait(timeout=30)
        assert not alive(qemu), f"QEMU {qemu} survived {sig.name}"
        assert p.returncode != 0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.communicate()


def test_interactive_console_and_the_quit_key() -> None:
    """`lab boot` without --exec hands the console over; Ctrl-] quits and QEMU is gone."""
    import pexpect

    before = set(qemu_processes())
    child = pexpect.spawn(
        sys.executable,
        ["-m", "lab", "--config", str(REPO / "lab.toml"), "boot", "--arch", "x86_64"],
        cwd=str(REPO),
        timeout=300,
        encoding="utf-8",
        codec_errors="replace",
    )
    try:
        child.expect("Ctrl-] quits")
        child.expect("#", timeout=60)  # the guest shell's prompt
        child.sendline("echo $((6*7))x; uname -m")
        child.expect("42x")
        child.expect("x86_64")
        child.send("\x1d")
        child.expect(pexpect.EOF, timeout=30)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    assert set(qemu_processes()) <= before
