"""Known issues (`[[known_issues]]` in lab.toml): an understood disagreement with an
expectation is reported with its reason and link but does not fail the run; any other
unexpected cell still does (issue 12: the nightly fails on unexpected cells)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from lab import config, report, results
from lab.config import known
from lab.errors import UserError

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "data" / "run" / "results"
GOOD = {"cells": "*/R0/pressure", "observed": ["oom_kill"], "reason": "why", "link": "docs/x.md"}


def _parse(tmp_path: Path, entries: Any) -> list[known.KnownIssue]:
    (tmp_path / "docs").mkdir(exist_ok=True)
    (tmp_path / "docs" / "x.md").write_text("# x\n")
    return known.parse(entries, tmp_path / "lab.toml")


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"cells": "R0/pressure"}, "known_issues[0].cells: 'R0/pressure' is not a cell pattern"),
        ({"cells": "*/R0/press ure"}, "is not a cell pattern"),
        ({"observed": ["oom"]}, "known_issues[0].observed: unknown outcome 'oom'; valid: pass"),
        ({"observed": []}, "name at least one outcome"),
        ({"reason": " "}, "known_issues[0].reason: say why"),
        ({"link": "see the docs"}, "is not a link; give a docs/ path or an https:// URL"),
        ({"link": "docs/../../etc/passwd"}, "a docs/ path stays inside docs/"),
        ({"cell": "*/R0/pressure"}, "known_issues[0]"),  # a typo'd key
        ({"reason": 7}, "known_issues[0].reason: expected a string"),
    ],
)
def test_a_bad_known_issue_is_one_line_naming_the_key(
    tmp_path: Path, change: dict[str, Any], says: str
) -> None:
    entry = {**GOOD, **change}
    with pytest.raises(UserError) as exc:
        _parse(tmp_path, [entry])
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "lab.toml")) and says in msg, msg


def test_known_issues_must_be_an_array_of_tables(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="known_issues must be an array of tables"):
        _parse(tmp_path, {"cells": "*/*/*"})


def test_lab_toml_loads_its_known_issues_and_refuses_a_bad_one(mini_lab: Path) -> None:
    f = mini_lab / "lab.toml"
    (mini_lab / "docs").mkdir()
    (mini_lab / "docs" / "x.md").write_text("x\n")
    text = f.read_text()
    f.write_text(
        text + '\n[[known_issues]]\ncells = "x86_64/demo-*/api"\nobserved = ["fail"]\n'
        'reason = "r"\nlink = "docs/x.md"\n'
    )
    (issue,) = config.load(f).known_issues
    assert issue.covers("x86_64/demo-1/api", "fail") and not issue.covers(
        "x86_64/demo-1/api", "hang"
    )
    f.write_text(text + '\n[[known_issues]]\ncells = "x86_64"\n')
    with pytest.raises(UserError, match=r"lab.toml: known_issues\[0\].observed: missing"):
        config.load(f)


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = heading.lstrip("#").strip().lower()
    return "".join(c for c in text if c.isalnum() or c in " -_").replace(" ", "-")


def test_the_repository_lab_toml_known_issues_link_to_what_exists() -> None:
    """A copy of lab.toml elsewhere (the real tier's) loads without the docs next to it;
    the repository's own links are checked here: the file and its heading exist."""
    cfg = config.load(REPO / "lab.toml")
    for issue in cfg.known_issues:
        if not issue.link.startswith("docs/"):
            continue
        path, _, anchor = issue.link.partition("#")
        doc = REPO / path
        assert doc.is_file(), issue.link
        if anchor:
            slugs = {_slug(line) for line in doc.read_text().splitlines() if line.startswith("#")}
            assert anchor in slugs, f"{issue.link}: no such heading"


def _fixture(tmp_path: Path) -> Path:
    (src,) = [p for p in FIXTURE.iterdir() if (p / "run.json").is_file()]
    run = tmp_path / src.name
    shutil.copytree(src, run, symlinks=True)
    return run


def test_a_known_issue_is_reported_with_its_reason_but_does_not_fail_the_run(
    tmp_path: Path,
) -> None:
    """The fixture run has one unexpected cell (x86_64/C0/depletion, repetition 2:
    oom_kill) and infrastructure errors (exit 2 either way). Without the infra cells
    the run would exit 1; listing the cell as a known issue makes it 0, a known issue
    for another outcome of the same cell does not."""
    run = _fixture(tmp_path)
    cells = [c for c in results.read_cells(run) if c.verdict != "infra"]
    issues = _parse(
        tmp_path,
        [
            {
                **GOOD,
                "cells": "x86_64/C0/depletion*",
                "reason": "a finding",
                "observed": ["oom_kill"],
            }
        ],
    )
    assert [c.run_cell_id for c in known.unknown_unexpected([], cells)] == ["x86_64/C0/depletion#2"]
    assert known.gate(1, [], cells) == 1
    assert known.gate(1, issues, cells) == 0
    assert known.gate(2, issues, cells) == 2  # a known issue never excuses a cell not run
    other = _parse(tmp_path, [{**GOOD, "cells": "x86_64/C0/depletion*", "observed": ["hang"]}])
    assert known.gate(1, other, cells) == 1

    report.render(run, known.lookup(issues))
    summary = (run / "summary.md").read_text()
    assert "## Unexpected (1; 1 of them known issues (lab.toml))" in summary
    assert "    known:     a finding (docs/x.md)" in summary
    assert "[known issue: a finding (docs/x.md)]" in report.text_summary(run, known.lookup(issues))
    # without known issues the report is what it was
    report.render(run)
    assert "known" not in (run / "summary.md").read_text().split("## Unexpected", 1)[1]


def test_lab_report_exits_0_when_every_unexpected_cell_is_a_known_issue(
    tmp_path: Path, mini_lab: Path
) -> None:
    """Through the CLI (what the nightly runs): the same run, with and without the
    known issue in lab.toml."""
    from lab import cli

    run = _fixture(tmp_path)
    keep = set()
    for d in (run / "cells").iterdir():  # the infra cells aside: only the unexpected one
        data = json.loads((d / "cell.json").read_text())
        if data.get("verdict") == "infra":
            shutil.rmtree(d)
        else:
            keep.add(data["run_cell_id"])
    meta = json.loads((run / "run.json").read_text())
    meta["cells"] = [c for c in meta["cells"] if c["id"] in keep]
    (run / "run.json").write_text(json.dumps(meta))
    assert results.exit_code(results.load_run(run), results.read_cells(run)) == 1
    f = mini_lab / "lab.toml"
    assert cli.main(["-c", str(f), "report", str(run)]) == 1
    (mini_lab / "docs").mkdir()
    (mini_lab / "docs" / "x.md").write_text("x\n")
    f.write_text(
        f.read_text() + '\n[[known_issues]]\ncells = "x86_64/C0/depletion*"\n'
        'observed = ["oom_kill"]\nreason = "a finding"\nlink = "docs/x.md"\n'
    )
    assert cli.main(["-c", str(f), "report", str(run)]) == 0
    assert "known:     a finding (docs/x.md)" in (run / "summary.md").read_text()


def test_lab_report_markdown_writes_the_observation_grid_of_a_real_run(
    tmp_path: Path, mini_lab: Path
) -> None:
    """docs/observed/ is generated from a run by a command, never typed (issue 12): the
    grid, the run it came from, every cell not as expected with its detail, evidence and
    known issue. Text from the results tree cannot inject Markdown."""
    from lab import cli

    run = _fixture(tmp_path)
    for d in (run / "cells").iterdir():
        if d.name == "x86_64--C0--depletion--r2":
            cell = json.loads((d / "cell.json").read_text())
            cell["detail"] = "oom_kill: x\n# injected heading\n<script>alert(1)</script>"
            (d / "cell.json").write_text(json.dumps(cell))
    (mini_lab / "docs").mkdir()
    (mini_lab / "docs" / "x.md").write_text("x\n")
    f = mini_lab / "lab.toml"
    f.write_text(
        f.read_text() + '\n[[known_issues]]\ncells = "x86_64/C0/depletion*"\n'
        'observed = ["oom_kill"]\nreason = "a finding"\nlink = "docs/x.md"\n'
    )
    out = tmp_path / "observed.md"
    cli.main(["-c", str(f), "report", str(run), "--markdown", str(out)])
    doc = out.read_text()
    assert doc.startswith(f"<!-- Generated by `lab report RUN --markdown` from run {run.name}.")
    assert "| test case | U0 | C0 |" in doc or "| test case |" in doc
    assert "**fault_livelock** ✗ (known issue)" in doc, doc
    assert "### `x86_64/C0/depletion#2`: oom_kill (expected fault_livelock)" in doc
    assert "Known issue: `a finding` (`docs/x.md`)" in doc
    assert "\n# injected" not in doc and "\n<script>" not in doc
    assert "    oom_kill: x # injected heading <script>" in doc  # inside a code block
    # the infrastructure errors are listed too: no answer is no outcome
    assert "### `arm64/P1/depletion`: infra_error" in doc
