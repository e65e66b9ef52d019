"""LAVA export and import, fast tier: rendering pinned by goldens, the console framing of the
agent's records, and real lava-run logs (tests/data/lava) turned into classified cells.

Goldens live in tests/data/lava/golden/ (LAB_REGEN=1 rewrites them, as tests/golden's do).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
from pathlib import Path

import pytest
import yaml

from lab import cli, config, report, results
from lab.errors import UserError
from lab.export import bundle, ingest, lava, lavalog
from lab.guest import agent
from lab.outcome import CLASSES
from lab.run import testcase
from lab.run.cell import Cell
from lab.run.job import MARGIN
from lab.vm.qemu import kernel_cmdline

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "lava"
GOLDEN = DATA / "golden"
LOGS = DATA / "logs"
REGEN = os.environ.get("LAB_REGEN") == "1"
BOOT_ID = "0123456789abcdef"


def _job_input(arch: str, variant: str, test: str) -> lava.JobInput:
    cfg = config.load(REPO / "lab.toml")
    tc = testcase.find(cfg.testcases_dir, test, CLASSES)
    cell = Cell(cfg.arch(arch), cfg.variant(variant), tc)
    return lava.JobInput(
        run_id="20261130-000000-lava-0000",
        cell_id=cell.id,
        arch=cell.arch,
        kernel_url=f"file:///export/artefacts/kernels/KEY/{cell.arch.target}",
        ramdisk_url=f"file:///export/artefacts/initrd/{cell.dirname}-{BOOT_ID}.cpio.gz",
        cmdline=kernel_cmdline(cell.arch, cfg.boot.cmdline, cell.variant.cmdline, tc.cmdline),
        memory_mib=tc.memory_mib or cell.arch.qemu.memory_mib,
        smp=cell.arch.qemu.smp,
        boot_id=BOOT_ID,
        ready_timeout=cfg.boot.ready_timeout,
        test_timeout=tc.timeout + MARGIN,
        metadata={"lab.expected": "|".join(r for r in (cell.expectation() or _no()).outcomes)},
    )


class _no:
    outcomes: tuple[str, ...] = ()


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if REGEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    assert path.read_text() == text, f"{path} differs; regenerate with LAB_REGEN=1 if intended"


@pytest.mark.parametrize(
    ("arch", "variant", "test"), [("x86_64", "C1", "depletion"), ("arm64", "U0", "api")]
)
def test_job_yaml_is_golden(arch: str, variant: str, test: str) -> None:
    text = lava.dump(lava.render_job(_job_input(arch, variant, test)))
    _golden(f"job-{arch}-{variant}-{test}.yaml", text)
    job = yaml.safe_load(text)
    assert job["job_name"] == f"lab {arch}/{variant}/{test} (20261130-000000-lava-0000)"
    assert job["metadata"]["lab.cell"] == f"{arch}/{variant}/{test}"
    boot = job["actions"][1]["boot"]
    assert boot["prompts"] == [f"LABREADY {BOOT_ID}"]


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_device_dictionary_is_golden_and_carries_the_arch_qemu_arguments(arch: str) -> None:
    cfg = config.load(REPO / "lab.toml")
    a = cfg.arch(arch)
    text = lava.dump(lava.render_device(a))
    _golden(f"device-{arch}.yaml", text)
    opts = yaml.safe_load(text)["actions"]["boot"]["methods"]["qemu"]["parameters"]
    assert opts["command"] == a.qemu.binary
    assert ["-M", a.qemu.machine.replace(",", ",")] == opts["options"][0:2]
    assert "-no-reboot" in opts["options"]
    kvm = lava.render_device(a, "kvm")["actions"]["boot"]["methods"]["qemu"]["parameters"]
    assert "kvm" in kvm["options"]


def test_a_cmdline_that_cannot_be_quoted_is_refused() -> None:
    j = _job_input("x86_64", "U0", "api")
    bad = lava.JobInput(**{**j.__dict__, "cmdline": 'console=ttyS0 x="y"'})
    with pytest.raises(UserError, match="cannot be quoted"):
        lava.render_job(bad)


def test_the_monitor_pattern_matches_the_agents_result_record() -> None:
    import re

    payload = json.dumps(
        {"type": "result", "testcase": "api", "verdict": "pass", "observed": "pass"},
        separators=(",", ":"),
    ).encode()
    line = agent.frame(6, payload).decode()
    m = re.search(lava.RESULT_PATTERN, line)
    assert m is not None and m.group("test_case_id") == "api" and m.group("result") == "pass"
    replay = agent.frame(6, payload, agent.REPLAY_TAG).decode()
    assert re.search(lava.RESULT_PATTERN, replay) is None  # LAVA counts each result once


# --- the agent's console channel --------------------------------------------------------


def _console_roundtrip(records: list[dict[str, object]]) -> list[str]:
    """Records sent by a forked 'test case' through the agent's socket and pump, and by
    the agent itself, framed on a pipe standing in for the console."""
    r, w = os.pipe()
    chan = agent.ConsoleChannel(w)
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pump = threading.Thread(target=agent.pump, args=(reader, chan), daemon=True)
    pump.start()
    chan.send({"type": "ready", "boot_id": BOOT_ID})
    pid = os.fork()
    if pid == 0:  # the test-case process: one record per write, as labguest does
        try:
            for rec in records:
                os.write(writer.fileno(), json.dumps(rec).encode() + b"\n")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    writer.close()
    pump.join(10)
    chan.send({"type": "done"})
    chan.replay()
    os.close(w)
    out = b""
    while chunk := os.read(r, 65536):
        out += chunk
    os.close(r)
    return out.decode().splitlines()


def test_records_framed_on_the_console_come_back_in_order() -> None:
    sent = [{"type": "event", "n": i, "text": 'quote " and \\ back'} for i in range(5)]
    lines = _console_roundtrip(sent)
    got = lavalog.extract(["[    1.0] a kernel line", *lines])
    records = [json.loads(r) for r in got.records]
    assert [r["type"] for r in records] == ["ready", *["event"] * 5, "done"]
    assert [r.get("n") for r in records[1:6]] == list(range(5))
    assert got.ended and not got.problems
    assert got.console == "[    1.0] a kernel line\n"


def test_a_record_damaged_on_the_console_is_taken_from_the_replay() -> None:
    lines = _console_roundtrip([{"type": "event", "n": 1}])
    live = next(i for i, x in enumerate(lines) if x.startswith("LABREC 1 "))
    # printk cut into the live copy: its checksum no longer holds.
    lines[live] = lines[live][:30] + "[    2.5] oom-kill:" + lines[live][30:]
    got = lavalog.extract(lines)
    assert [json.loads(r).get("n") for r in got.records] == [None, 1, None]
    assert not got.problems
    # Both copies damaged: the record is reported lost, never guessed.
    replay = next(i for i, x in enumerate(lines) if x.startswith("LABREP 1 "))
    lines[replay] = lines[replay].replace('"n": 1', '"n": 7')
    got = lavalog.extract(lines)
    assert len(got.records) == 2
    assert got.problems == (
        "console: 1 agent record(s) lost (its checksum failed on every copy): seq 1",
    )


def test_a_console_cut_before_the_end_line_is_not_ended() -> None:
    lines = _console_roundtrip([{"type": "event"}])
    got = lavalog.extract([x for x in lines if not x.startswith(("LABREP", "LABREC-END"))])
    assert not got.ended and len(got.records) == 3


# --- real lava-run logs -------------------------------------------------------------------


def test_a_real_log_parses_into_console_results_and_verdict() -> None:
    log = lavalog.parse((LOGS / "x86_64-U0-api.log").read_bytes())
    assert log.job == {"case": "job", "definition": "lava", "result": "pass"}
    assert log.complete
    assert any(line.startswith("[    0.000000] Linux version 6.1") for line in log.console)
    # LAVA escaped every '"' of the console; the record lines carry JSON again.
    framed = [c for c in log.console if c.startswith("LABREC ")]
    assert framed and all('\\"' not in c for c in framed)
    assert "poweroff" not in log.console  # LAVA's own input, echoed back
    assert {"case": "api", "definition": "lab"}.items() <= next(
        r for r in log.results if r.get("definition") == "lab"
    ).items()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    d = tmp_path / "20261130-043945-lava-42fe"
    (d / "cells").mkdir(parents=True)
    shutil.copy(DATA / "run" / "run.json", d / "run.json")
    return d


def _state(run_dir: Path) -> list[tuple[str, bytes]]:
    return sorted(
        (str(p.relative_to(run_dir)), p.read_bytes() if p.is_file() else b"")
        for p in run_dir.rglob("*")
        if p.name != results.LOCK
    )


def test_imported_jobs_classify_as_the_cells_expected_outcome(run_dir: Path) -> None:
    logs = [LOGS / n for n in ("x86_64-U0-api.log", "x86_64-C1-depletion.log")]
    logs.append(LOGS / "arm64-C1-depletion.log")
    done = {c.id: c for c in ingest.import_logs(run_dir, logs)}
    assert {k: (c.observed, c.verdict) for k, c in done.items()} == {
        "x86_64/U0/api": ("pass", "expected"),
        "x86_64/C1/depletion": ("sigbus", "expected"),
        "arm64/C1/depletion": ("sigbus", "expected"),
    }
    cell = done["x86_64/C1/depletion"]
    assert any("potentially unexpected fatal signal 7." in e["text"] for e in cell.lines)
    assert cell.data["lab_host"] == "lava" and cell.data["ready"] is True
    assert cell.data["lava"]["job_result"] == "pass"
    assert (cell.dir / "lava.log").read_bytes() == logs[1].read_bytes()
    # The cell directory re-classifies offline exactly like a local one.
    assert cli.main(["classify", str(cell.dir), "--json"]) == 0
    # `lab report` renders the run like a local one; it is not complete (5 cells not run).
    report.render(run_dir)
    summary = report.text_summary(run_dir)
    assert "3 expected, 0 unexpected, 0 infra, 5 not run" in summary
    assert results.load_run(run_dir)["status"] == "incomplete"


def test_a_boot_timeout_is_the_boot_deadline_and_a_test_timeout_the_test_deadline(
    run_dir: Path, tmp_path: Path
) -> None:
    (boot,) = ingest.import_logs(run_dir, [LOGS / "x86_64-U0-api-boot-timeout.log"])
    assert boot.data["ready"] is False and boot.data["deadline"] == "boot"
    other = tmp_path / "other" / run_dir.name
    (other / "cells").mkdir(parents=True)
    shutil.copy(run_dir / "run.json", other / "run.json")
    (test,) = ingest.import_logs(other, [LOGS / "x86_64-U0-api-test-timeout.log"])
    assert test.data["ready"] is True and test.data["deadline"] == "test"
    assert test.observed != "infra_error"


def test_a_job_lava_could_not_run_is_an_infra_error_with_lavas_message(run_dir: Path) -> None:
    (cell,) = ingest.import_logs(run_dir, [LOGS / "x86_64-U0-api-infra.log"])
    assert (cell.observed, cell.verdict) == ("infra_error", "infra")
    assert cell.rule == "lava-incomplete"
    assert "LAVA Job error: Invalid job data" in cell.detail
    assert "bzImage.missing" in cell.lines[0]["text"]


def _refused(run_dir: Path, logs: list[Path], match: str) -> None:
    before = _state(run_dir)
    with pytest.raises(UserError, match=match):
        ingest.import_logs(run_dir, logs)
    assert _state(run_dir) == before, "a refused import wrote into the run"


def test_a_file_that_is_not_a_lava_log_changes_nothing(run_dir: Path) -> None:
    _refused(run_dir, [REPO / "README.md"], r"README.md: not a usable LAVA job log: line 1")


def test_a_truncated_log_changes_nothing(run_dir: Path, tmp_path: Path) -> None:
    raw = (LOGS / "x86_64-U0-api.log").read_bytes()
    cut = tmp_path / "cut.log"
    cut.write_bytes(raw[: len(raw) // 2])  # mid-record
    _refused(run_dir, [cut], r"cut.log: .*cut off mid-record \(truncated\?\)")
    cut.write_bytes(b"".join(raw.splitlines(keepends=True)[:150]))  # at a line boundary
    _refused(run_dir, [cut], r"cut.log: .*no job result \(the log was cut short")


def test_a_job_of_another_run_changes_nothing(run_dir: Path) -> None:
    run = json.loads((run_dir / "run.json").read_text())
    for entry in run["lava"]["cells"].values():
        entry["boot_id"] = "f" * 16  # the same cells, exported again: other boot ids
    (run_dir / "run.json").write_text(json.dumps(run))
    _refused(
        run_dir,
        [LOGS / "x86_64-U0-api.log"],
        r"a job the lab exported for another run: it names no boot id of run",
    )


def test_a_job_the_lab_did_not_export_changes_nothing(run_dir: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.log"
    foreign.write_text(
        '{"dt": "2026-11-30T04:37:40.3", "lvl": "target", "msg": "Linux version 6.6"}\n'
        '{"dt": "2026-11-30T04:37:41.3", "lvl": "results", "msg": '
        '{"case": "job", "definition": "lava", "result": "pass"}}\n'
    )
    _refused(run_dir, [foreign], r"foreign.log: not a job the lab exported")


def test_a_cell_is_imported_once_and_a_batch_is_all_or_nothing(run_dir: Path) -> None:
    good = LOGS / "x86_64-C1-depletion.log"
    _refused(run_dir, [good, REPO / "README.md"], "README.md")  # nothing of the batch lands
    ingest.import_logs(run_dir, [good])
    _refused(run_dir, [good], r"cell x86_64/C1/depletion is already in")
    _refused(
        run_dir,
        [LOGS / "x86_64-U0-api.log", LOGS / "x86_64-U0-api-infra.log"],
        r"the same cell \(x86_64/U0/api\) as",
    )


def test_a_run_that_is_not_an_export_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir()
    (d / "run.json").write_text(json.dumps({"run_id": "x", "cells": []}))
    with pytest.raises(UserError, match="not a run made by `lab export lava`"):
        ingest.import_logs(d, [LOGS / "x86_64-U0-api.log"])


def test_an_oversized_log_is_refused_without_reading_it_all(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lavalog, "MAX_LOG", 1000)
    _refused(run_dir, [LOGS / "x86_64-U0-api.log"], "larger than 1000 bytes")


def test_the_cli_import_prints_the_cells_and_exits_like_a_run(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        [
            "--config",
            str(REPO / "lab.toml"),
            "import",
            "lava",
            str(LOGS / "x86_64-C1-depletion.log"),
            "--run",
            str(run_dir),
        ]
    )
    out = capsys.readouterr()
    assert "x86_64/C1/depletion: observed sigbus, expected sigbus -> as expected" in out.out
    assert code == 2  # the run is incomplete: 7 planned cells were not imported
    assert cli.main(["--config", str(REPO / "lab.toml"), "import", "lava", "nope.log",
                     "--run", str(run_dir)]) == 2  # fmt: skip
    assert "nope.log: cannot read" in capsys.readouterr().err


def test_export_refuses_a_bad_base_url_and_a_used_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = ["--config", str(REPO / "lab.toml"), "export", "lava", "-a", "x86_64", "-V", "U0"]
    assert cli.main([*lab, "-t", "api", "-o", str(tmp_path / "x"), "--base-url", "ftp://h/"]) == 2
    assert "--base-url 'ftp://h/': use an http:// or https:// URL" in capsys.readouterr().err
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "f").write_text("")
    assert cli.main([*lab, "-t", "api", "-o", str(tmp_path / "used")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_a_cells_initrd_is_one_archive_with_the_overlay_winning() -> None:
    from lab.image import cpio

    files = {"a": (b"base", 0o644), "b/c": (b"kept", 0o755)}
    base = cpio.gzip_bytes(cpio.write_newc(cpio.tree_entries(files)))
    initrd = bundle.cell_initrd(bundle.base_member(base), {"a": (b"new", 0o644)})
    raw = cpio.gunzip_all(initrd)
    assert raw.count(b"TRAILER!!!") == 1  # what `cpio --extract` reads is all of it
    tree = cpio.flatten(cpio.read_newc(raw))
    assert {n: e.data for n, e in tree.items() if e.data} == {"a": b"new", "b/c": b"kept"}
    assert tree["b/c"].perm == 0o755


# --- hostile logs ------------------------------------------------------------------------


def _log_with(tmp_path: Path, extra: str, name: str = "hostile.log") -> Path:
    """The real pass log with one more record line before the job's result."""
    lines = (LOGS / "x86_64-U0-api.log").read_text().splitlines(keepends=True)
    path = tmp_path / name
    path.write_text("".join(lines[:-1]) + extra + "\n" + lines[-1])
    return path


def test_a_yaml_alias_bomb_in_a_log_is_not_expanded(run_dir: Path, tmp_path: Path) -> None:
    levels = ['&a ["xxxxxxxxxxxxxxxx", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for n in range(1, 9):
        prev = chr(ord("a") + n - 1)
        levels.append(f"&{chr(ord('a') + n)} [" + ", ".join([f"*{prev}"] * 9) + "]")
    bomb = '{"dt": "2026-11-30T04:40:00", "lvl": "results", "msg": {"case": "x", ' + (
        '"definition": "lava", "result": "fail", "extra": {"fail": ' + levels[0]
    )
    bomb += ', "more": [' + ", ".join(levels[1:]) + "]}}}"
    _refused(run_dir, [_log_with(tmp_path, bomb)], r"line \d+: not a LAVA log record")


def test_deep_nesting_and_huge_lines_in_a_log_are_refused(run_dir: Path, tmp_path: Path) -> None:
    deep = '{"dt": "x", "lvl": "results", "msg": ' + "[" * 200_000 + "]" * 200_000 + "}"
    _refused(run_dir, [_log_with(tmp_path, deep)], r"line \d+: not a LAVA log record")
    huge = '{"dt": "x", "lvl": "target", "msg": "' + "A" * (2 << 20) + '"}'
    _refused(run_dir, [_log_with(tmp_path, huge)], r"line \d+: longer than")


def test_lavas_error_message_is_bounded_and_made_printable(run_dir: Path, tmp_path: Path) -> None:
    raw = (LOGS / "x86_64-U0-api-infra.log").read_text().splitlines()
    job = json.loads(raw[-1])
    job["msg"]["error_msg"] = "\x1b]0;pwned\x07" + "E" * 100_000
    path = tmp_path / "infra.log"
    path.write_text("\n".join([*raw[:-1], json.dumps(job)]) + "\n")
    (cell,) = ingest.import_logs(run_dir, [path])
    assert cell.observed == "infra_error"
    assert "\x1b" not in cell.detail and "\\x1b]0;pwned" in cell.detail
    assert len(cell.detail) < 2100 and len(json.dumps(cell.data)) < 20_000


def test_a_lava_server_log_as_downloaded_imports_too(run_dir: Path, tmp_path: Path) -> None:
    server = tmp_path / "output.yaml"  # lava-server keeps `- ` before each record
    server.write_text("".join(f"- {line}" for line in (LOGS / "x86_64-C1-depletion.log").open()))
    (cell,) = ingest.import_logs(run_dir, [server])
    assert (cell.observed, cell.verdict) == ("sigbus", "expected")


def test_export_plans_the_cells_of_a_run(tmp_path: Path) -> None:
    from lab.cli import export

    run = tmp_path / "r"
    run.mkdir()
    sel = {"variants": ["C1"], "arches": ["arm64"], "testcases": ["api"], "repeat": 2}
    (run / "run.json").write_text(json.dumps({"selection": {**sel, "shard": None}}))
    args = cli.parser._parser().parse_args(
        ["--config", str(REPO / "lab.toml"), "export", "lava", str(run), "-o", "x"]
    )
    _cfg, cells, selection = export._cells(args)
    assert [c.id for c in cells] == ["arm64/C1/api", "arm64/C1/api#2"]
    assert selection["repeat"] == 2
    both = cli.parser._parser().parse_args(
        ["--config", str(REPO / "lab.toml"), "export", "lava", str(run), "-a", "x86_64", "-o", "x"]
    )
    with pytest.raises(UserError, match="give either RUN or"):
        export._cells(both)


def test_artefact_urls_are_file_urls_or_under_the_base_url(tmp_path: Path) -> None:
    rel = "artefacts/kernels/k/bzImage"
    assert bundle._url(tmp_path, "", rel) == f"file://{tmp_path.resolve()}/{rel}"
    assert bundle._url(tmp_path, "https://lava.example/lab/", rel) == (
        f"https://lava.example/lab/{rel}"
    )


def test_the_agent_on_the_console_reports_a_job_and_replays_it() -> None:
    import subprocess
    import sys

    job = {"mode": "exec", "command": "echo hello; echo oops >&2; exit 3", "channel": "console"}
    code = (
        f"import sys; from lab.guest import agent; sys.exit(agent.run_on_console({job!r}, 'exec'))"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert p.returncode == 3, p.stderr
    got = lavalog.extract(p.stdout.splitlines())
    records = [json.loads(r) for r in got.records]
    assert records[0]["type"] == "ready" and records[-1] == {"type": "done"}
    assert {"type": "exit", "status": 3} in records
    out = "".join(r["data"] for r in records if r["type"] == "output" and r["stream"] == "stdout")
    assert out == "hello\n"
    assert got.ended and not got.problems and got.console == ""
    assert p.stdout.count("LABREP ") == len(records)  # each record printed again


def test_export_without_a_built_kernel_names_lab_build_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from types import SimpleNamespace

    from lab import build

    monkeypatch.setattr(build, "plan", lambda *a, **k: SimpleNamespace(key="0" * 24))
    monkeypatch.setattr(build, "lookup", lambda *a, **k: None)
    res = tmp_path / "results"
    code = cli.main(
        ["--config", str(REPO / "lab.toml"), "export", "lava", "-a", "arm64", "-V", "C1",
         "-t", "api", "-o", str(tmp_path / "out"), "--results", str(res)]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert (
        "arm64/C1: kernel 000000000000000000000000 is not built; run `lab build -a arm64 -V C1`"
        in err
    )
    assert not (tmp_path / "out").exists()
    assert not res.exists() or not any(res.iterdir()), "a run directory was left behind"


def test_a_fifo_named_as_a_log_is_refused_at_once(run_dir: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "job.log"
    os.mkfifo(fifo)
    _refused(run_dir, [fifo], "job.log: not a regular file")
