"""lab matrix for real: interruption and resume, shards and merge. Slow tier."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from realtools import cmdline, lab, lab_popen, qemu_processes
from realtools import only_run as _only_run

pytestmark = pytest.mark.real

SELECTION = ["-V", "U0", "-V", "C1", "-t", "api", "-t", "memlock", "-t", "isolation"]


def _outcomes(run: Path) -> dict[str, str]:
    out = {}
    for d in (run / "cells").iterdir():
        data = json.loads((d / "cell.json").read_text())
        out[data["run_cell_id"]] = data["observed"]
    return out


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    results = tmp_path_factory.mktemp("clean")
    p = lab("matrix", *SELECTION, "--results", str(results))
    assert p.returncode in (0, 1), p.stderr[-3000:]
    return _only_run(results)


def test_sigterm_keeps_finished_cells_and_resume_completes(clean_run: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    p = lab_popen("matrix", *SELECTION, "--results", str(results))
    try:
        deadline = time.monotonic() + 600
        finished: list[Path] = []
        while time.monotonic() < deadline:
            finished = list(results.glob("*/cells/*/cell.json"))
            if len(finished) >= 3:
                break
            time.sleep(0.2)
        assert len(finished) >= 3, "the run did not get going"
        os.kill(p.pid, signal.SIGTERM)
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
    assert p.returncode == 128 + signal.SIGTERM
    run = _only_run(results)
    assert not [q for q in qemu_processes() if str(run) in cmdline(q)], "QEMU outlived lab"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted" and info["not_run"]
    kept = _outcomes(run)
    assert len(kept) >= 3
    for d in (run / "cells").iterdir():  # finished cells are whole
        for name in ("cell.json", "evidence.json", "console.log", "result.jsonl", "qemu.argv"):
            assert (d / name).is_file(), (d, name)
    resumed = lab("matrix", "--resume", str(run))
    assert resumed.returncode in (0, 1), resumed.stderr[-3000:]
    final = _outcomes(run)
    assert {k: final[k] for k in kept} == kept  # finished cells untouched
    assert final == _outcomes(clean_run)
    assert json.loads((run / "run.json").read_text())["status"] == "complete"


def test_shards_merged_equal_the_unsharded_run(clean_run: Path, tmp_path: Path) -> None:
    shard_runs = []
    for k in (1, 2, 3):
        res = tmp_path / f"shard{k}"
        p = lab("matrix", *SELECTION, "--shard", f"{k}/3", "--results", str(res))
        assert p.returncode in (0, 1), p.stderr[-3000:]
        shard_runs.append(_only_run(res))
    sizes = [len(_outcomes(r)) for r in shard_runs]
    assert all(sizes) and sum(sizes) == len(_outcomes(clean_run))
    merged = tmp_path / "merged"
    m = lab("merge", *map(str, shard_runs), "--output", str(merged))
    assert m.returncode in (0, 1), m.stderr
    assert _outcomes(merged) == _outcomes(clean_run)
    c = lab("compare", str(clean_run), str(merged))
    assert c.returncode == 0, c.stdout
