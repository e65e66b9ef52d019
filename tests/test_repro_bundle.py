"""Reproducer bundles (lab bundle): run.sh with a replaying QEMU, the command check, the tar.

The real tier (test_repro_bundle_real.py) bundles a real cell and reruns it with QEMU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from lab.errors import UserError
from lab.export import repro

DATA = Path(__file__).parent / "data"
ARGV = [
    "qemu-system-x86_64",
    "-M",
    "microvm,acpi=off",
    "-m",
    "512",
    "-chardev",
    "file,id=result,path=out/result.jsonl",
    "-kernel",
    "kernel/bzImage",
    "-initrd",
    "initrd.cpio.gz",
    "-append",
    "console=ttyS0 panic=-1",
]


def _classify(cell_dir: Path) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "lab", "classify", str(cell_dir), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _bundle_dir(tmp_path: Path, limit: int, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An unpacked bundle whose QEMU replays a recorded console (fake_qemu.py), with
    PATH holding only that QEMU and the system's tools: no lab."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "qemu-system-x86_64").symlink_to(DATA / "fake_qemu.py")
    script = repro.run_script("x86_64/U0/api", ARGV, limit, {"fault": "oom"}, ["pass"])
    members = [repro.Member("run.sh", script.encode(), 0o755)]
    repro.write_tar(members, "cell", tmp_path / "b.tar.gz")
    with tarfile.open(tmp_path / "b.tar.gz") as tar:
        tar.extractall(tmp_path / "x", filter="data")
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    return tmp_path / "x" / "cell"


def test_run_sh_reruns_and_lab_classify_gives_the_recorded_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = _bundle_dir(tmp_path, 60, monkeypatch)
    env = {
        "PATH": os.environ["PATH"],
        "LAB_REPLAY": str(DATA / "consoles" / "x86_64-api-pass.raw"),
        "LAB_REPLAY_RESULTS": (DATA / "consoles" / "x86_64-api-pass.jsonl").read_text(),
    }
    proc = subprocess.run([str(d / "run.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "lab classify out" in proc.stderr
    facts = json.loads((d / "out" / "cell.json").read_text())
    assert facts == {"qemu_exit": 0, "deadline": None, "banner": {"fault": "oom"}}
    assert (d / "out" / "console.log").read_bytes() == (
        DATA / "consoles" / "x86_64-api-pass.raw"
    ).read_bytes()
    assert _classify(d / "out")["outcome"] == "pass"


def test_run_sh_records_the_deadline_when_the_guest_hangs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("timeout") is None:
        pytest.skip("no timeout(1)")
    d = _bundle_dir(tmp_path, 2, monkeypatch)
    env = {
        "PATH": os.environ["PATH"],
        "LAB_REPLAY": str(DATA / "consoles" / "x86_64-boot-panic.raw"),
        "LAB_REPLAY_HANG": "1",
    }
    proc = subprocess.run([str(d / "run.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 124, proc.stderr
    facts = json.loads((d / "out" / "cell.json").read_text())
    assert facts["deadline"] == "boot" and facts["qemu_exit"] is None
    # The console's panic is the kernel evidence, as for the lab's own run.
    assert _classify(d / "out")["outcome"] == "boot_failure"


def test_run_sh_quotes_every_argument() -> None:
    argv = [*ARGV[:-1], "console=ttyS0 x='$(touch /tmp/pwned)'"]
    script = repro.run_script("a/b/c", argv, 10, None, [])
    assert "'console=ttyS0 x='\"'\"'$(touch /tmp/pwned)'\"'\"''" in script
    assert "banner=null" in script.replace("'null'", "null")


def test_same_command_ignores_only_the_per_run_paths() -> None:
    recorded = [
        *ARGV[:6],
        "file,id=result,path=/r/run/cells/x/result.jsonl",
        "-kernel",
        "/cache/kernels/k/bzImage",
        "-initrd",
        "/r/run/cells/x/initrd.cpio.gz",
        *ARGV[-2:],
    ]
    assert repro.same_command(recorded, ARGV) == ""
    other = [a if a != "512" else "256" for a in recorded]
    assert repro.same_command(other, ARGV) == (
        "argument 4: the cell ran with '256', lab.toml now gives '512'"
    )
    assert "arguments" in repro.same_command([*recorded, "-s"], ARGV)


def test_tar_members_stay_under_the_top_directory(tmp_path: Path) -> None:
    for bad in ("../x", "/etc/passwd", "a/../../x", "a//b", ""):
        with pytest.raises(UserError, match="would leave"):
            repro.write_tar([repro.Member(bad, b"x")], "top", tmp_path / "b.tar.gz")
    with pytest.raises(UserError, match="plain directory"):
        repro.write_tar([], "../top", tmp_path / "b.tar.gz")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_tar_is_bounded_and_whole_or_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(repro, "MAX_BUNDLE", 10)
    with pytest.raises(UserError, match="more than 10"):
        repro.write_tar([repro.Member("k", b"x" * 11)], "top", tmp_path / "b.tar.gz")
    with pytest.raises(UserError, match="is a directory"):
        repro.write_tar([repro.Member("k", b"x")], "top", tmp_path)
    with pytest.raises(UserError, match="no such directory"):
        repro.write_tar([repro.Member("k", b"x")], "top", tmp_path / "no" / "b.tar.gz")
    assert not list(tmp_path.iterdir())
    monkeypatch.undo()
    out = repro.write_tar(
        [repro.Member("kernel/bzImage", b"k"), repro.Member("run.sh", b"#!/bin/sh\n", 0o755)],
        "top",
        tmp_path / "b.tar.gz",
    )
    with tarfile.open(out) as tar:
        names = {m.name: m for m in tar.getmembers()}
    assert set(names) == {"top", "top/kernel", "top/kernel/bzImage", "top/run.sh"}
    assert names["top/run.sh"].mode == 0o755 and names["top/kernel/bzImage"].isreg()


def test_bundle_of_a_directory_without_a_cell_is_one_line(tmp_path: Path, repo: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lab",
            "--config",
            str(repo / "lab.toml"),
            "bundle",
            str(tmp_path),
            "-o",
            str(tmp_path / "b.tar.gz"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert str(tmp_path) in proc.stderr


def test_summary_and_html_name_each_unexpected_cells_bundle_command(tmp_path: Path) -> None:
    from lab import report

    run_dir = tmp_path / "20261126-080000-matrix-5e1f"
    shutil.copytree(DATA / "run" / "results" / run_dir.name, run_dir)
    report.render(run_dir)
    cmd = (
        "lab bundle 20261126-080000-matrix-5e1f/cells/x86_64--C0--depletion--r2 "
        "-o x86_64--C0--depletion--r2.tar.gz"
    )
    summary = (run_dir / "summary.md").read_text()
    assert f"    bundle:    {cmd}" in summary
    assert summary.count("    bundle:    ") == summary.count("    reproduce: ")
    assert cmd in (run_dir / "report.html").read_text()


def test_bundle_takes_a_cell_under_the_results_directory(tmp_path: Path) -> None:
    from lab.cli.export import cell_dir_of

    cell = tmp_path / "results" / "run1" / "cells" / "a--b--c"
    cell.mkdir(parents=True)
    (cell / "cell.json").write_text("{}")
    assert cell_dir_of("run1/cells/a--b--c", tmp_path / "results") == cell
    with pytest.raises(UserError, match="run1/cells/nope: not a cell directory"):
        cell_dir_of("run1/cells/nope", tmp_path / "results")


def test_a_hostile_cell_json_names_no_path_outside_the_cache(tmp_path: Path, repo: Path) -> None:
    from lab import config, results
    from lab.export.repro import _kernel

    cfg = config.load(repo / "lab.toml")
    for key in ("../../../etc", "/etc/passwd", "ab", None, 7):
        rec = results.CellResult(tmp_path, {"id": "a/b/c", "kernel": {"key": key}}, {})
        with pytest.raises(UserError, match="is not a kernel key"):
            _kernel(cfg, rec)
    rec = results.CellResult(tmp_path, {"id": "a/b/c", "kernel": {"key": "0" * 24}}, {})
    with pytest.raises(UserError, match="not in the cache"):
        _kernel(cfg, rec)


def test_an_oversized_qemu_argv_is_refused(tmp_path: Path) -> None:
    (tmp_path / "qemu.argv").write_bytes(b"x" * (repro.MAX_ARGV + 1))
    with pytest.raises(UserError, match=r"qemu\.argv"):
        repro._read_argv(tmp_path)
    (tmp_path / "qemu.argv").unlink()
    (tmp_path / "qemu.argv").symlink_to("/etc/hostname")
    with pytest.raises(UserError, match="outside"):
        repro._read_argv(tmp_path)
