"""run.json as `lab matrix` writes it (a new run, then a --resume), pinned byte for byte.

The report goldens check how a run directory is read; this checks how run.json is
written by orchestrate.run_matrix. Builds, base images and cells are replaced by fixed results
(one kernel built, one failed), and the clock, host and run id by fixed values.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_cell_record import fixed_provenance, unhash
from test_golden import _base, _kernel

from lab import __version__, cache, classify, results
from lab.config import LabConfig, load
from lab.run import matrix, orchestrate, testcase
from lab.run.schedule import infra_cell
from lab.vm import boot

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "data" / "run-record"
REGEN = os.environ.get("LAB_REGEN") == "1"  # rewrite the files below instead of comparing
RUN_ID = "20261126-080000-matrix-5e1f"
FAILED = "x86_64-U1: build failed (make exit 2); first errors:"
CACHE = Path("/home/lab/.cache/lab")  # cfg.cache_dir comes from the environment: pin it


def _plan(tmp_path: Path) -> tuple[LabConfig, list[matrix.Planned]]:
    cfg = dataclasses.replace(
        load(REPO / "lab.toml"), results_dir=tmp_path / "results", cache_dir=CACHE
    )
    tcs = testcase.discover(cfg.testcases_dir, classify.CLASSES)
    names = ["U0", "U1"]  # two variants of the 6.1 era, one of which fails to build
    return cfg, matrix.plan(cfg, tcs, matrix.MatrixSpec(), names, ["x86_64"], ["api"])


@pytest.fixture
def fixed(monkeypatch: pytest.MonkeyPatch) -> None:
    fixed = {
        "now": lambda: "2026-11-26T08:30:00+00:00",
        "new_run_id": lambda _label="": RUN_ID,
        "host_info": lambda: {"node": "controller", "cpus": 2},
    }
    for name, value in fixed.items():  # where it is defined and where it is re-exported
        for module in (results, results.model, results.store):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, value)
    fixed_provenance(monkeypatch)
    ticks = iter(float(i) for i in range(10_000))
    monkeypatch.setattr(orchestrate, "time", types.SimpleNamespace(monotonic=lambda: next(ticks)))


def _fake_stages(monkeypatch: pytest.MonkeyPatch, cfg: LabConfig) -> None:
    def build_kernels(
        _cfg: LabConfig,
        pairs: list[tuple[str, str]],
        _rep: object,
        _jobs: int = 0,
        prebuilt_path: str = "",
    ) -> tuple[dict[str, Any], dict[str, str]]:
        assert not prebuilt_path  # these runs build (fake) kernels
        kernels, failed = {}, {}
        for arch, variant in pairs:
            label = f"{arch}/{variant}"
            if variant == "U1":
                failed[label] = FAILED.replace("U1", variant)
            else:
                kernels[label] = _kernel(cfg, arch, variant)
        return kernels, failed

    def run_cells(
        cfg_: LabConfig,
        cells: list[matrix.Planned],
        run_dir: Path,
        *_a: Any,
        **_k: Any,
    ) -> None:
        on_start: Callable[[matrix.Planned], None] = _a[3]
        on_done: Callable[..., None] = _a[4]
        for p in cells:
            on_start(p)
            res = infra_cell(cfg_, p, run_dir / "cells" / p.dirname, "scripted")
            on_done(p, res, "")

    monkeypatch.setattr(orchestrate, "build_kernels", build_kernels)
    monkeypatch.setattr(boot, "base_image", lambda c, a, _log: _base(c, a.name))
    monkeypatch.setattr(orchestrate, "run_cells", run_cells)


def _check(run_dir: Path, name: str, tmp_path: Path) -> None:
    text = (run_dir / "run.json").read_text()
    text = text.replace(str(tmp_path), "$TMP").replace(str(REPO), "$REPO")
    text = text.replace(f'"lab_version": "{__version__}"', '"lab_version": "$VERSION"')
    text = text.replace(cache.file_digest(REPO / "lab.toml"), "$LAB_TOML_SHA256")
    text = unhash(text)
    golden = GOLDEN / name
    if REGEN:
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text(), f"{golden} differs (LAB_REGEN=1 rewrites it)"


def test_run_json_of_a_new_run_and_a_resume_byte_for_byte(
    fixed: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, cells = _plan(tmp_path)
    _fake_stages(monkeypatch, cfg)
    selection = {"variants": None, "arches": ["x86_64"], "testcases": ["api"], "repeat": 1}
    header = orchestrate.run_header(cfg, cells, {**selection, "shard": None})
    run_dir = results.new_run(cfg.results_dir, "matrix", header)
    _check(run_dir, "new.run.json", tmp_path)

    assert orchestrate.run_matrix(cfg, cells, run_dir, 1) == 2  # infra cells
    _check(run_dir, "finished.run.json", tmp_path)

    (done,) = [d for d in (run_dir / "cells").iterdir() if "U0" in d.name]
    for f in done.iterdir():
        f.unlink()
    done.rmdir()  # one cell to run again
    assert orchestrate.run_matrix(cfg, cells, run_dir, 1, forced_config="f" * 64) == 2
    _check(run_dir, "resumed.run.json", tmp_path)


def test_a_run_json_with_odd_bookkeeping_resumes_without_a_traceback(
    fixed: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A results tree may come from elsewhere: a run.json whose kernels/images/durations
    are not tables is bookkeeping to replace, not a crash of `lab matrix --resume`."""
    cfg, cells = _plan(tmp_path)
    _fake_stages(monkeypatch, cfg)
    header = orchestrate.run_header(cfg, cells, {"variants": None, "arches": ["x86_64"]})
    run_dir = results.new_run(cfg.results_dir, "matrix", header)
    meta = json.loads((run_dir / "run.json").read_text())
    odd = {"kernels": [], "build_failures": "x", "images": 3, "durations": None, "hosts": 7}
    (run_dir / "run.json").write_text(json.dumps({**meta, **odd, "future_key": [1]}))
    assert orchestrate.run_matrix(cfg, cells, run_dir, 1) == 2
    after = json.loads((run_dir / "run.json").read_text())
    assert set(after["kernels"]) == {"x86_64/U0"} and set(after["build_failures"]) == {"x86_64/U1"}
    assert set(after["durations"]) == {"build_and_images", "cells", "last_invocation"}
    assert after["future_key"] == [1] and after["hosts"] == 7 and after["status"] == "complete"


class _Host:
    """A worker as the CLI's host opener returns one (the run stage sees only `Worker`)."""

    name, slots = "h1", 1

    def __init__(self) -> None:
        self.closed = False

    def serves(self, arch: str) -> bool:
        return True

    def lost(self) -> str:
        return "gone"

    def abort(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def summary(self) -> dict[str, Any]:
        return {"cells": 3, "status": "lost: gone"}


def test_extra_workers_are_closed_and_their_summary_lands_in_run_json(
    fixed: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, cells = _plan(tmp_path)
    _fake_stages(monkeypatch, cfg)
    run_dir = results.new_run(cfg.results_dir, "matrix", orchestrate.run_header(cfg, cells, {}))
    host = _Host()
    asked: list[object] = []

    def open_workers(log: Callable[[str], None]) -> tuple[list[Any], dict[str, Any]]:
        asked.append(log)
        return [host], {"h1": {"address": "lab@h1", "status": "ok"}}

    assert orchestrate.run_matrix(cfg, cells, run_dir, 1, open_workers) == 2
    hosts = json.loads((run_dir / "run.json").read_text())["hosts"]
    assert len(asked) == 1 and host.closed
    assert hosts == {"h1": {"address": "lab@h1", "status": "lost: gone", "cells": 3}}
