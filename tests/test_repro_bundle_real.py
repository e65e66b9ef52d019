"""A reproducer bundle of a real cell, rerun with QEMU alone (no lab on PATH), gives the
cell's outcome under `lab classify`. Slow tier: one boot for the cell, one for the rerun,
both of a kernel that must already be cached (this test never builds one)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from realtools import REPO, lab, qemu_processes

from lab import build, config

pytestmark = pytest.mark.real


def _cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def test_bundle_reruns_with_qemu_alone(tmp_path: Path) -> None:
    cfg = config.load(REPO / "lab.toml")
    plan = build.plan(cfg, cfg.arch("x86_64"), cfg.variant("U0"))
    if build.lookup(cfg, plan) is None:
        pytest.fail(f"kernel {plan.key} (x86_64/U0) is not cached: `lab build -a x86_64 -V U0`")
    ran = lab("run", "api", "-a", "x86_64", "-V", "U0", "--results", str(tmp_path / "run"))
    assert ran.returncode == 0, ran.stderr
    assert "kernel cached" in ran.stderr + ran.stdout
    cell_dir = tmp_path / "run" / "x86_64--U0--api"
    observed = json.loads((cell_dir / "cell.json").read_text())["observed"]

    made = lab("bundle", str(cell_dir), "-o", str(tmp_path / "b.tar.gz"))
    assert made.returncode == 0, made.stderr
    scratch = tmp_path / "scratch"
    with tarfile.open(tmp_path / "b.tar.gz") as tar:
        tar.extractall(scratch, filter="data")
    top = scratch / "x86_64--U0--api"
    assert sorted(p.name for p in top.iterdir()) == [
        "README",
        "cell.json.orig",
        "expected.json",
        "initrd.cpio.gz",
        "kernel",
        "run.sh",
    ]
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu
    path = os.pathsep.join(sorted({str(Path(qemu).parent), "/usr/bin", "/bin"}))
    env = {"PATH": path, "HOME": str(tmp_path)}
    for d in path.split(os.pathsep):
        assert not (Path(d) / "lab").exists(), f"lab is on the rerun's PATH ({d})"
    rerun = subprocess.run(
        [str(top / "run.sh")], env=env, cwd=scratch, capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr
    # QEMU exited with the guest (other QEMUs on the machine run elsewhere).
    assert not [p for p in qemu_processes() if _cwd(p) == top.resolve()]

    classified = lab("classify", str(top / "out"), "--json")
    assert classified.returncode == 0, classified.stderr
    assert json.loads(classified.stdout)["outcome"] == observed
    expected = json.loads((top / "expected.json").read_text())
    assert expected["observed"] == observed and expected["classify"] == "lab classify out"
