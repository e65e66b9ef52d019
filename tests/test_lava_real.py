"""Cells as LAVA jobs, run by the real dispatcher: `lab export lava`, Debian's lava-run
(offline, TCG, root), `lab import lava`; the imported cells must classify exactly as a
local run of the same cells, on both arches. Slow tier (kernel builds when not cached,
QEMU boots)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from realtools import cmdline, lab, qemu_processes, run_cells

pytestmark = pytest.mark.real

ARCHES = "x86_64,arm64"
VARIANTS = "U0,C1"  # U0/api expects pass, C1/depletion expects sigbus
TESTS = "api,depletion"


def _ok(p: subprocess.CompletedProcess[str], what: str) -> None:
    assert "Traceback" not in p.stderr, p.stderr
    assert p.returncode == 0, f"{what}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"


@pytest.mark.skipif(os.geteuid() != 0, reason="lava-run runs QEMU as root")
def test_lava_jobs_classify_as_the_local_run_of_the_same_cells(tmp_path: Path) -> None:
    assert shutil.which("lava-run"), "lava-dispatcher is missing: `lab setup --tests` installs it"
    _ok(lab("build", "-a", ARCHES, "-V", VARIANTS), "lab build")
    sel = ("-a", ARCHES, "-V", VARIANTS, "-t", TESTS)

    local = tmp_path / "local"
    p = lab("matrix", *sel, "-j", "1", "--results", str(local))
    _ok(p, "lab matrix")
    (local_run,) = [d for d in local.iterdir() if (d / "run.json").is_file()]
    expected = {k: v["observed"] for k, v in run_cells(local_run).items()}
    assert len(expected) == 8

    out = tmp_path / "export"
    p = lab("export", "lava", *sel, "-o", str(out), "--results", str(tmp_path / "lava"))
    _ok(p, "lab export lava")
    run_dir = Path(p.stdout.strip().splitlines()[-1])
    jobs = sorted((out / "jobs").glob("*.yaml"))
    assert len(jobs) == 8
    job = jobs[0].read_text()
    assert f"lab.run: {run_dir.name}" in job and "file://" in job

    started = time.monotonic()
    ran = subprocess.run([str(out / "lava-run.sh")], capture_output=True, text=True, timeout=900)
    seconds = time.monotonic() - started
    print(ran.stdout)
    print(f"lava-run.sh: exit {ran.returncode} in {seconds:.1f}s")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.count("lava-run exit 0") == 8
    # lava-run ends its QEMU: none of this export's is left.
    assert not [q for q in qemu_processes() if "/var/lib/lava/dispatcher" in cmdline(q)]

    logs = sorted(str(p) for p in (out / "logs").glob("*.log"))
    p = lab("import", "lava", *logs, "--run", str(run_dir))
    _ok(p, "lab import lava")
    imported = run_cells(run_dir)
    assert {k: v["observed"] for k, v in imported.items()} == expected
    assert all(v["verdict"] == "expected" for v in imported.values()), json.dumps(
        {k: (v["observed"], v["expected"]) for k, v in imported.items()}
    )
    assert {k: v["lab_host"] for k, v in imported.items()} == dict.fromkeys(expected, "lava")
    report = lab("report", str(run_dir))
    _ok(report, "lab report")
    assert "8 expected, 0 unexpected, 0 infra, 0 not run" in report.stdout
    compare = lab("compare", str(local_run), str(run_dir))
    _ok(compare, "lab compare")
    assert compare.stdout.startswith("no cell changed between"), compare.stdout
