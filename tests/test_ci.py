"""The CI workflows: valid YAML, the shape the docs describe, and the smoke matrix run
through the very command line the workflow calls (real tier)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def _load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((REPO / "ci" / name).read_text())
    assert isinstance(data, dict)
    return data


def _runs(job: dict[str, Any]) -> list[str]:
    return [str(s["run"]) for s in job["steps"] if "run" in s]


def test_workflows_are_valid_yaml_and_only_call_lab() -> None:
    for name in ("smoke.yml", "nightly.yml"):
        wf = _load(name)
        assert wf["jobs"], name
        for job in wf["jobs"].values():
            for run in _runs(job):
                words = shlex.split(run.split("||")[0].split(">>")[0])
                assert words[0] in ("./labw", "apt-get", "cat"), run


def test_nightly_shards_cache_and_merge() -> None:
    wf = _load("nightly.yml")
    shard = wf["jobs"]["shard"]
    assert shard["strategy"]["matrix"]["shard"] == [1, 2, 3]
    uses = [s.get("uses", "") for s in shard["steps"]]
    assert any(u.startswith("actions/cache@") for u in uses)
    assert any(u.startswith("actions/upload-artifact@") for u in uses)
    assert any("--shard ${{ matrix.shard }}/3" in r for r in _runs(shard))
    report = wf["jobs"]["report"]
    assert report["needs"] == "shard"
    assert any(r.startswith("./labw merge") for r in _runs(report))


def test_nightly_fails_on_an_unexpected_cell_that_is_not_a_known_issue() -> None:
    """The report job's last step is the verdict: `lab report` of the merged run, its
    exit status unmasked (0 only when every unexpected cell is a known issue); the
    shard and merge steps may tolerate 1 so that the report is published first."""
    steps = _load("nightly.yml")["jobs"]["report"]["steps"]
    last = steps[-1]
    assert last["run"] == "./labw report results/nightly" and "if" not in last
    assert "||" not in last["run"]
    assert steps[-2].get("uses", "").startswith("actions/upload-artifact@")


@pytest.mark.real
def test_smoke_matrix_runs_through_the_workflow_command(tmp_path: Path) -> None:
    (line,) = [r for r in _runs(_load("smoke.yml")["jobs"]["smoke"]) if "matrix" in r]
    argv = shlex.split(line)
    assert argv[:2] == ["./labw", "matrix"]
    # ./labw is the venv wrapper around `lab`; here the test's interpreter is that venv.
    argv = [sys.executable, "-m", "lab", *argv[1:]]
    argv[argv.index("--results") + 1] = str(tmp_path / "smoke")
    p = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=3000)
    assert p.returncode in (0, 1), p.stderr[-3000:]
    (run,) = list((tmp_path / "smoke").iterdir())
    for name in ("report.html", "summary.md", "junit.xml", "run.json"):
        assert (run / name).is_file(), name
    cells = sorted(d.name for d in (run / "cells").iterdir())
    assert len(cells) == 8, cells  # 2 variants x 2 test cases x 2 arches
    merged = subprocess.run(
        [sys.executable, "-m", "lab", "merge", str(run), "--output", str(tmp_path / "merged")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert merged.returncode in (0, 1), merged.stderr
    assert (tmp_path / "merged" / "report.html").is_file()
