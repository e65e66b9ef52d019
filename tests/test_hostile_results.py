"""Hostile results trees (issue 15: D15, D17, D18) and offline re-classification (D6).

A results tree may be a CI artefact or a shard copied from another machine: its
cell.json can be anything, its files can be symlinks. `lab report`, `lab merge` and
`lab compare` must give one line or an "unreadable cell" entry, never a traceback,
and read nothing outside the tree. summary.md ends up in $GITHUB_STEP_SUMMARY, so
its prose lines must not carry Markdown or HTML from the run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_report import FULL, Spec, make_run

from lab import classify, cli, report, results
from lab.errors import LabError
from lab.report import markdown as report_md
from lab.run.execute import recorded_facts

SECRET = "root:x:0:0:TOPSECRET-passwd-line:/root:/bin/bash"


def _lab(mini_lab: Path, *argv: str) -> int:
    return cli.main(["--config", str(mini_lab / "lab.toml"), *argv])


def _one_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith("lab:")]
    assert len(lines) == 1, err
    return lines[0]


def _two_cells(tmp_path: Path, name: str = "run") -> Path:
    return make_run(tmp_path, name, [Spec("x86_64/U0/api", "pass"), Spec("x86_64/C0/api", "pass")])


HOSTILE_CELL_JSON = {
    "list": b"[]",
    "no-id": json.dumps({"run_cell_id": "x86_64/C0/api", "observed": "pass"}).encode(),
    "deep": b"[" * 3000 + b"]" * 3000,
    "deep-999": b"[" * 999 + b"]" * 999,
    "truncated": b'{"id": "x86_64/C0/api", "run_cell_id": "x86_64/C0/ap',
    "empty": b"",
    "not-utf8": b'{"id": "\xff\xfe"}',
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_CELL_JSON))
def test_odd_cell_json_is_an_unreadable_cell_not_a_traceback(
    kind: str, tmp_path: Path, mini_lab: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _two_cells(tmp_path)
    (run / "cells" / "x86_64--C0--api" / "cell.json").write_bytes(HOSTILE_CELL_JSON[kind])
    records, bad = results.scan_cells(run)
    assert [r.id for r in records] == ["x86_64/U0/api"]
    assert [u.dir.name for u in bad] == ["x86_64--C0--api"] and "\n" not in bad[0].reason
    if kind == "truncated":
        assert "truncated" in bad[0].reason  # said as such, not silently "not run"

    assert _lab(mini_lab, "report", str(run)) == 2  # incomplete: one cell has no result
    out = capsys.readouterr().out
    assert "UNREADABLE cells/x86_64--C0--api: " in out
    assert "NOT RUN    x86_64/C0/api" in out
    md = (run / "summary.md").read_text()
    assert "## Unreadable cells (1)" in md
    assert 'id="unreadable"' in (run / "report.html").read_text()

    other = _two_cells(tmp_path, "other")
    assert _lab(mini_lab, "compare", str(other), str(run)) == 0
    captured = capsys.readouterr()
    assert "unreadable cell" in _one_line(captured.err)
    assert "x86_64/C0/api" in captured.out  # only in A now

    assert _lab(mini_lab, "merge", "-o", str(tmp_path / "merged"), str(run)) == 2
    line = _one_line(capsys.readouterr().err)
    assert "unreadable cell" in line and "x86_64--C0--api" in line
    assert not (tmp_path / "merged").exists()


def test_run_json_cells_as_a_dict_or_deep_gives_no_traceback(
    tmp_path: Path, mini_lab: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _two_cells(tmp_path)
    meta = json.loads((run / "run.json").read_text())
    meta["cells"] = {"x86_64/U0/api": {"id": "x86_64/U0/api"}}
    (run / "run.json").write_text(json.dumps(meta))
    assert _lab(mini_lab, "report", str(run)) == 0
    assert "2 expected" in capsys.readouterr().out
    assert results.exit_code(meta, results.read_cells(run)) == 0

    (run / "run.json").write_bytes(b'{"cells": ' + b"[" * 5000 + b"]" * 5000 + b"}")
    assert _lab(mini_lab, "report", str(run)) == 2
    assert "nested deeper than" in _one_line(capsys.readouterr().err)


def _symlinked_console(tmp_path: Path) -> Path:
    secret = tmp_path / "passwd"
    secret.write_text(SECRET + "\n" + SECRET + "\n" + SECRET + "\n")
    run = make_run(
        tmp_path,
        "run",
        [
            Spec(
                "x86_64/U0/api",
                "oops",
                evidence=[{"line_no": 2, "text": "oops", "ktime": None, "signature": "oops"}],
            )
        ],
    )
    console = run / "cells" / "x86_64--U0--api" / "console.log"
    console.unlink()
    console.symlink_to(secret)
    return run


def test_report_does_not_follow_a_symlink_out_of_the_tree(tmp_path: Path) -> None:
    run = _symlinked_console(tmp_path)
    report.render(run)
    page = (run / "report.html").read_text()
    assert "TOPSECRET" not in page
    assert 'href="cells/x86_64--U0--api/console.log"' not in page  # not offered as a link


def test_merge_does_not_copy_a_symlink_target(tmp_path: Path) -> None:
    run = _symlinked_console(tmp_path)
    out = report.merge([run], tmp_path / "merged")
    copied = out / "cells" / "x86_64--U0--api"
    assert (copied / "cell.json").is_file()
    assert not os.path.lexists(copied / "console.log")
    for f in out.rglob("*"):
        assert f.is_dir() or SECRET not in f.read_text(errors="replace"), f


def test_a_symlinked_cell_json_or_cell_dir_is_unreadable(tmp_path: Path) -> None:
    run = _two_cells(tmp_path)
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"id": "x86_64/C0/api", "observed": "pass"}))
    f = run / "cells" / "x86_64--C0--api" / "cell.json"
    f.unlink()
    f.symlink_to(outside)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run / "cells" / "zz").symlink_to(elsewhere)
    _records, bad = results.scan_cells(run)
    reasons = {u.dir.name: u.reason for u in bad}
    assert "outside" in reasons["x86_64--C0--api"] and "symlink" in reasons["zz"]


def test_a_fifo_in_the_tree_does_not_hang_the_report(tmp_path: Path) -> None:
    run = _two_cells(tmp_path)
    f = run / "cells" / "x86_64--C0--api" / "cell.json"
    f.unlink()
    os.mkfifo(f)
    _records, bad = results.scan_cells(run)
    assert "not a regular file" in bad[0].reason


# --- summary.md: no Markdown or HTML from the run outside code blocks (D15) ------------


HOSTILE_MD = "<img src=x onerror=alert(1)>[click](http://evil.example) **bold** # `x`"


def test_summary_md_neutralises_run_values(tmp_path: Path) -> None:
    rid = "x86_64/U0/api"
    run = make_run(tmp_path, "run", [Spec(rid, "oops", ("pass",))])
    meta = json.loads((run / "run.json").read_text())
    meta["run_id"] = HOSTILE_MD
    meta["host"]["node"] = HOSTILE_MD
    meta["lab_version"] = HOSTILE_MD
    meta["config"]["file"] = "/x/" + HOSTILE_MD
    meta["merged_from"] = [HOSTILE_MD]
    (run / "run.json").write_text(json.dumps(meta))
    cell = run / "cells" / "x86_64--U0--api" / "cell.json"
    data = json.loads(cell.read_text())
    data["run_cell_id"] = rid + HOSTILE_MD
    data["observed"] = "<b>oops</b>"
    cell.write_text(json.dumps(data))
    md = report.render_markdown(report.load(run))
    in_code = False
    for line in md.splitlines():
        if line.startswith("    ") or not line.strip():
            continue  # an indented code block: shown verbatim
        # Prose: every untrusted value sits in a code span, where nothing is markup.
        prose = _strip_code_spans(line)
        for bad in ("<", ">", "](", "**", "`"):
            assert bad not in prose, line
        in_code = in_code or line.startswith("```")
    assert not in_code
    assert md.startswith("# lab run ``")  # the run id in a code span


def _strip_code_spans(line: str) -> str:
    out, i = [], 0
    while i < len(line):
        if line[i] == "`":
            n = len(line[i:]) - len(line[i:].lstrip("`"))
            end = line.find("`" * n, i + n)
            while end != -1 and line[end + n : end + n + 1] == "`":
                end = line.find("`" * n, end + n + 1)
            assert end != -1, f"unclosed code span: {line}"
            i = end + n
            continue
        out.append(line[i])
        i += 1
    return "".join(out)


@pytest.mark.parametrize(
    "value", ["www.evil.example", "http://evil.example/x", "_em_", "a*b*", "<b>", "`x`", ""]
)
def test_summary_md_values_that_would_be_markup_are_code_spans(value: str) -> None:
    shown = report_md._md(value)
    assert shown.startswith("`") and _strip_code_spans(shown) == ""


def test_summary_md_keeps_plain_names_readable(tmp_path: Path) -> None:
    run = make_run(tmp_path, "20261126-080000-matrix-abcd", FULL, status="interrupted")
    md = report.render_markdown(report.load(run))
    assert md.startswith("# lab run 20261126-080000-matrix-abcd: interrupted")
    assert "## x86_64" in md and "### arm64/C1/depletion: fault_livelock" in md


# --- offline `lab classify CELLDIR` re-classifies as the runner did (D6) -------------------


def _recorded_cell(tmp_path: Path, console: str, facts: classify.RunFacts) -> tuple[Path, str]:
    """A cell directory as lab.run.execute leaves it: the console, the result channel,
    and cell.json with the facts classify was given."""
    d = tmp_path / "cell"
    d.mkdir()
    (d / "console.log").write_text(console)
    (d / "result.jsonl").write_text("".join(json.dumps(r) + "\n" for r in facts.records))
    outcome = classify.classify(console, facts).outcome
    (d / "cell.json").write_text(json.dumps({"id": "x86_64/C0/depletion", **recorded_facts(facts)}))
    return d, outcome


LIVELOCK_CONSOLE = (
    "[    1.000000] secretmem: lab variant pool=cma fault=oom\n"
    + "".join(f"[    {i}.000000] boot line {i}\n" for i in range(2, 9))
    + "LABREADY abc\n"
    + "".join(
        f"[   {i}.000000] Huh VM_FAULT_OOM leaked out to the #PF handler. Retrying PF\n"
        for i in range(10, 30)
    )
)
BANNER = {"pool": "cma", "fault": "oom"}


@pytest.mark.parametrize(
    ("name", "console", "facts"),
    [
        (
            "test-deadline livelock",
            LIVELOCK_CONSOLE,
            classify.RunFacts(
                ready=True,
                deadline="test",
                qemu_exit=None,
                records=(
                    {"type": "ready"},
                    {"type": "start", "test": "depletion"},
                    {"type": "progress", "phase": "fault", "n": 5000},
                ),
                expected_banner=BANNER,
            ),
        ),
        (
            "wrong kernel",
            LIVELOCK_CONSOLE.replace("pool=cma", "pool=none"),
            classify.RunFacts(
                ready=True,
                qemu_exit=0,
                records=({"type": "ready"}, {"type": "result", "result": "pass"}, {"type": "done"}),
                expected_banner=BANNER,
            ),
        ),
    ],
)
def test_offline_classify_matches_the_runner(
    name: str,
    console: str,
    facts: classify.RunFacts,
    tmp_path: Path,
    mini_lab: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    d, outcome = _recorded_cell(tmp_path, console, facts)
    assert _lab(mini_lab, "classify", "--json", str(d)) == 0
    again = json.loads(capsys.readouterr().out)["outcome"]
    assert again == outcome, (name, outcome, again)
    if name == "wrong kernel":
        assert outcome == "infra_error"
    else:
        assert outcome == "fault_livelock"


def test_offline_classify_rejects_hostile_facts(
    tmp_path: Path, mini_lab: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "cell"
    d.mkdir()
    (d / "console.log").write_text("x\n")
    (d / "cell.json").write_text(json.dumps({"ready": "yes"}))
    assert _lab(mini_lab, "classify", str(d)) == 2
    assert "'ready' must be true or false" in _one_line(capsys.readouterr().err)
    (d / "cell.json").write_bytes(b"[" * 5000)
    assert _lab(mini_lab, "classify", str(d)) == 2
    assert "unreadable cell" in _one_line(capsys.readouterr().err)


def test_merge_run_json_of_odd_shapes_is_one_line(tmp_path: Path) -> None:
    run = _two_cells(tmp_path)
    meta = json.loads((run / "run.json").read_text())
    meta["kernels"] = ["not", "a", "dict"]
    meta["selection"] = ["odd"]
    (run / "run.json").write_text(json.dumps(meta))
    other = _two_cells(tmp_path, "other")
    out = report.merge([run, other], tmp_path / "m")
    assert (out / "run.json").is_file()
    with pytest.raises(LabError, match="already exists"):
        report.merge([run], out)


def test_offline_classify_of_a_cell_dir_reads_nothing_outside_it(
    tmp_path: Path, mini_lab: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "passwd"
    secret.write_text(f"[    1.000000] Kernel panic - not syncing: {SECRET}\n")
    d = tmp_path / "cell"
    d.mkdir()
    (d / "console.log").symlink_to(secret)
    (d / "cell.json").write_text(json.dumps({"id": "x86_64/C0/api"}))
    assert _lab(mini_lab, "classify", str(d)) == 2
    captured = capsys.readouterr()
    assert "TOPSECRET" not in captured.out + captured.err
    assert "outside" in _one_line(captured.err)
