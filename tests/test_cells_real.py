"""Cells that go wrong on purpose: a test case that raises, one that overruns its
timeout, a guest that panics mid-test. Each gets its class with evidence and leaves
no QEMU behind. Slow tier (real boots)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from realtools import cmdline, lab, lab_toml_text, qemu_processes

pytestmark = pytest.mark.real

CASES = {
    "raises": (
        """
        def run(t):
            t.event("about to raise")
            raise RuntimeError("boom from the test case")
        """,
        30,
    ),
    "overruns": (
        """
        import time
        def run(t):
            time.sleep(600)
        """,
        5,
    ),
    "panics": (
        """
        def run(t):
            with open("/proc/sysrq-trigger", "w") as f:
                f.write("c")
        """,
        30,
    ),
}


@pytest.fixture(scope="module")
def lab_toml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad-cases")
    tcs = root / "testcases"
    tcs.mkdir()
    for name, (body, timeout) in CASES.items():
        meta = {
            "name": name,
            "purpose": "goes wrong on purpose",
            "timeout": timeout,
            "expect": ["* -> pass"],
        }
        (tcs / f"{name}.py").write_text(f"TESTCASE = {meta!r}\n" + textwrap.dedent(body))
    (root / "lab.toml").write_text(lab_toml_text(tcs))
    return root / "lab.toml"


def _cell(name: str, cfg: Path) -> tuple[int, dict[str, object], dict[str, object]]:
    p = lab(
        "run",
        name,
        "--arch",
        "x86_64",
        "--variant",
        "U0",
        "--json",
        "--results",
        str(cfg.parent / "results" / name),
        config=cfg,
    )
    assert "Traceback" not in p.stderr
    info = json.loads(p.stdout)
    assert not [q for q in qemu_processes() if "bad-cases" in cmdline(q)]
    return p.returncode, info, info["evidence"]  # type: ignore[return-value]


def test_raising_test_case_is_fail_with_the_exception(lab_toml: Path) -> None:
    code, info, ev = _cell("raises", lab_toml)
    assert code == 1 and info["observed"] == "fail"
    assert ev["rule"] == "test-raised"
    assert any("RuntimeError: boom from the test case" in e["text"] for e in ev["evidence"])  # type: ignore[union-attr, index]


def test_overrunning_test_case_is_a_hang_in_the_test_phase(lab_toml: Path) -> None:
    code, info, ev = _cell("overruns", lab_toml)
    assert code == 1 and info["observed"] == "hang"
    assert ev["fields"]["phase"] == "test"  # type: ignore[index]
    assert any("overran its timeout of 5s" in e["text"] for e in ev["evidence"])  # type: ignore[union-attr, index]


def test_guest_panicking_mid_test_is_a_panic_with_its_line(lab_toml: Path) -> None:
    code, info, ev = _cell("panics", lab_toml)
    assert code == 1 and info["observed"] == "panic"
    assert "sysrq triggered crash" in str(ev["fields"]["reason"])  # type: ignore[index]
    assert any("Kernel panic - not syncing" in e["text"] for e in ev["evidence"])  # type: ignore[union-attr, index]
