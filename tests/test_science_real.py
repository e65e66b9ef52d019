"""The science holds: the spec-anchored cells give the outcomes secretmem-spec.md predicts.

Slow tier (real kernels, QEMU). One `lab matrix` over the cells whose expectation comes
straight from the spec (docs/variants.md) on both arches; the test FAILS on any cell
whose outcome is not its expectation, unless lab.toml lists it under [[known_issues]]
(a finding, with its reason and link), and on any cell that did not run. It reads the
verdict the way the nightly does: `lab matrix`'s exit status, 0 only when every
unexpected cell is a known issue.

    LAB_SCIENCE_FLIP=1      flip one expectation (api: `* -> pass` becomes `* -> sigbus`)
                            in a copy of the test cases: the test must then fail, naming
                            the api cells (the check that this test can go red)
    LAB_SCIENCE_ONLY=GLOB   only the cells whose run cell id matches (e.g. '*/C0/api'),
                            to show the flip on a few cells
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from pathlib import Path

import pytest
from realtools import REPO, lab, lab_toml_text, only_run, run_cells

from lab import config as labconfig
from lab.config import known

pytestmark = pytest.mark.real

# (test case, variant): spec 3(c) depletion, 3(e2) memcg, 3(d) memlock, 3(a) api.
CELLS = [
    ("depletion", "C0"),  # fault_livelock: the v16 "Huh" spin
    ("depletion", "C1"),  # sigbus
    ("depletion", "R0"),  # refused: ftruncate ENOMEM
    ("depletion", "P0"),  # oom_kill: RAM ran out under the hoard, in the victim's fault
    ("depletion", "P1"),  # fault_livelock: no order-9 chunk
    ("memcg", "U0"),  # fault_livelock
    ("memcg", "U1"),  # sigbus
    ("memlock", "U0"),  # sigbus at the (L+1)-th page
    ("api", "C0"),  # pass
]
ARCHES = ("x86_64", "arm64")


def _selected(only: str) -> list[tuple[str, str]]:
    return [
        (t, v)
        for t, v in CELLS
        if not only or any(fnmatch.fnmatchcase(f"{a}/{v}/{t}", only) for a in ARCHES)
    ]


def _flip(testcases: Path) -> None:
    api = testcases / "api.py"
    text = api.read_text()
    assert '"expect": ["* -> pass"]' in text
    api.write_text(text.replace('"expect": ["* -> pass"]', '"expect": ["* -> sigbus"]'))


def test_spec_anchored_cells_are_as_expected(tmp_path: Path) -> None:
    only = os.environ.get("LAB_SCIENCE_ONLY", "")
    cells = _selected(only)
    assert cells, f"LAB_SCIENCE_ONLY={only!r} selects none of {CELLS}"
    testcases = None
    if os.environ.get("LAB_SCIENCE_FLIP"):
        testcases = tmp_path / "testcases"
        shutil.copytree(REPO / "testcases", testcases)
        _flip(testcases)
    config = tmp_path / "lab.toml"
    config.write_text(lab_toml_text(testcases))
    # lab.toml's docs links are relative to it: known issues name docs/...
    (tmp_path / "docs").symlink_to(REPO / "docs")
    results = tmp_path / "results"
    is_known = known.lookup(labconfig.load(config).known_issues)
    failures = []
    for testcase in sorted({t for t, _ in cells}):
        variants = [v for t, v in cells if t == testcase]
        args = ["matrix", "-t", testcase, "-j", "1", "--results", str(results / testcase)]
        for v in variants:
            args += ["-V", v]
        for a in ARCHES:
            args += ["-a", a]
        p = lab(*args, config=config, timeout=3600)
        run = only_run(results / testcase)
        got = run_cells(run)
        for cell_id, data in sorted(got.items()):
            if only and not fnmatch.fnmatchcase(cell_id, only):
                continue
            note = is_known(cell_id, str(data["observed"]))
            if data["verdict"] == "unexpected" and note is not None:
                print(f"known issue: {cell_id}: {data['observed']}: {note[0]} ({note[1]})")
            elif data["verdict"] != "expected":
                failures.append(
                    f"{cell_id}: {data['observed']} (expected {'|'.join(data['expected'])}; "
                    f"verdict {data['verdict']}); see {run / 'cells' / str(data['_dir'])}"
                )
        if p.returncode != 0:
            # 1: an unexpected cell that no known issue covers; 2: a cell not run or infra
            failures.append(f"lab {' '.join(args)} exited {p.returncode}:\n{p.stdout[-2000:]}")
        expected_ids = {f"{a}/{v}/{testcase}" for a in ARCHES for v in variants}
        missing = sorted(expected_ids - set(got))
        if missing:
            failures.append(f"cells that did not run: {missing}")
    assert not failures, "the science does not hold:\n" + "\n".join(failures)
