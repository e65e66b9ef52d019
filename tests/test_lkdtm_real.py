"""The LKDTM family's one CI cell (issue 13's budget: one LKDTM kernel in the real tier,
the plain config on one arch, one smoke cell). Builds lkdtm-plain for x86_64 (cached
after the first run), boots it under QEMU and provokes LKDTM's BUG: the kernel's own
report must decide the cell, with its title. The debug configs (kasan, ubsan, lockdep)
and arm64 run in ci/nightly.yml and `lab matrix -V 'lkdtm*'`. Slow tier (real boots)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from realtools import REPO, cmdline, lab, qemu_processes

pytestmark = pytest.mark.real


def test_lkdtm_bug_on_the_plain_kernel_is_a_kernel_bug_titled_after_lkdtm_bug(
    tmp_path: Path,
) -> None:
    p = lab(
        "run",
        "lkdtm_bug",
        *("--arch", "x86_64", "--variant", "lkdtm-plain", "--json"),
        *("--results", str(tmp_path / "results")),
        config=REPO / "lab.toml",
    )
    assert "Traceback" not in p.stderr
    info = json.loads(p.stdout)
    ev = info["evidence"]
    # predicted in testcases/lkdtm_bug.py: `kernel BUG at` decides, the die header after
    # it does not make it an oops
    assert info["observed"] == "bug", (info["observed"], ev["detail"])
    assert ev["title"] == "kernel BUG in lkdtm_BUG"
    assert any("kernel BUG at drivers/misc/lkdtm/bugs.c" in e["text"] for e in ev["evidence"])
    assert p.returncode == 0  # as expected
    assert not [q for q in qemu_processes() if str(tmp_path) in cmdline(q)]
