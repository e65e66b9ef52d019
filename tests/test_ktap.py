"""KTAP/TAP parsing (lab.ktap) on real selftest output and the spec's forms."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest

from lab import ktap

DATA = Path(__file__).parent / "data" / "ktap"


def test_memfd_secret_as_the_lab_recorded_it() -> None:
    """arm64/U0/kselftest, 6.1's memfd_secret: its stdout is a pipe, so each forked child
    flushes a copy of the parent's unflushed header and earlier results; only the last
    document is the program's own."""
    r = ktap.parse((DATA / "memfd_secret-arm64-6.1.txt").read_text())
    assert [(x.number, x.name, x.status) for x in r.results] == [
        (1, "file IO is blocked as expected", "pass"),
        (2, "process_vm_read is blocked as expected", "pass"),
        (3, "ptrace is blocked as expected", "pass"),
    ]
    assert r.plan == 3 and r.totals["pass"] == 3 and r.totals["fail"] == 0
    assert r.problems == [
        "line 6: a new 'TAP version 13' restarts the output",
        "line 11: a new 'TAP version 13' restarts the output",
    ]
    assert r.counts()["pass"] == 3


KTAP_NESTED = """\
KTAP version 1
1..2
  KTAP version 1
  1..3
  ok 1 case_1
  not ok 2 case_2
  # case_2: EXPECTATION FAILED at lib/x.c:12
  ok 3 case_3 # SKIP not on this arch
not ok 1 suite
ok 2 other # TODO not written
"""

TAP14_SUBTEST = """\
TAP version 14
1..1
    # Subtest: outer
    1..2
        # Subtest: inner
        1..1
        ok 1 - deep # XFAIL known bug
    ok 1 - inner
    not ok 2 - timed # TIMEOUT 60 s
ok 1 - outer
"""


def test_nested_ktap_names_each_subtest_under_its_parent() -> None:
    r = ktap.parse(KTAP_NESTED)
    got = [(x.name, x.status, x.reason, x.leaf) for x in r.results]
    assert got == [
        ("suite.case_1", "pass", "", True),
        ("suite.case_2", "fail", "", True),
        ("suite.case_3", "skip", "not on this arch", True),
        ("suite", "fail", "", False),
        ("other", "todo", "not written", True),
    ]
    assert r.counts() == {**dict.fromkeys(ktap.STATUSES, 0), "pass": 1, "fail": 1, "skip": 1,
                          "todo": 1}  # fmt: skip
    assert not r.problems


def test_tap14_subtest_headers_and_directives_three_levels_deep() -> None:
    r = ktap.parse(TAP14_SUBTEST)
    assert [(x.name, x.status) for x in r.leaves()] == [
        ("outer.inner.deep", "xfail"),
        ("outer.timed", "timeout"),
    ]
    assert [x.name for x in r.results if not x.leaf] == ["outer.inner", "outer"]


def test_bail_out_and_a_short_plan_are_reported() -> None:
    r = ktap.parse("TAP version 13\n1..3\nok 1 a\nBail out! no memfd_secret\nok 2 b\n")
    assert r.bailed == "no memfd_secret" and [x.name for x in r.results] == ["a"]
    r = ktap.parse("TAP version 13\n1..3\nok 1 a\n")
    assert r.problems == ["plan 1..3 but 1 top-level results"]


def test_console_timestamps_and_unnamed_results() -> None:
    r = ktap.parse("[    1.000000] KTAP version 1\n[    1.000001] 1..1\n[    1.2] ok 1\n")
    assert [(x.name, x.status) for x in r.results] == [("#1", "pass")]


def test_not_ktap_is_nothing() -> None:
    r = ktap.parse("hello\nok computer\n# not a plan\n")
    assert not r.found and not r.results


def test_hostile_output_is_bounded() -> None:
    huge = "ok 1 " + "x" * 10_000_000 + "\n"
    r = ktap.parse("TAP version 13\n1..1\n" + huge)
    assert len(r.results[0].name) <= 200
    deep = "".join(" " * (2 * i) + "KTAP version 1\n" for i in range(1, 200))
    deep += "".join(" " * (2 * i) + f"ok 1 t{i}\n" for i in range(199, 0, -1)) + "ok 1 top\n"
    r = ktap.parse("KTAP version 1\n1..1\n" + deep)
    assert r.results[-1].name == "top" and len(max((x.path for x in r.results), key=len)) <= 200
    many = "ok 1 t\n" * (ktap.MAX_LINES + 10)
    r = ktap.parse(many)
    assert r.problems[0].startswith(f"{ktap.MAX_LINES + 10} lines")


KUNIT_DATA = sorted(
    glob.glob(str(Path.home() / ".cache/lab/src/*/tree/tools/testing/kunit/test_data"))
)


@pytest.mark.skipif(not KUNIT_DATA, reason="no extracted kernel tree in ~/.cache/lab/src")
def test_the_kernel_trees_own_kunit_test_logs() -> None:
    """kunit_tool_test.py's expectations for the same logs, on this parser."""
    d = Path(KUNIT_DATA[0])

    def parse(name: str) -> ktap.Ktap:
        return ktap.parse((d / name).read_text(errors="replace"))

    ktap_out = parse("test_parse_ktap_output.log")
    assert [x.name for x in ktap_out.leaves()] == ["suite.case_1", "suite.case_2", "suite.case_3"]
    assert parse("test_is_test_passed-all_passed_nested.log").counts()["fail"] == 0
    assert parse("test_is_test_passed-failure.log").counts()["fail"] == 1
    skips = parse("test_skip_tests.log")
    assert [x.name for x in skips.leaves() if x.status == "skip"] == ["example.example_skip_test"]
    assert parse("test_skip_all_tests.log").counts()["skip"] == 5
    assert parse("test_kernel_panic_interrupt.log").problems  # crashed: the plan is short
    kself = parse("test_is_test_passed-kselftest.log")
    assert [x.status for x in kself.results] == ["pass", "pass"]


def _records() -> list[dict[str, object]]:
    lines = (DATA / "memfd_secret-arm64-6.1.txt").read_text().splitlines()
    return [
        {"type": "ready", "boot_id": "b0"},
        {"type": "result", "testcase": "kselftest", "verdict": "pass", "observed": "pass",
         "data": {"ktap": lines}},
        {"type": "done"},
    ]  # fmt: skip


def test_cell_fields_from_the_agents_records() -> None:
    f = ktap.cell_fields(_records())
    assert [(s["name"], s["status"]) for s in f["subtests"]] == [
        ("file IO is blocked as expected", "pass"),
        ("process_vm_read is blocked as expected", "pass"),
        ("ptrace is blocked as expected", "pass"),
    ]
    assert f["ktap"]["kselftest"]["counts"]["pass"] == 3
    assert ktap.cell_fields([{"type": "result", "data": {"tap": ["ok 1"]}}]) == {}
    assert ktap.cell_fields([{"type": "result", "data": {"ktap": "not a list"}}]) == {}


def test_junit_has_one_testcase_per_subtest(tmp_path: Path) -> None:
    import json
    import shutil
    import xml.etree.ElementTree as ET

    from lab import report

    run = "20261126-080000-matrix-5e1f"
    run_dir = tmp_path / run
    shutil.copytree(Path(__file__).parent / "data" / "run" / "results" / run, run_dir)
    cell = run_dir / "cells" / "x86_64--U0--pressure" / "cell.json"
    data = json.loads(cell.read_text())
    fields = ktap.cell_fields(_records())
    fields["subtests"][1]["status"] = "fail"
    fields["subtests"].append({"testcase": "kselftest", "name": "s", "status": "skip",
                               "reason": "no"})  # fmt: skip
    fields["subtests"].append({"name": 7, "status": "bogus"})  # a foreign entry: skipped
    cell.write_text(json.dumps({**data, **fields}))
    report.render(run_dir)
    root = ET.parse(run_dir / "junit.xml").getroot()
    cases = [c for c in root.iter("testcase") if c.get("classname") == "lab.x86_64.U0.pressure"]
    assert [c.get("name") for c in cases] == [
        "U0/pressure/file IO is blocked as expected",
        "U0/pressure/process_vm_read is blocked as expected",
        "U0/pressure/ptrace is blocked as expected",
        "U0/pressure/s",
    ]
    assert cases[1].find("failure") is not None and cases[3].find("skipped") is not None
    suite = next(s for s in root.iter("testsuite") if s.get("name") == "lab.x86_64")
    n_cases = len(list(suite.iter("testcase")))
    assert int(suite.get("tests") or 0) == n_cases
