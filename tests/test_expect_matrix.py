"""Expectation rules, test case metadata and the matrix planner (all pure)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lab import classify, config
from lab.config import failures
from lab.errors import LabError
from lab.run import expect, matrix, testcase


def test_rules_first_match_wins() -> None:
    rules = [
        expect.parse_rule(r, "t", classify.CLASSES)
        for r in (
            "pool=cma fallback=false fault=oom -> fault_livelock",
            "fault=sigbus pool=cma|pmd -> sigbus",
            "pool!=none arch=arm64 -> pass|refused",
            "* -> pass",
        )
    ]
    attrs = expect.attributes({"pool": "cma", "fallback": False, "fault": "oom"}, "x86_64", "C0")
    assert expect.expected(rules, attrs) is rules[0]
    attrs = expect.attributes({"pool": "pmd", "fallback": False, "fault": "sigbus"}, "x86_64", "P")
    assert expect.expected(rules, attrs) is rules[1]
    attrs = expect.attributes({"pool": "pmd", "fallback": True, "fault": "oom"}, "arm64", "P0")
    assert expect.expected(rules, attrs).outcomes == ("pass", "refused")  # type: ignore[union-attr]
    attrs = expect.attributes({"pool": "none"}, "arm64", "U0")
    assert expect.expected(rules, attrs) is rules[3]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("pool=cma", "has no '->'"),
        ("pool=cma -> ", "names no outcome"),
        ("pool -> pass", "bad term 'pool'"),
        ("* -> crashed", "unknown outcome 'crashed'"),
    ],
)
def test_bad_rules(text: str, error: str) -> None:
    with pytest.raises(LabError, match=error):
        expect.parse_rule(text, "where", classify.CLASSES)


def test_repo_testcases_load_without_running_guest_code(repo: Path) -> None:
    before = set(sys.modules)
    tcs = testcase.discover(repo / "testcases", classify.CLASSES)
    assert "labguest" not in set(sys.modules) - before
    names = {t.name for t in tcs}
    assert {
        "api",
        "isolation",
        "depletion",
        "memlock",
        "pressure",
        "memcg",
        "concurrency",
        "fragmentation",
        "kselftest",
    } <= names
    frag = next(t for t in tcs if t.name == "fragmentation")
    assert frag.runs_on("x86_64") and not frag.runs_on("arm64")


def test_testcase_metadata_errors(tmp_path: Path) -> None:
    f = tmp_path / "bad.py"
    f.write_text("TESTCASE = {'name': 'bad', 'timout': 3}\n")
    with pytest.raises(LabError, match="unknown key 'timout'"):
        testcase.load(f)
    f.write_text("TESTCASE = {'name': 'other'}\n")
    with pytest.raises(LabError, match="must equal the file name 'bad'"):
        testcase.load(f)
    f.write_text("TESTCASE = dict(name='bad')\n")
    with pytest.raises(LabError, match="must be a literal dict"):
        testcase.load(f)
    f.write_text("x = 1\n")
    with pytest.raises(LabError, match="no module-level TESTCASE"):
        testcase.load(f)


def _plan(repo: Path, **kw: object) -> list[matrix.Planned]:
    cfg = config.load(repo / "lab.toml")
    tcs = testcase.discover(repo / "testcases", classify.CLASSES)
    return matrix.plan(cfg, tcs, matrix.MatrixSpec(), **kw)  # type: ignore[arg-type]


def test_default_matrix_covers_every_variant_arch_and_testcase(repo: Path) -> None:
    cells = _plan(repo)
    ids = {c.id for c in cells}
    assert "x86_64/C0/depletion" in ids and "arm64/R0/memcg" in ids
    assert "arm64/U0/fragmentation" not in ids  # x86_64 only
    assert len(ids) == len(cells)
    assert all(c.cell.expectation() is not None for c in cells)


def test_filters_globs_and_repeat(repo: Path) -> None:
    cells = _plan(repo, variants=["C*"], arches=["arm64"], tests=["api,memcg"], repeat=3)
    # both OOM eras of each (issue 10)
    assert {c.cell.variant.name for c in cells} == {
        "C0",
        "C1",
        "C2",
        "C0-5.11",
        "C1-5.11",
        "C2-5.11",
    }
    assert {c.repeat for c in cells} == {1, 2, 3}
    assert len({c.dirname for c in cells}) == len(cells)
    with pytest.raises(LabError, match="variant 'Z\\*' matches nothing"):
        _plan(repo, variants=["Z*"])


def test_shards_partition_the_matrix_by_kernel(repo: Path) -> None:
    cells = _plan(repo)
    shards = [matrix.shard(cells, k, 3) for k in (1, 2, 3)]
    ids = [c.id for s in shards for c in s]
    assert sorted(ids) == sorted(c.id for c in cells)  # each cell exactly once
    kernels = [{c.kernel for c in s} for s in shards]
    assert not (kernels[0] & kernels[1]) and not (kernels[1] & kernels[2])
    assert matrix.shard(cells, 2, 3) == shards[1]  # deterministic
    with pytest.raises(LabError):
        matrix.parse_shard("4/3")


def test_failure_modes_parse_and_answer(repo: Path) -> None:
    cfg = config.load(repo / "lab.toml")
    modes = failures.parse(cfg.extra.get("failure_mode"), cfg.file, classify.CLASSES)
    hocko = failures.find(modes, "hocko-oom-never-recovers", cfg.file)
    assert hocko.selects("arm64", "C0", "depletion") and not hocko.selects(
        "arm64", "C1", "depletion"
    )
    assert failures.answer(hocko, "oom_kill") == "reproduced"
    assert failures.answer(hocko, "pass") == "not reproduced"
    assert failures.answer(hocko, "fault_livelock") == "different outcome"
    # An experiment that did not run answers nothing (a failed precondition, a harness death).
    assert failures.answer(hocko, "infra_error") == "no answer"
    assert hocko.lore_url.startswith("https://lore.kernel.org/r/")


def test_planner_and_classifier_import_nothing_that_spawns() -> None:
    code = (
        "import sys, lab.run.matrix, lab.classify, lab.run.cell, lab.run.expect, lab.config; "
        "bad = {'subprocess', 'pexpect', 'fabric', 'paramiko', 'multiprocessing', "
        "'lab.proc', 'lab.vm.machine', 'lab.vm.boot', 'lab.build', 'lab.run.execute'}; "
        "print(sorted(bad & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"


def test_guest_code_imports_nothing_from_the_host_package(repo: Path) -> None:
    import ast

    for path in [*(repo / "lab" / "guest").glob("*.py"), *(repo / "testcases").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n == "lab" or n.startswith("lab.") for n in names), (path, names)


def test_failure_modes_select_every_era(repo: Path) -> None:
    """Issue 10: a ledger entry naming C0 is answered in both eras (C0 and C0-5.11),
    one line per (claim, era, arch)."""
    cfg = config.load(repo / "lab.toml")
    modes = failures.parse(cfg.extra.get("failure_mode"), cfg.file, classify.CLASSES)
    hocko = failures.find(modes, "hocko-oom-never-recovers", cfg.file)
    names = failures.variant_names(hocko, [(v.name, v.params) for v in cfg.variants])
    assert sorted(names) == ["C0", "C0-5.11"]
    by_name = {v.name: v for v in cfg.variants}
    assert failures.era_of("C0-5.11", by_name["C0-5.11"].params) == ("5.11", "C0")
    assert failures.era_of("C0", by_name["C0"].params) == ("6.1", "C0")
    assert failures.era_of("C0-5.11", {}) == ("", "C0-5.11")  # no era axis: name as is
    assert hocko.selects("x86_64", "C0-5.11", "depletion", base="C0")
    assert not hocko.selects("x86_64", "C1-5.11", "depletion", base="C1")
    assert failures.summarise(["reproduced", "reproduced"]) == "reproduced"
    assert failures.summarise(["reproduced", "different outcome"]) == "mixed"
    assert failures.summarise([]) == "not run"


def _scoped(tmp_path: Path, meta: str) -> testcase.TestCase:
    f = tmp_path / "scoped.py"
    f.write_text(f"TESTCASE = {{'name': 'scoped', {meta}}}\n")
    return testcase.load(f, classify.CLASSES)


def test_a_testcase_scoped_to_families_and_params_plans_only_those_pairs(
    repo: Path, tmp_path: Path
) -> None:
    """TESTCASE['families'] and ['params'] say which variants a test case is about;
    the planner pairs it with those only (issue 13: an LKDTM test case on LKDTM kernels)."""
    cfg = config.load(repo / "lab.toml")
    tcs = testcase.discover(repo / "testcases", classify.CLASSES)
    everything = matrix.plan(cfg, tcs, matrix.MatrixSpec())
    cma = _scoped(
        tmp_path, "'families': ['secret*'], 'params': {'pool': ['cma'], 'fallback': [False]}"
    )
    cells = matrix.plan(cfg, [*tcs, cma], matrix.MatrixSpec())
    mine = [c for c in cells if c.cell.testcase.name == "scoped"]
    assert mine and all(
        c.cell.variant.params["pool"] == "cma" and c.cell.variant.params["fallback"] is False
        for c in mine
    )
    picked = {c.cell.variant.name for c in mine}
    wanted = {
        v.name
        for v in cfg.variants
        if v.family == "secretmem" and v.params["pool"] == "cma" and not v.params["fallback"]
    }
    assert picked == wanted and picked != {v.name for v in cfg.variants}
    # the other test cases are planned as before
    assert [c.id for c in cells if c.cell.testcase.name != "scoped"] == [c.id for c in everything]
    # unscoped (the default) means every variant
    assert _scoped(tmp_path, "'arches': ['*']").applies_to("anything", {})


@pytest.mark.parametrize(
    ("meta", "error"),
    [
        ("'families': ['kunit']", r"TESTCASE\['families'\]: 'kunit' matches no variant family"),
        ("'params': {'pools': ['cma']}", r"no variant has the parameter 'pools'"),
        ("'params': {'pool': 'cma'}", r"\['params'\]: 'pool': 'cma' is not valid"),
        ("'params': {'pool': []}", r"at least one value"),
        ("'families': 'secretmem'", r"\['families'\]: expected variant families"),
    ],
)
def test_testcase_scope_errors_are_one_clear_line(
    repo: Path, tmp_path: Path, meta: str, error: str
) -> None:
    cfg = config.load(repo / "lab.toml")
    with pytest.raises(LabError, match=error) as exc:
        matrix.plan(cfg, [_scoped(tmp_path, meta)], matrix.MatrixSpec())
    assert "\n" not in str(exc.value)
