"""Reports, compare and merge on synthetic run directories (and real ones when present).

The synthetic run mirrors what lab.run.execute and lab.run.orchestrate.run_matrix write:
run.json with the planned cells and provenance, one directory per finished cell with cell.json,
evidence.json and the logs. It holds every case a report must show: expected and
unexpected cells, an infra cell, repetitions that disagree, arches that disagree,
cells not run (an interrupted run), and hostile text from the guest.
"""

from __future__ import annotations

import html.parser
import json
import re
import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lab import report
from lab.classify import CLASSES
from lab.errors import LabError
from lab.report import markdown as report_md

REPO = Path(__file__).resolve().parent.parent

EVIL = "<script>alert('x')</script> & \x1b[31mred\x1b[0m \x00nul </pre>"

PARAMS = {
    "U0": {
        "pool": "none",
        "fault": "oom",
        "fallback": False,
        "reserve": False,
        "charge": "page",
        "v16_literal": False,
    },
    "C0": {
        "pool": "cma",
        "fault": "oom",
        "fallback": False,
        "reserve": False,
        "charge": "page",
        "v16_literal": False,
    },
    "C1": {
        "pool": "cma",
        "fault": "sigbus",
        "fallback": False,
        "reserve": False,
        "charge": "page",
        "v16_literal": False,
    },
}


@dataclass
class Spec:
    """One run cell of a synthetic run; observed None = planned but not run."""

    id: str  # run cell id, "arch/variant/testcase[#N]"
    observed: str | None
    expected: tuple[str, ...] = ("pass",)
    detail: str = ""
    evidence: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 12.5


def _parts(rid: str) -> tuple[str, str, str, int]:
    base, _, rep = rid.partition("#")
    arch, variant, testcase = base.split("/")
    return arch, variant, testcase, int(rep or 1)


def _dirname(rid: str) -> str:
    arch, variant, testcase, rep = _parts(rid)
    return f"{arch}--{variant}--{testcase}" + (f"--r{rep}" if rep > 1 else "")


def make_run(
    root: Path,
    name: str,
    specs: Sequence[Spec],
    *,
    status: str = "complete",
    config_sha: str = "c" * 64,
    kernel_dir: Path | None = None,
    shard: str | None = None,
) -> Path:
    run_dir = root / name
    (run_dir / "cells").mkdir(parents=True)
    kernels = {}
    for arch, variant in dict.fromkeys(_parts(s.id)[:2] for s in specs):
        kd = (kernel_dir or root / "kernels") / f"{arch}-{variant}"
        kd.mkdir(parents=True, exist_ok=True)
        (kd / "config").write_text("CONFIG_SECRETMEM=y\n")
        (kd / "fragment.config").write_text(
            f"# --- secretmem.config.j2\nCONFIG_SECRETMEM=y\n# {variant} <b>bold</b>\n"
        )
        kernels[f"{arch}/{variant}"] = {
            "key": f"key-{arch}-{variant}",
            "dir": str(kd),
            "image_sha256": "i" * 64,
            "config_sha256": "f" * 64,
            "source": {"identity": "tarball:sha256:abc", "description": "linux-source-6.1"},
            "series": [
                {"series": "secretmem-lab", "patch": "0001-secretmem.patch", "sha256": "p" * 64}
            ],
            "fragments": [{"template": "secretmem.config.j2", "sha256": "t" * 64}],
            "toolchain": {"gcc_version": "gcc 12.2.0"},
            "durations": {"make": 100.5},
            "reproducer": f"lab --config lab.toml build --arch {arch} --variant {variant}",
        }
    not_run = [s.id for s in specs if s.observed is None]
    run = {
        "run_id": name,
        "lab_version": "0.1.0",
        "created": "2026-11-26T08:00:00+00:00",
        "finished": "2026-11-26T09:00:00+00:00",
        "status": status,
        "host": {
            "node": "vm",
            "kernel": "6.1.0",
            "machine": "x86_64",
            "python": "3.11.7",
            "cpus": 8,
        },
        "config": {"file": "/work/main/lab.toml", "sha256": config_sha},
        "selection": {"variants": [], "arches": [], "testcases": [], "repeat": 1, "shard": shard},
        "cells": [
            {"id": s.id, "dir": f"cells/{_dirname(s.id)}", "kernel": "/".join(_parts(s.id)[:2])}
            for s in specs
        ],
        "kernels": kernels,
        "build_failures": {"arm64/P1": "mm/secretmem.c:12: error: x"},
        "images": {"x86_64": {"key": "img-x86", "path": "/cache/images/x86/base.cpio.gz"}},
        "not_run": not_run,
        "durations": {"last_invocation": 3600.0},
    }
    (run_dir / "run.json").write_text(json.dumps(run, indent=2))
    for s in specs:
        if s.observed is not None:
            write_cell(run_dir, s)
    return run_dir


def write_cell(run_dir: Path, s: Spec) -> Path:
    arch, variant, testcase, rep = _parts(s.id)
    assert s.observed is not None
    d = run_dir / "cells" / _dirname(s.id)
    d.mkdir(parents=True)
    console = [f"[    {i:>3}.000000] boot line {i}" for i in range(1, 61)]
    for e in s.evidence:
        if e["line_no"]:
            console[e["line_no"] - 1] = e["text"]
    (d / "console.log").write_text("\n".join(console) + "\n")
    (d / "console.timed.log").write_text("")
    (d / "result.jsonl").write_text('{"type":"ready"}\n')
    (d / "qemu.argv").write_text("qemu-system-x86_64\n")
    verdict = (
        "infra"
        if s.observed == "infra_error"
        else "expected"
        if s.observed in s.expected
        else "unexpected"
    )
    (d / "evidence.json").write_text(
        json.dumps(
            {
                "outcome": s.observed,
                "detail": s.detail,
                "rule": s.observed.replace("_", "-"),
                "rule_text": f"The rule for {s.observed}.",
                "evidence": s.evidence,
                "matched": [],
                "fields": {},
            }
        )
    )
    base_id = f"{arch}/{variant}/{testcase}"
    (d / "cell.json").write_text(
        json.dumps(
            {
                "id": base_id,
                "run_cell_id": s.id,
                "repeat": rep,
                "arch": arch,
                "variant": variant,
                "testcase": testcase,
                "params": PARAMS.get(variant, {}),
                "observed": s.observed,
                "expected": list(s.expected),
                "expected_rule": f"pool={PARAMS.get(variant, {}).get('pool')} -> "
                f"{'|'.join(s.expected)}",
                "verdict": verdict,
                "detail": s.detail or f"{s.observed}: something",
                "kernel": {
                    "key": f"key-{arch}-{variant}",
                    "image_sha256": "i" * 64,
                    "config_sha256": "f" * 64,
                    "dir": "/cache/kernels/k",
                },
                "image": {"key": "img", "path": "/cache/img"},
                "accel": "kvm",
                "accel_reason": "probe ok",
                "cmdline": "console=ttyS0 secretmem.enable=1",
                "timings": {"ready": 1.5, "agent": 3.0, "qemu": s.seconds - 0.5, "cell": s.seconds},
                "qemu_exit": 0,
                "qemu_killed": False,
                "reproducer": (
                    f"lab --config lab.toml run {testcase} --arch {arch} --variant {variant}"
                ),
                "host": "vm",
                "finished": "2026-11-26T08:30:00+00:00",
            }
        )
    )
    return d


def ev(line_no: int, text: str, signature: str) -> dict[str, Any]:
    return {
        "line_no": line_no,
        "text": text,
        "ktime": 12.5 if line_no else None,
        "signature": signature,
    }


LIVELOCK = [
    ev(30, "[   30.000000] secretmem: fault retry livelock", "fault_oom_huh"),
    ev(31, "[   31.000000] context line", "context:fault_oom_huh"),
]
SIGBUS = [
    ev(40, "[   40.000000] potentially unexpected fatal signal 7.", "fatal_sigbus"),
    ev(0, "agent: depletion: task t pid 40 (python3) signaled SIGBUS", "agent:task"),
]

# The full matrix of the synthetic run: 2 arches x 3 variants x 2 test cases, with
# x86_64/C0/depletion repeated 3 times (the repeats disagree).
OOM = [
    ev(20, "[   20.000000] python3 invoked oom-killer: gfp_mask=0xcc0", "oom_invoked"),
    ev(21, "[   21.000000] CPU: 0 PID: 40 Comm: python3", "context:oom_invoked"),
    ev(25, "[   25.000000] Out of memory: Killed process 40 (python3)", "oom_killed_process"),
    ev(0, "agent: depletion: task t pid 40 (python3) signaled SIGKILL", "agent:task"),
]
FULL = [
    Spec("x86_64/U0/depletion", "oom_kill", ("oom_kill",), evidence=OOM),
    Spec(
        "x86_64/U0/api",
        "pass",
        detail=EVIL,
        evidence=[ev(5, "[    5.000000] " + EVIL.replace("\x00", ""), "tail")],
    ),
    Spec("x86_64/C0/depletion", "fault_livelock", ("fault_livelock",), evidence=LIVELOCK),
    Spec("x86_64/C0/depletion#2", "fault_livelock", ("fault_livelock",), evidence=LIVELOCK),
    Spec(
        "x86_64/C0/depletion#3", "sigbus", ("fault_livelock",), "sigbus: task t got SIGBUS", SIGBUS
    ),
    Spec("x86_64/C0/api", "pass"),
    Spec("x86_64/C1/depletion", "sigbus", ("sigbus",), evidence=SIGBUS),
    Spec("x86_64/C1/api", "infra_error", detail="agent error: no python3"),
    Spec("arm64/U0/depletion", "oom_kill", ("oom_kill",)),
    Spec("arm64/U0/api", "pass"),
    Spec("arm64/C0/depletion", None, ("fault_livelock",)),
    Spec("arm64/C0/api", None),
    Spec(
        "arm64/C1/depletion",
        "fault_livelock",
        ("sigbus",),
        "fault_livelock: 5000 fault retries in 10 s",
        LIVELOCK,
    ),
    Spec("arm64/C1/api", "hang", detail="hang (test phase): deadline passed"),
]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path, "20261126-080000-matrix-abcd", FULL, status="interrupted")


class Dom(html.parser.HTMLParser):
    """Elements with their attributes, in document order (enough to check the report)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    def find(self, tag: str, **want: str) -> list[dict[str, str]]:
        def ok(a: Mapping[str, str]) -> bool:
            for k, v in want.items():
                k = k.rstrip("_").replace("_", "-")
                if k == "class":
                    if v not in a.get("class", "").split():
                        return False
                elif a.get(k) != v:
                    return False
            return True

        return [a for t, a in self.elements if t == tag and ok(a)]


def rendered(run_dir: Path) -> tuple[str, Dom]:
    report.render(run_dir)
    text = (run_dir / "report.html").read_text()
    return text, Dom(text)


def grid_cell(dom: Dom, cell: str) -> dict[str, str]:
    found = [a for a in dom.find("td", class_="cell") if a.get("data-cell") == cell]
    assert len(found) == 1, cell
    return found[0]


# --- HTML -------------------------------------------------------------------------------


def test_render_writes_three_reports_atomically(run_dir: Path) -> None:
    report.render(run_dir)
    for name in report.REPORTS:
        assert (run_dir / name).stat().st_size > 0
    assert not list(run_dir.glob(".*.tmp")), "a temporary file was left behind"


def test_grid_per_arch_with_a_cell_per_slot(run_dir: Path) -> None:
    _, dom = rendered(run_dir)
    assert [a["data-arch"] for a in dom.find("table", class_="grid")] == ["x86_64", "arm64"]
    slots = {
        f"{a}/{v}/{t}"
        for a in ("x86_64", "arm64")
        for v in ("U0", "C0", "C1")
        for t in ("depletion", "api")
    }
    cells = dom.find("td", class_="cell")
    assert {c["data-cell"] for c in cells} == slots
    for c in cells:
        assert {"data-observed", "data-expected", "data-verdict", "data-runs"} <= set(c)
    # Each grid cell links to its own details section.
    anchors = {a["data-cell"]: a["id"] for a in dom.find("section", class_="cell-details")}
    assert set(anchors) == slots and len(set(anchors.values())) == len(slots)
    links = {a["href"][1:] for a in dom.find("a") if a.get("href", "").startswith("#cell-")}
    assert links == set(anchors.values())


def test_cells_coloured_by_observed_outcome(run_dir: Path) -> None:
    text, dom = rendered(run_dir)
    c = grid_cell(dom, "x86_64/U0/depletion")
    assert c["data-observed"] == "oom_kill" and "outcome-oom_kill" in c["class"].split()
    assert c["data-verdict"] == "expected"
    # A fixed, distinct colour per class, and a legend swatch for each.
    colours = {}
    for cls in CLASSES:
        m = re.search(rf"\.outcome-{cls}\{{background-color:(#[0-9a-f]+)", text)
        assert m, cls
        colours[cls] = m.group(1)
        assert dom.find("span", class_=f"outcome-{cls}"), f"no legend swatch for {cls}"
    assert len(set(colours.values())) == len(CLASSES)


def test_unexpected_infra_and_not_run_cells_are_marked(run_dir: Path) -> None:
    text, dom = rendered(run_dir)
    bad = grid_cell(dom, "arm64/C1/depletion")
    assert "unexpected" in bad["class"].split()
    assert (bad["data-observed"], bad["data-expected"]) == ("fault_livelock", "sigbus")
    assert "exp: sigbus" in text
    infra = grid_cell(dom, "x86_64/C1/api")
    assert {"infra", "outcome-infra_error"} <= set(infra["class"].split())
    nr = grid_cell(dom, "arm64/C0/api")
    assert "not_run" in nr["class"].split() and nr["data-observed"] == "not_run"
    ok = grid_cell(dom, "x86_64/C1/depletion")
    assert "unexpected" not in ok["class"].split()
    assert re.search(r"td\.cell\.unexpected\{box-shadow:inset", text)
    counts = {a["data-count"] for a in dom.find("span") if "data-count" in a}
    assert counts == {"expected", "unexpected", "infra", "not_run"}
    assert "8 expected" in text and "3 unexpected" in text


def test_repeats_show_distribution_and_flag_unstable(run_dir: Path) -> None:
    text, dom = rendered(run_dir)
    c = grid_cell(dom, "x86_64/C0/depletion")
    assert c["data-runs"] == "3"
    assert c["data-distribution"] == "2x fault_livelock, 1x sigbus"
    assert c["data-observed"] == "fault_livelock"  # the majority colours the cell
    assert {"unstable", "unexpected"} <= set(c["class"].split())
    assert "UNSTABLE" in text
    # Each repetition has its own details block.
    runs = {a["data-run-cell"] for a in dom.find("details", class_="run")}
    assert {"x86_64/C0/depletion", "x86_64/C0/depletion#2", "x86_64/C0/depletion#3"} <= runs
    stable = grid_cell(dom, "x86_64/U0/depletion")
    assert "unstable" not in stable["class"].split()


def test_cross_arch_disagreement_is_flagged(run_dir: Path) -> None:
    _, dom = rendered(run_dir)
    for arch in ("x86_64", "arm64"):
        assert "xarch" in grid_cell(dom, f"{arch}/C1/depletion")["class"].split()
    assert "xarch" not in grid_cell(dom, "x86_64/U0/depletion")["class"].split()
    # x86_64 infra vs arm64 hang is the lab's trouble, not a disagreement.
    assert "xarch" not in grid_cell(dom, "arm64/C1/api")["class"].split()
    assert [a["data-pair"] for a in dom.find("tr") if "data-pair" in a] == ["C1/depletion"]


def test_details_evidence_links_and_provenance(run_dir: Path) -> None:
    text, dom = rendered(run_dir)
    hrefs = [a["href"] for a in dom.find("a")]
    assert "cells/arm64--C1--depletion/console.log" in hrefs
    assert "cells/x86_64--C0--depletion--r3/result.jsonl" in hrefs
    for f in ("evidence.json", "qemu.argv"):
        assert f"cells/arm64--C1--depletion/{f}" in hrefs
    assert "console.log:30" in text and "secretmem: fault retry livelock" in text
    assert "<mark>    30 | [   30.000000] secretmem: fault retry livelock</mark>" in text
    assert "lab --config lab.toml run depletion --arch arm64 --variant C1" in text
    assert "pool=cma -&gt; sigbus" in text  # the expectation rule
    # Provenance: per kernel, file:// links and the embedded (escaped) fragment.
    kernels = {a["data-kernel"] for a in dom.find("section", class_="kernel")}
    assert kernels == {f"{a}/{v}" for a in ("x86_64", "arm64") for v in ("U0", "C0", "C1")}
    assert any(h.startswith("file:///") and h.endswith("/fragment.config") for h in hrefs)
    assert "# C1 &lt;b&gt;bold&lt;/b&gt;" in text
    assert "0001-secretmem.patch" in text and "secretmem.config.j2" in text
    assert "mm/secretmem.c:12: error: x" in text  # build failure
    # Variant rows show the params that differ between variants.
    assert "pool=cma fault=sigbus" in text


def test_untrusted_text_is_escaped_and_report_self_contained(run_dir: Path) -> None:
    text, _ = rendered(run_dir)
    assert "<script" not in text.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert "\x1b" not in text and "\x00" not in text and "\\x1b[31mred" in text
    for tag in ("<link", "<img", "<iframe", "src=", "http://", "https://", "@import"):
        assert tag not in text.lower(), tag
    # The page forbids scripts and fetches itself: the CSP stays whatever the template does.
    csp = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
    assert f'<meta http-equiv="Content-Security-Policy" content="{csp}">' in text.split("<body>")[0]


# --- summary.md -----------------------------------------------------------------------------


def _block(md: str, heading: str) -> list[str]:
    lines = md.splitlines()
    i = lines.index(heading) + 2
    out = []
    while i < len(lines) and lines[i].startswith("    "):
        out.append(lines[i])
        i += 1
    return out


def test_markdown_grids_are_aligned_plain_text(run_dir: Path) -> None:
    report.render(run_dir)
    md = (run_dir / "summary.md").read_text()
    for arch in ("x86_64", "arm64"):
        grid = _block(md, f"## {arch}")
        header = grid[0]
        assert header.split() == ["variant", "depletion", "api"]
        starts = [m.start() for m in re.finditer(r"\S+", header)]
        for row in grid[1:]:
            assert [m.start() for m in re.finditer(r"\S+", row)] == starts, row
        assert all(len(line) <= 80 for line in grid)
    x86 = dict(line.split(None, 1) for line in _block(md, "## x86_64")[1:])
    assert x86["U0"].split() == ["oom", "pass"]
    assert x86["C0"].split() == ["livelk*~", "pass"]
    assert x86["C1"].split() == ["sigbus!", "infra"]
    arm = dict(line.split(None, 1) for line in _block(md, "## arm64")[1:])
    assert arm["C0"].split() == ["-", "-"]
    assert arm["C1"].split() == ["livelk*!", "hang*"]
    assert "livelk = fault_livelock" in md and "`*` unexpected" in md


def test_markdown_lists_unexpected_with_evidence_and_reproducer(run_dir: Path) -> None:
    report.render(run_dir)
    md = (run_dir / "summary.md").read_text()
    assert "### arm64/C1/depletion: fault_livelock (expected sigbus)" in md
    part = md.split("### arm64/C1/depletion")[1].split("###")[0]
    # The most telling line: the deciding signature, not its context.
    assert "console.log:30: [   30.000000] secretmem: fault retry livelock" in part
    assert "context line" not in part
    assert "reproduce: lab --config lab.toml run depletion --arch arm64 --variant C1" in part
    c0 = md.split("### x86_64/C0/depletion")[1].split("###")[0]
    assert "2x fault_livelock, 1x sigbus" in c0
    assert "console.log:40: [   40.000000] potentially unexpected fatal signal 7." in c0
    assert "## Infrastructure errors (1)" in md and "agent error: no python3" in md
    assert "## Unstable (1)" in md and "## Arches disagree (1)" in md
    assert "## Not run (2)" in md and "arm64/C0/api" in md
    assert "\x1b" not in md and "\x00" not in md
    # Quoted console lines and commands stay whole; everything else fits a mail.
    prose = [
        line
        for line in md.splitlines()
        if not line.startswith(("    reproduce:", "    evidence:", "    bundle:", "provenance:"))
    ]
    assert max(len(line) for line in prose) <= 80


def test_most_telling_evidence_is_the_deciding_report_line(run_dir: Path) -> None:
    cells = {c.run_cell_id: c for c in report.load(run_dir).cells}
    oom = cells["x86_64/U0/depletion"].telling()
    assert oom is not None and oom.signature == "oom_killed_process"
    livelock = cells["arm64/C1/depletion"].telling()
    assert livelock is not None and livelock.line_no == 30  # not its context line
    assert cells["arm64/C1/api"].telling() is None


def test_markdown_table_splits_wide_grids() -> None:
    rows = [["variant", *(f"testcase{i}" for i in range(12))], ["C0", *(["fault_livelock"] * 12)]]
    lines = report_md._md_table(rows)
    assert max(len(line) for line in lines) <= report.MD_WIDTH
    blocks = "\n".join(lines).split("\n\n")
    assert len(blocks) > 1 and all(b.split("\n")[1].split()[0] == "C0" for b in blocks)


# --- junit.xml ------------------------------------------------------------------------------


def test_junit_is_valid_with_failures_errors_skipped(run_dir: Path) -> None:
    report.render(run_dir)
    root = ET.parse(run_dir / "junit.xml").getroot()
    assert root.tag == "testsuites"
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {"lab.x86_64", "lab.arm64"}

    def count(suite: ET.Element, tag: str) -> int:
        return sum(1 for tc in suite.iter("testcase") for _ in tc.iter(tag))

    x86, arm = suites["lab.x86_64"], suites["lab.arm64"]
    assert (count(x86, "failure"), count(x86, "error"), count(x86, "skipped")) == (1, 1, 0)
    assert (count(arm, "failure"), count(arm, "error"), count(arm, "skipped")) == (2, 0, 2)
    assert (x86.get("tests"), x86.get("failures"), x86.get("errors")) == ("8", "1", "1")
    assert (arm.get("tests"), arm.get("failures"), arm.get("skipped")) == ("6", "2", "2")
    assert root.get("tests") == "14"
    names = [tc.get("name") for tc in x86.iter("testcase")]
    assert "C0/depletion#3" in names and "U0/api" in names
    assert all(tc.get("classname") == "lab.x86_64" for tc in x86.iter("testcase"))
    bad = next(tc for tc in arm.iter("testcase") if tc.get("name") == "C1/depletion")
    failure = bad.find("failure")
    assert failure is not None and failure.text is not None
    assert "observed fault_livelock, expected sigbus" in failure.get("message", "")
    assert "console.log:30: [   30.000000] secretmem: fault retry livelock" in failure.text
    assert bad.get("time") == "12.500"


# --- text summary ---------------------------------------------------------------------------


def test_text_summary(run_dir: Path) -> None:
    text = report.text_summary(run_dir)
    first = text.splitlines()[0]
    assert "interrupted" in first
    assert "8 expected, 3 unexpected, 1 infra, 2 not run" in first
    assert "UNEXPECTED arm64/C1/depletion: fault_livelock (expected sigbus)" in text
    assert "UNEXPECTED x86_64/C0/depletion#3: sigbus" in text
    assert "INFRA      x86_64/C1/api: agent error: no python3" in text
    assert "NOT RUN    arm64/C0/api" in text
    assert "UNSTABLE   x86_64/C0/depletion: 2x fault_livelock, 1x sigbus" in text
    for name in report.REPORTS:
        assert str(run_dir / name) in text


def test_text_summary_caps_long_lists(tmp_path: Path) -> None:
    specs = [Spec(f"x86_64/V{i}/api", None) for i in range(30)]
    text = report.text_summary(make_run(tmp_path, "r", specs, status="interrupted"))
    assert "... and 10 more NOT RUN" in text


# --- compare --------------------------------------------------------------------------------


def test_compare_orders_regressions_first(tmp_path: Path) -> None:
    a = make_run(
        tmp_path,
        "a",
        [
            Spec("x86_64/U0/api", "pass"),
            Spec("x86_64/C0/api", "pass"),  # -> sigbus: regression
            Spec("x86_64/C1/api", "sigbus"),  # -> pass: fix
            Spec("x86_64/C1/depletion", "sigbus", ("fault_livelock",)),  # -> oops: changed
            Spec("x86_64/P0/api", "pass"),  # only in A (not run in B)
            Spec("x86_64/P1/api", "pass"),  # only in A (absent in B)
        ],
    )
    b = make_run(
        tmp_path,
        "b",
        [
            Spec("x86_64/U0/api", "pass"),
            Spec("x86_64/C0/api", "sigbus"),
            Spec("x86_64/C1/api", "pass"),
            Spec("x86_64/C1/depletion", "oops", ("fault_livelock",)),
            Spec("x86_64/P0/api", None),
            Spec("arm64/U0/api", "pass"),  # only in B
        ],
        status="interrupted",
    )
    changes = report.compare(a, b)
    assert [(c.kind, c.id) for c in changes] == [
        ("regression", "x86_64/C0/api"),
        ("fix", "x86_64/C1/api"),
        ("changed", "x86_64/C1/depletion"),
        ("only_a", "x86_64/P0/api"),
        ("only_a", "x86_64/P1/api"),
        ("only_b", "arm64/U0/api"),
    ]
    assert changes[3].b_verdict == "not run" and changes[4].b_verdict == "absent"
    text = report.format_compare(changes, "a", "b")
    lines = text.splitlines()
    reg = next(i for i, line in enumerate(lines) if line.startswith("Regressions"))
    fix = next(i for i, line in enumerate(lines) if line.startswith("Fixes"))
    assert reg < fix
    assert re.search(r"x86_64/C0/api +pass -> sigbus +\(expected -> unexpected\)", text)
    assert "1 regression(s), 1 fix(es), 1 other change(s), 3 in one run only" in text
    assert report.format_compare([], "a", "a") == "no cell changed between a and a"
    assert report.compare(a, a) == []


# --- merge ----------------------------------------------------------------------------------


def _shards(tmp_path: Path, n: int) -> list[Path]:
    """FULL dealt into n shards by kernel, as lab.run.matrix.shard does."""
    kernels = sorted({"/".join(_parts(s.id)[:2]) for s in FULL})
    out = []
    for k in range(n):
        mine = {x for i, x in enumerate(kernels) if i % n == k}
        specs = [s for s in FULL if "/".join(_parts(s.id)[:2]) in mine]
        out.append(
            make_run(
                tmp_path,
                f"shard{k + 1}",
                specs,
                shard=f"{k + 1}/{n}",
                status="interrupted" if any(s.observed is None for s in specs) else "complete",
            )
        )
    return out


def test_merge_shards_gives_the_unsharded_run(tmp_path: Path) -> None:
    whole = make_run(tmp_path / "whole", "whole", FULL, status="interrupted")
    shards = _shards(tmp_path, 3)
    out = report.merge(shards, tmp_path / "merged")
    run = json.loads((out / "run.json").read_text())
    planned = [c["id"] for c in json.loads((whole / "run.json").read_text())["cells"]]
    assert sorted(c["id"] for c in run["cells"]) == sorted(planned)
    assert run["merged_from"] == ["shard1", "shard2", "shard3"]
    assert run["status"] == "incomplete"  # FULL has two cells not run
    assert sorted(run["not_run"]) == ["arm64/C0/api", "arm64/C0/depletion"]
    assert run["selection"]["shard"] is None
    assert set(run["kernels"]) == {
        f"{a}/{v}" for a in ("x86_64", "arm64") for v in ("U0", "C0", "C1")
    }
    for name in report.REPORTS:
        assert (out / name).is_file()
    # Same cells, same outcomes as the unsharded run.
    assert report.compare(whole, out) == []
    assert sorted(p.name for p in (out / "cells").iterdir()) == sorted(
        p.name for p in (whole / "cells").iterdir()
    )


def test_merge_complete_when_every_planned_cell_ran(tmp_path: Path) -> None:
    done = [s for s in FULL if s.observed is not None]
    a = make_run(tmp_path, "a", done[:5])
    b = make_run(tmp_path, "b", done[3:])  # overlapping, identical cells: fine
    out = report.merge([a, b], tmp_path / "m")
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["not_run"] == []
    assert len(run["cells"]) == len(done)


def test_merge_refuses_conflicts_and_bad_input(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a", [Spec("x86_64/U0/api", "pass")])
    b = make_run(tmp_path, "b", [Spec("x86_64/U0/api", "sigbus")])
    with pytest.raises(LabError, match="x86_64/U0/api has different results"):
        report.merge([a, b], tmp_path / "m1")
    assert not (tmp_path / "m1").exists()
    c = make_run(tmp_path, "c", [Spec("x86_64/C0/api", "pass")], config_sha="d" * 64)
    with pytest.raises(LabError, match="different configs"):
        report.merge([a, c], tmp_path / "m2")
    (tmp_path / "junk").mkdir()
    with pytest.raises(LabError, match="junk"):
        report.merge([a, tmp_path / "junk"], tmp_path / "m3")
    with pytest.raises(LabError, match="already exists"):
        report.merge([a], a)


# --- real runs (read-only) ------------------------------------------------------------------


def _real_runs() -> list[Path]:
    roots = [Path("/tmp/labdev/results"), Path(__file__).resolve().parent.parent / "results"]
    return sorted(p.parent for r in roots if r.is_dir() for p in r.glob("*/run.json"))


def test_real_runs_render(tmp_path: Path) -> None:
    """Any real run on this machine renders (a copy: the originals are left alone)."""
    runs = _real_runs()
    if not runs:
        pytest.skip("no real matrix runs under /tmp/labdev/results or results/")
    for src in runs:
        dst = tmp_path / src.name
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*report.REPORTS))
        report.render(dst)
        ET.parse(dst / "junit.xml")
        Dom((dst / "report.html").read_text())
        assert report.text_summary(dst)


# --- headless Chromium ----------------------------------------------------------------------

CHROMIUM_PACKAGE = "chromium"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        f"headless Chromium not found: install the Debian package "
        f"'{CHROMIUM_PACKAGE}' (apt-get install -y --no-install-recommends "
        f"{CHROMIUM_PACKAGE})"
    )


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", "not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


@pytest.mark.real
def test_report_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    chromium = _chromium()
    report.render(run_dir)
    url = (run_dir / "report.html").resolve().as_uri()
    png = tmp_path / "report.png"
    # A profile dir of its own, so the test neither uses nor locks a user's profile.
    common = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1400,1000",
    ]
    shot = subprocess.run(
        [*common, f"--screenshot={png}", url], capture_output=True, text=True, timeout=120
    )
    assert png.is_file(), f"no screenshot: {shot.stderr[-2000:]}"
    assert png.stat().st_size > 20_000, "screenshot suspiciously small (blank page?)"
    assert _png_size(png) == (1400, 1000)
    dump = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dump.returncode == 0, dump.stderr[-2000:]
    dom = Dom(dump.stdout)
    assert [a["data-arch"] for a in dom.find("table", class_="grid")] == ["x86_64", "arm64"]
    cells = dom.find("td", class_="cell")
    assert len(cells) == 12
    assert all(c.get("data-observed") and "data-expected" in c for c in cells)
    assert grid_cell(dom, "arm64/C1/depletion")["class"].split()[:3] == [
        "cell",
        "outcome-fault_livelock",
        "unexpected",
    ]


def test_malformed_and_unknown_values_still_render(tmp_path: Path) -> None:
    """A results tree may be damaged or come from another lab version: render what is
    there, never crash on a field of the wrong type."""
    run_dir = make_run(
        tmp_path, "odd", [Spec("x86_64/U0/api", "pass"), Spec("x86_64/U0/odd", "pass")]
    )
    d = run_dir / "cells" / "x86_64--U0--odd"
    cell = json.loads((d / "cell.json").read_text())
    cell.update(
        {
            "observed": "new<class>",
            "expected": "pass",
            "timings": "soon",
            "params": ["x"],
            "kernel": None,
            "repeat": "two",
            "verdict": "weird",
        }
    )
    (d / "cell.json").write_text(json.dumps(cell))
    (d / "evidence.json").write_text(json.dumps({"evidence": [1, {"line_no": "x"}]}))
    _, dom = rendered(run_dir)
    odd = grid_cell(dom, "x86_64/U0/odd")
    assert "outcome-other" in odd["class"].split() and odd["data-observed"] == "new<class>"
    assert odd["data-verdict"] == "infra"  # an unknown verdict is not trusted as expected
    ET.parse(run_dir / "junit.xml")
    empty = tmp_path / "empty"
    (empty / "cells").mkdir(parents=True)
    (empty / "run.json").write_text(json.dumps({"run_id": "empty", "status": "running"}))
    report.render(empty)
    assert "0 expected, 0 unexpected, 0 infra, 0 not run" in report.text_summary(empty)


def test_report_and_summary_show_the_title(run_dir: Path) -> None:
    """A classification's CI-bot style title (issue 13) is in summary.md and report.html,
    for a cell that has one; cells without one show no empty title line."""
    path = run_dir / "cells" / _dirname("arm64/C1/depletion") / "evidence.json"
    data = json.loads(path.read_text())
    data["title"] = "WARNING in secretmem_fault"
    path.write_text(json.dumps(data))
    report.render(run_dir)
    md = (run_dir / "summary.md").read_text()
    part = md.split("### arm64/C1/depletion")[1].split("###")[0]
    assert "title:     WARNING in secretmem_fault" in part
    assert "title:" not in md.split("### x86_64/C0/depletion")[1].split("###")[0]
    html = (run_dir / "report.html").read_text()
    assert html.count("WARNING in secretmem_fault") == 1


# --- series versions side by side (lab/report/versions.py) -------------------------------


def _version_run(tmp_path: Path) -> Path:
    """Two versions of a series (axis `version`) crossed with a second axis `pool`, as a
    family with `series = ["secretmem-{{ version }}"]` makes them; cell.json records
    the series axis as lab.run.job.identity does."""
    run = make_run(
        tmp_path,
        "20261130-070000-matrix-vers",
        [
            Spec("x86_64/S15-none/api", "pass"),
            Spec("x86_64/S16-none/api", "pass"),
            Spec("x86_64/S15-cma/api", "pass"),
            Spec("x86_64/S16-cma/api", "sigbus"),
            Spec("x86_64/S15-cma/depletion", "oom_kill", expected=("oom_kill",)),
            Spec("x86_64/S16-cma/depletion", "oom_kill", expected=("oom_kill",)),
            Spec("arm64/S16-none/api", "pass"),  # only one version on arm64: no row
        ],
    )
    for d in (run / "cells").iterdir():
        rec = json.loads((d / "cell.json").read_text())
        version, pool = rec["variant"][1:].split("-")
        rec["params"] = {"version": f"v{version}", "pool": pool}
        rec["series_axes"] = ["version"]
        (d / "cell.json").write_text(json.dumps(rec))
    return run


def test_summary_has_a_per_version_table(tmp_path: Path) -> None:
    run = _version_run(tmp_path)
    report.render(run)
    md = (run / "summary.md").read_text()
    block = _block(md, "## By version (series versions)")
    assert block[0].split() == ["arch", "variant", "without", "version", "testcase", "v15", "v16"]
    rows = [line.split() for line in block[1:] if line.strip()]
    assert rows == [
        ["x86_64", "pool=none", "api", "pass", "pass"],
        ["x86_64", "pool=cma", "api", "pass", "sigbus*"],
        ["x86_64", "pool=cma", "depletion", "oom", "oom"],
    ]


def test_summary_without_series_axes_has_no_version_table(run_dir: Path) -> None:
    report.render(run_dir)
    assert "series versions" not in (run_dir / "summary.md").read_text()


def test_compare_by_version_within_one_run(tmp_path: Path) -> None:
    from lab.report import model, versions

    run = model.load(_version_run(tmp_path))
    changes = versions.compare_by(run, "version", "v15", "v16")
    assert [(c.kind, c.id, c.a_observed, c.b_observed) for c in changes] == [
        ("regression", "x86_64/S15-cma..S16-cma/api", "pass", "sigbus"),
        ("only_b", "arm64/-..S16-none/api", None, "pass"),
    ]
    back = versions.compare_by(run, "version", "v16", "v15")
    assert [c.kind for c in back] == ["fix", "only_a"]
    # Any param axis works: pool=none against pool=cma, matched by version.
    by_pool = versions.compare_by(run, "pool", "none", "cma")
    assert ("regression", "x86_64/S16-none..S16-cma/api") in [(c.kind, c.id) for c in by_pool]
    with pytest.raises(LabError, match=r"no cell of .* has version=v17 \(values: v15, v16\)"):
        versions.compare_by(run, "version", "v15", "v17")
    with pytest.raises(LabError, match=r"no cell of .* has a param 'toolchain'"):
        versions.compare_by(run, "toolchain", "gcc", "clang")


def test_lab_compare_by_cli(tmp_path: Path) -> None:
    run = _version_run(tmp_path)
    toml = tmp_path / "lab.toml"
    toml.write_text((REPO / "lab.toml").read_text())
    base = [sys.executable, "-m", "lab", "-c", str(toml), "compare", str(run)]
    out = subprocess.run([*base, "--by", "version", "v15", "v16"], capture_output=True, text=True)
    assert out.returncode == 1, out.stderr  # a regression, as for two runs
    assert f"A = {run.name} version=v15" in out.stdout
    assert "x86_64/S15-cma..S16-cma/api  pass -> sigbus  (expected -> unexpected)" in out.stdout
    bad = subprocess.run([*base, "--by", "version", "v1", "v16"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "values: v15, v16" in bad.stderr
    alone = subprocess.run(base, capture_output=True, text=True)
    assert alone.returncode == 2 and "or one run and --by AXIS A B" in alone.stderr
