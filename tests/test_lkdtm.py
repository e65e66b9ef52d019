"""The lkdtm family (issue 13): its test cases meet only its variants, every crash type
has a prediction for every debug config, and the CI budget holds (one LKDTM kernel in
the real tier: lkdtm-plain on x86_64; the rest is nightly)."""

from __future__ import annotations

import re
from pathlib import Path

from lab import config
from lab.classify import CLASSES
from lab.run import matrix, testcase

REPO = Path(__file__).resolve().parent.parent
CFG = config.load(REPO / "lab.toml")
TCS = testcase.discover(REPO / "testcases", CLASSES)
LKDTM = [tc for tc in TCS if tc.name.startswith("lkdtm_")]
CONFIGS = ("plain", "kasan", "ubsan", "lockdep")


def test_lkdtm_variants_are_the_debug_axis_without_the_secretmem_series() -> None:
    variants = {v.name: v for v in CFG.variants if v.family == "lkdtm"}
    assert sorted(variants) == sorted(f"lkdtm-{d}" for d in CONFIGS)
    for v in variants.values():
        assert v.series == () and v.banner == ""


def test_lkdtm_and_secretmem_test_cases_meet_only_their_own_family() -> None:
    # the default matrix, as `lab matrix` and ci/nightly.yml plan it
    cells = matrix.plan(CFG, TCS, matrix.parse_spec(CFG.extra.get("matrix"), str(CFG.file)))
    pairs = {(c.cell.variant.family, c.cell.testcase.name.startswith("lkdtm_")) for c in cells}
    assert pairs == {("lkdtm", True), ("secretmem", False)}
    lkdtm = [c for c in cells if c.cell.variant.family == "lkdtm"]
    # one cell per crash type x config x arch: nightly runs the debug configs on both arches
    assert len(lkdtm) == len(LKDTM) * len(CONFIGS) * 2 and len(LKDTM) >= 9


def test_every_crash_type_predicts_a_kernel_class_or_pass_for_every_config() -> None:
    for tc in LKDTM:
        for debug in CONFIGS:
            for arch in ("x86_64", "arm64"):
                attrs = {"debug": debug, "arch": arch, "variant": f"lkdtm-{debug}"}
                rule = next((r for r in tc.rules if r.matches(attrs)), None)
                assert rule is not None, f"{tc.name}: no rule for {attrs}"
                assert set(rule.outcomes) <= {"pass", "bug", "oops", "warn"}, (tc.name, rule)


def test_the_real_tier_builds_one_lkdtm_kernel_plain_on_x86_64() -> None:
    named: set[str] = set()
    for path in sorted((REPO / "tests").glob("*.py")):
        if path.name == Path(__file__).name:
            continue
        text = path.read_text()
        if "pytest.mark.real" not in text:
            continue
        named |= set(re.findall(r"lkdtm-[a-z*]+", text))
        # `lab build --all` would build all eight LKDTM kernels
        assert not re.search(r'_build\("--all"|"build", "--all"', text), path.name
        if "lkdtm-" in text:
            assert '"x86_64"' in text and '"arm64"' not in text, path.name
    assert named == {"lkdtm-plain"}, named
