"""lab export kcidb: a run as KCIDB I/O data, validated with kcidb-io's own schema."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import kcidb_io
import pytest

from lab import results
from lab.export import kcidb

DATA = Path(__file__).parent / "data"
RUN = "20261126-080000-matrix-5e1f"
REPO = Path(__file__).resolve().parent.parent


def _fixture(tmp_path: Path) -> Path:
    run_dir = tmp_path / RUN
    shutil.copytree(DATA / "run" / "results" / RUN, run_dir)
    return run_dir


def _convert(run_dir: Path) -> dict[str, object]:
    run = results.load_run(run_dir)
    return kcidb.convert(run, results.read_cells(run_dir), results.planned_ids(run))


def test_the_fixture_run_is_valid_kcidb_v5_3(tmp_path: Path) -> None:
    data = _convert(_fixture(tmp_path))
    kcidb_io.schema.V5_3.validate_exactly(data)
    assert kcidb_io.schema.LATEST.is_compatible(data)


def test_statuses_builds_and_the_outcome_class_in_misc(tmp_path: Path) -> None:
    run_dir = _fixture(tmp_path)
    data = _convert(run_dir)
    run = results.load_run(run_dir)
    tests = {t["id"].split(":", 2)[2]: t for t in data["tests"]}  # type: ignore[attr-defined]
    assert set(tests) == set(results.planned_ids(run))  # every planned cell, once
    cells = {c.run_cell_id: c for c in results.read_cells(run_dir)}
    want = {"expected": "PASS", "unexpected": "FAIL", "infra": "ERROR"}
    for rid, t in tests.items():
        if rid in cells:
            assert t["status"] == want[cells[rid].verdict], rid
            assert t["misc"]["observed"] == cells[rid].observed
            assert t["path"] == f"lab.{cells[rid].data['testcase']}"
        else:
            assert t["status"] == "MISS", rid
    unexpected = tests["x86_64/C0/depletion#2"]
    assert unexpected["status"] == "FAIL" and unexpected["misc"]["expected"] == ["fault_livelock"]
    assert "Out of memory: Killed process" in unexpected["log_excerpt"]
    builds = {b["misc"]["label"] if "misc" in b else b["id"]: b for b in data["builds"]}  # type: ignore[attr-defined]
    failed = [b for b in data["builds"] if b.get("status") == "FAIL"]  # type: ignore[attr-defined]
    assert [b["config_name"] for b in failed] == ["P1"]
    assert "has no member named" in failed[0]["log_excerpt"]
    assert builds["arm64/C1"]["architecture"] == "arm64"
    build_ids = {b["id"] for b in data["builds"]}  # type: ignore[attr-defined]
    checkout_ids = {c["id"] for c in data["checkouts"]}  # type: ignore[attr-defined]
    assert all(t["build_id"] in build_ids for t in tests.values())
    assert all(b["checkout_id"] in checkout_ids for b in data["builds"])  # type: ignore[attr-defined]


def test_patchset_hash_is_kcidbs_formula() -> None:
    # sha256sum *.patch | cut -c-64 | sha256sum | cut -c-64
    shas = ["a" * 64, "b" * 64]
    out = subprocess.run(
        ["sha256sum"], input=f"{shas[0]}\n{shas[1]}\n", capture_output=True, text=True, check=True
    ).stdout[:64]
    assert kcidb.patchset_hash(shas) == out
    assert kcidb.patchset_hash([]) == ""


def test_hostile_cell_fields_stay_valid(tmp_path: Path) -> None:
    run_dir = _fixture(tmp_path)
    cell = next((run_dir / "cells").iterdir()) / "cell.json"
    data = json.loads(cell.read_text())
    data.update(testcase="../../evil name\0", detail="x\0" * 100_000, host="h\0")
    cell.write_text(json.dumps(data))
    ev = cell.with_name("evidence.json")
    evidence = json.loads(ev.read_text())
    evidence["evidence"] = [{"line_no": 1, "text": "y" * 100_000}] * 3
    ev.write_text(json.dumps(evidence))
    out = _convert(run_dir)
    kcidb_io.schema.V5_3.validate_exactly(out)
    assert all(len(t.get("log_excerpt", "")) <= 16384 for t in out["tests"])  # type: ignore[attr-defined]


def test_origin_must_be_kcidbs_pattern(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="origin"):
        kcidb.convert({}, [], [], origin="Lab Origin")


def test_cli_writes_the_file(tmp_path: Path) -> None:
    run_dir = _fixture(tmp_path)
    out = tmp_path / "k.json"
    proc = subprocess.run(
        [sys.executable, "-m", "lab", "--config", str(REPO / "lab.toml"), "export", "kcidb",
         str(run_dir), "-o", str(out)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    kcidb_io.schema.V5_3.validate_exactly(json.loads(out.read_text()))
    bad = subprocess.run(
        [sys.executable, "-m", "lab", "--config", str(REPO / "lab.toml"), "export", "kcidb",
         str(run_dir), "-o", "-", "--origin", "X"],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1
    assert "--origin" in bad.stderr and "Traceback" not in bad.stderr


def test_ktap_subtests_become_tests_under_the_cells_path(tmp_path: Path) -> None:
    run_dir = _fixture(tmp_path)
    cell = run_dir / "cells" / "x86_64--U0--pressure" / "cell.json"
    data = json.loads(cell.read_text())
    data["subtests"] = [
        {"testcase": "kselftest", "name": "file IO is blocked", "status": "pass"},
        {"testcase": "kselftest", "name": "suite.ptrace", "status": "fail", "reason": "EPERM"},
        {"testcase": "kselftest", "name": "x", "status": "skip"},
        {"testcase": "kselftest", "name": "y", "status": "bogus"},
        {"name": 3},
    ]
    cell.write_text(json.dumps(data))
    out = _convert(run_dir)
    kcidb_io.schema.V5_3.validate_exactly(out)
    subs = {t["path"]: t for t in out["tests"] if t["path"].startswith("lab.pressure.")}  # type: ignore[attr-defined]
    assert {p: t["status"] for p, t in subs.items()} == {
        "lab.pressure.file_IO_is_blocked": "PASS",
        "lab.pressure.suite.ptrace": "FAIL",
        "lab.pressure.x": "SKIP",
        "lab.pressure.y": "ERROR",
    }
    cell_test = next(t for t in out["tests"] if t["path"] == "lab.pressure"  # type: ignore[attr-defined]
                     and "x86_64/U0/pressure" in t["id"])  # fmt: skip
    assert all(t["build_id"] == cell_test["build_id"] for t in subs.values())
    assert len({t["id"] for t in out["tests"]}) == len(out["tests"])  # type: ignore[arg-type]
