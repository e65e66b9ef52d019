"""Provenance: which lab (commit, dirty), lab.toml and test cases produced a result."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from lab import __version__, cache, provenance, report

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parent.parent


def test_lab_source_names_the_checkouts_commit_and_dirty_flag() -> None:
    src = provenance.lab_source()
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    status = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "-uno"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert src["version"] == __version__ and src["commit"] == head
    assert src["dirty"] is bool(status.strip())
    assert src["describe"].startswith(f"{__version__}+g{head[:12]}")


def test_without_git_the_commit_is_null_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    provenance.lab_source.cache_clear()
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    try:
        assert provenance.lab_source() == {
            "version": __version__,
            "commit": None,
            "dirty": None,
            "describe": __version__,
        }
    finally:
        provenance.lab_source.cache_clear()


def test_a_qemu_that_does_not_answer_is_null(tmp_path: Path) -> None:
    hang = tmp_path / "qemu-hang"
    hang.write_text("#!/bin/sh\nexec sleep 60\n")
    hang.chmod(0o755)
    provenance.ASK_TIMEOUT, saved = 0.5, provenance.ASK_TIMEOUT
    try:
        assert provenance.qemu_version(str(hang)) is None
        assert provenance.qemu_version(str(tmp_path / "missing")) is None
    finally:
        provenance.ASK_TIMEOUT = saved


def test_cell_provenance_hashes_the_test_case_and_guest_files() -> None:
    tc = REPO / "testcases" / "api.py"
    p = provenance.for_cell(REPO / "lab.toml", tc)
    assert p["testcase_sha256"] == cache.file_digest(tc)
    assert p["config_sha256"] == cache.file_digest(REPO / "lab.toml")
    assert p["guest"]["labguest.py"] == cache.file_digest(REPO / "lab" / "guest" / "labguest.py")
    assert set(p["guest"]) == {"agent.py", "labguest.py"}


def test_summary_pins_the_provenance_in_one_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "20261126-080000-matrix-5e1f"
    shutil.copytree(DATA / "run" / "results" / run_dir.name, run_dir)
    meta = json.loads((run_dir / "run.json").read_text())
    meta["provenance"] = {
        "lab": {"version": "0.1.0", "commit": "ab" * 20, "dirty": True,
                "describe": "0.1.0+gabababababab.dirty"},
        "config_sha256": "c" * 64,
        "testcases": {"depletion": "d" * 64, "pressure": "e" * 64},
    }  # fmt: skip
    (run_dir / "run.json").write_text(json.dumps(meta))
    report.render(run_dir)
    summary = (run_dir / "summary.md").read_text()
    assert (
        "provenance: lab 0.1.0+gabababababab.dirty, lab.toml cccccccccccc, "
        "depletion dddddddddddd, pressure eeeeeeeeeeee\n"
    ) in summary


def test_a_foreign_provenance_of_another_shape_renders(tmp_path: Path) -> None:
    run_dir = tmp_path / "20261126-080000-matrix-5e1f"
    shutil.copytree(DATA / "run" / "results" / run_dir.name, run_dir)
    meta = json.loads((run_dir / "run.json").read_text())
    meta["provenance"] = {"lab": [1], "testcases": "x", "config_sha256": 7}
    (run_dir / "run.json").write_text(json.dumps(meta))
    report.render(run_dir)
    assert "provenance: lab unknown, lab.toml 7\n" in (run_dir / "summary.md").read_text()
