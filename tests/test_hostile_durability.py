"""Durability and operations of results (issue 15: D8, D22).

Atomic writes reach the disk with their directory entry; the files a cell.json marker
vouches for are on disk before it; result files honour the umask; one lab process per
run directory; `--resume` notices a changed lab.toml.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_report import Spec, make_run

from lab import cache, classify, cli, config, report, results
from lab.errors import LabError
from lab.run import matrix, orchestrate, testcase

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The paths os.fsync was called on, in order (the real fsync still runs)."""
    seen: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    yield seen


def test_atomic_write_fsyncs_the_directory_after_the_rename(
    tmp_path: Path, fsyncs: list[str]
) -> None:
    cache.write_atomic(tmp_path / "run.json", "{}")
    assert fsyncs[-1] == str(tmp_path)  # the rename itself is durable
    assert fsyncs[0].startswith(str(tmp_path / ".run.json."))  # the data first


def test_result_files_honour_the_umask(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    run = make_run(tmp_path, "run", [Spec("x86_64/U0/api", "pass")])
    report.render(run)
    cache.write_json(run / "run.json", json.loads((run / "run.json").read_text()))
    for name in ("run.json", *report.REPORTS):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o666 & ~umask, name
    merged = report.merge([run], tmp_path / "merged")
    assert stat.S_IMODE(merged.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's 0700
    # Another umask, another mode: the process's umask decides, not mkstemp.
    code = (
        "import pathlib, stat, sys; from lab import cache; p = pathlib.Path(sys.argv[1]); "
        "cache.write_atomic(p, 'x'); print(oct(stat.S_IMODE(p.stat().st_mode)))"
    )
    out = subprocess.run(
        ["sh", "-c", 'umask 027 && exec "$0" -c "$1" "$2"', sys.executable, code, tmp_path / "f"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "0o640"


def test_fsync_tree_covers_every_file_and_directory_but_no_link(
    tmp_path: Path, fsyncs: list[str]
) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("console.log", "result.jsonl", "sub/kvm-probe.result"):
        (tmp_path / name).write_text("x")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.write_text("not ours")
    (tmp_path / "link").symlink_to(outside)
    cache.fsync_tree(tmp_path)
    assert sorted(fsyncs) == sorted(
        [
            str(tmp_path / "console.log"),
            str(tmp_path / "result.jsonl"),
            str(tmp_path / "sub" / "kvm-probe.result"),
            str(tmp_path / "sub"),
            str(tmp_path),
        ]
    )


def test_merge_fsyncs_the_copied_cells_before_the_rename(tmp_path: Path, fsyncs: list[str]) -> None:
    run = make_run(tmp_path, "run", [Spec("x86_64/U0/api", "pass")])
    out = report.merge([run], tmp_path / "merged")
    copied = [f for f in fsyncs if f.endswith("/cells/x86_64--U0--api/console.log")]
    assert copied and ".merged." in copied[0]  # in the staging directory, before its rename
    assert str(out.parent) in fsyncs  # the rename made durable


# --- one lab process per run directory -------------------------------------------------


@contextlib.contextmanager
def _held(run: Path) -> Iterator[None]:
    """Another lab process holding the run's lock (as a running `--resume` does)."""
    code = (
        "import pathlib, sys, time; from lab import results\n"
        "with results.locked_run(pathlib.Path(sys.argv[1])):\n"
        "    print('locked', flush=True); time.sleep(30)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.kill()
        holder.wait()


def test_a_second_process_on_a_locked_run_fails_with_one_line(tmp_path: Path) -> None:
    run = make_run(tmp_path, "run", [Spec("x86_64/U0/api", "pass")])
    with _held(run):
        cfg = config.load(REPO / "lab.toml")
        with pytest.raises(LabError, match="another lab process is running this run") as exc:
            orchestrate.run_matrix(cfg, [], run, 1)
        assert "\n" not in str(exc.value)
    with results.locked_run(run):  # released when its holder died
        pass


def test_a_second_resume_fails_with_one_line_and_touches_nothing(
    mini_lab: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _lab_with_a_run(mini_lab)
    with _held(run):
        before = sorted((p.relative_to(run), p.stat().st_mtime_ns) for p in run.rglob("*"))
        code = cli.main(["--config", str(mini_lab / "lab.toml"), "matrix", "--resume", str(run)])
        after = sorted((p.relative_to(run), p.stat().st_mtime_ns) for p in run.rglob("*"))
    assert code == 2 and after == before
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [x for x in lines if x.startswith("lab: error: ")]
    assert len(errors) == 1 and "another lab process" in errors[0] and "Traceback" not in lines


# --- --resume after lab.toml changed (D8) --------------------------------------------------


def _lab_with_a_run(mini_lab: Path) -> Path:
    """mini_lab with the api test case and a finished run of it (every cell done)."""
    (mini_lab / "testcases").mkdir()
    # api is scoped to the secretmem family; the mini lab's one family is "demo"
    api = (REPO / "testcases" / "api.py").read_text()
    scoped = '"families": ["secretmem"]'
    assert scoped in api
    (mini_lab / "testcases" / "api.py").write_text(api.replace(scoped, '"families": ["*"]'))
    cfg = config.load(mini_lab / "lab.toml")
    tcs = [testcase.load(mini_lab / "testcases" / "api.py", classify.CLASSES)]
    cells = matrix.plan(cfg, tcs, matrix.MatrixSpec(), [], [], ["api"])
    sel = {"variants": [], "arches": [], "testcases": ["api"], "repeat": 1, "shard": None}
    run = results.new_run(cfg.results_dir, "matrix", orchestrate.run_header(cfg, cells, sel))
    for c in cells:
        cache.write_json(run / "cells" / c.dirname / "evidence.json", {})
        cache.write_json(
            run / "cells" / c.dirname / "cell.json",
            {"id": c.cell.id, "run_cell_id": c.id, "observed": "pass", "verdict": "expected"},
        )
    return run


def _changed_since_run(mini_lab: Path) -> tuple[Path, Path, str]:
    """_lab_with_a_run, then lab.toml changed: (lab.toml, the run, its config sha256)."""
    run = _lab_with_a_run(mini_lab)
    toml = mini_lab / "lab.toml"
    toml.write_text(toml.read_text() + "# changed\n")
    return toml, run, json.loads((run / "run.json").read_text())["config"]["sha256"]


def test_resume_refuses_a_changed_lab_toml(
    mini_lab: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml, run, old = _changed_since_run(mini_lab)
    assert cli.main(["--config", str(toml), "matrix", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"sha256 {old[:12]}" in err and "--force-config" in err
    assert json.loads((run / "run.json").read_text())["config"]["sha256"] == old


def test_resume_force_config_records_both_hashes(
    mini_lab: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml, run, old = _changed_since_run(mini_lab)
    new = cache.file_digest(toml)
    code = cli.main(["--config", str(toml), "matrix", "--resume", str(run), "--force-config"])
    assert code == 0, capsys.readouterr().err
    conf = json.loads((run / "run.json").read_text())["config"]
    assert conf["sha256"] == old and conf["resumed_sha256"] == [new]
    assert cli.main(["--config", str(toml), "matrix", "--force-config"]) == 2
    assert "only to --resume" in capsys.readouterr().err


def test_cell_json_is_written_after_the_files_it_vouches_for(
    tmp_path: Path, fsyncs: list[str]
) -> None:
    d = tmp_path / "cell"
    d.mkdir()
    (d / "console.log").write_text("a console the guest wrote\n")
    (d / "result.jsonl").write_text('{"type": "ready"}\n')
    cell = {"id": "x86_64/C0/api", "observed": "pass"}
    results.CellResult.from_json(d, cell, {"outcome": "pass"}).write()
    marker = next(i for i, f in enumerate(fsyncs) if f.startswith(str(d / ".cell.json.")))
    for name in ("console.log", "result.jsonl", "evidence.json"):
        assert fsyncs.index(str(d / name)) < marker, name
    assert json.loads((d / "cell.json").read_text())["observed"] == "pass"
