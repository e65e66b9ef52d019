"""--json on `lab matrix --list` (what a CI matrix generator reads), `lab compare`,
`lab hosts check` and `lab reproduce`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUN = "20261126-080000-matrix-5e1f"


def _lab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lab", "--config", str(REPO / "lab.toml"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
    )


def test_matrix_list_json_is_one_object_per_cell() -> None:
    text = _lab("matrix", "--list", "-a", "x86_64", "-t", "api", "-V", "U0", "-V", "C0")
    js = _lab("matrix", "--list", "--json", "-a", "x86_64", "-t", "api", "-V", "U0", "-V", "C0")
    assert js.returncode == 0, js.stderr
    data = json.loads(js.stdout)
    assert data["format"] == 1
    ids = [c["id"] for c in data["cells"]]
    assert ids == [ln.split()[0] for ln in text.stdout.splitlines()]
    cell = data["cells"][0]
    assert set(cell) == {"id", "dir", "arch", "variant", "testcase", "repeat", "kernel",
                         "expected", "rule"}  # fmt: skip
    assert cell["arch"] == "x86_64" and cell["testcase"] == "api" and cell["expected"] == ["pass"]
    assert data["kernels"] == sorted({c["kernel"] for c in data["cells"]})


def test_compare_json_lists_changes_and_keeps_the_exit_code(tmp_path: Path) -> None:
    a = tmp_path / "a"
    shutil.copytree(REPO / "tests" / "data" / "run" / "results" / RUN, a)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    cell = b / "cells" / "x86_64--U0--pressure" / "cell.json"
    data = json.loads(cell.read_text())
    cell.write_text(json.dumps({**data, "observed": "sigbus", "verdict": "unexpected"}))
    out = _lab("compare", str(a), str(b), "--json")
    assert out.returncode == 1, out.stderr  # a regression, as without --json
    got = json.loads(out.stdout)
    assert got["format"] == 1 and got["a"] == "a" and got["b"] == "b"
    (change,) = [c for c in got["changes"] if c["id"] == "x86_64/U0/pressure"]
    assert change == {"kind": "regression", "id": "x86_64/U0/pressure",
                      "a_observed": "oom_kill", "b_observed": "sigbus",
                      "a_verdict": "expected", "b_verdict": "unexpected"}  # fmt: skip


def test_matrix_json_without_list_is_one_line() -> None:
    out = _lab("matrix", "--json", "-a", "x86_64", "-t", "api")
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0
    assert "--json goes with --list" in out.stderr


def test_the_per_kernel_workflow_fans_out_over_the_plans_kernels(tmp_path: Path) -> None:
    import yaml

    wf = yaml.safe_load((REPO / "ci" / "per-kernel.yml").read_text())
    assert wf["jobs"]["kernel"]["strategy"]["matrix"]["include"] == (
        "${{ fromJSON(needs.plan.outputs.kernels) }}"
    )
    plan = _lab("matrix", "--list", "--json", "-a", "x86_64", "-t", "api")
    (tmp_path / "plan.json").write_text(plan.stdout)
    out = subprocess.run(
        [sys.executable, str(REPO / "ci" / "kernels_of_plan.py"), str(tmp_path / "plan.json")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith("kernels=") and out.count("\n") == 1
    kernels = json.loads(out.removeprefix("kernels="))
    listed = {c["kernel"] for c in json.loads(plan.stdout)["cells"]}
    assert {f"{k['arch']}/{k['variant']}" for k in kernels} == listed
    # each kernel job's command line selects exactly that kernel's cells
    (step,) = [s for s in wf["jobs"]["kernel"]["steps"] if "matrix -a" in s.get("run", "")]
    assert step["run"].startswith("./labw matrix -a ${{ matrix.arch }} -V ${{ matrix.variant }}")


def test_hosts_check_json_is_one_entry_per_host() -> None:
    from lab.cli import jsonout
    from lab.config import hosts
    from lab.hosts.check import CheckLine

    h = hosts.Host("h1", "10.0.0.1", 22, "lab", Path("k"), Path("kh"), "strict", 2,
                   ("x86_64",), False, "~/lab", "python3")  # fmt: skip
    data = jsonout.hosts_check(
        [h], {"h1": [CheckLine("reachable", True, "ssh ok"), CheckLine("disk", False, "1 GB\0")]}
    )
    assert data["format"] == 1 and data["ok"] is False
    (entry,) = data["hosts"]
    assert entry["name"] == "h1" and entry["capacity"] == 2 and entry["arches"] == ["x86_64"]
    assert entry["checks"] == [
        {"label": "reachable", "ok": True, "detail": "ssh ok"},
        {"label": "disk", "ok": False, "detail": "1 GB\\x00"},
    ]
    none = jsonout.hosts_check([h], {})
    assert none["hosts"][0]["checks"] == [{"label": "check", "ok": False, "detail": "no answer"}]


def test_reproduce_json_is_the_answers_alone_on_stdout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse
    import dataclasses

    from lab import config
    from lab.cli import reproduce
    from lab.config import failures
    from lab.outcome import CLASSES
    from lab.run import orchestrate, schedule

    cfg = dataclasses.replace(config.load(REPO / "lab.toml"), results_dir=tmp_path / "results")
    monkeypatch.setattr(reproduce, "_load", lambda _a: cfg)

    def scripted(cfg_: object, cells: list, run_dir: Path, *_a: object, **_k: object) -> int:  # type: ignore[type-arg]
        for p in cells:  # no boots: every cell an infra result
            schedule.infra_cell(cfg, p, run_dir / "cells" / p.dirname, "scripted")
        return 2

    monkeypatch.setattr(orchestrate, "run_matrix", scripted)
    mode = failures.parse(cfg.extra.get("failure_mode"), cfg.file, CLASSES)[0]
    args = argparse.Namespace(
        id=[mode.id], arch=["x86_64"], jobs=1, list=False, markdown=None, json=True
    )
    assert reproduce.cmd_reproduce(args) == 2
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["format"] == 1 and Path(doc["run"]).parent == tmp_path / "results"
    assert doc["answers"] and {a["failure_mode"] for a in doc["answers"]} == {mode.id}
    assert all(a["observed"] == "infra_error" for a in doc["answers"])
    assert f"{mode.id}: " in err  # the text for people, on stderr
