"""One matrix cell: (arch, variant, test case) -> boot, run, classify, save.

`plan_cell` is pure. `run_cell` has the side effects: it boots a guest with the
test case in the overlay, follows the result channel until the agent is done (or a
deadline passes), classifies the console and records, and writes the cell directory:

  console.log, console.timed.log   the raw console and its host-timestamped copy
  result.jsonl                     the agent's records as received
  qemu.argv                        the QEMU command line
  evidence.json                    the classification (outcome, evidence lines, rule)
  cell.json                        inputs, expected vs observed, timings, reproducer
"""

from __future__ import annotations

import datetime
import platform
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from lab import boot, cache, classify, expect, kselftest, source
from lab.build import Kernel
from lab.config import ArchSpec, LabConfig, Variant
from lab.errors import LabError
from lab.image import BaseImage
from lab.machine import BootError
from lab.testcase import TestCase

MARGIN = 30.0  # seconds the host waits beyond a test case's own (in-guest) deadline


@dataclass(frozen=True)
class Cell:
    arch: ArchSpec
    variant: Variant
    testcase: TestCase

    @property
    def id(self) -> str:
        return f"{self.arch.name}/{self.variant.name}/{self.testcase.name}"

    @property
    def dirname(self) -> str:
        return f"{self.arch.name}--{self.variant.name}--{self.testcase.name}"

    def attributes(self) -> dict[str, str]:
        return expect.attributes(self.variant.params, self.arch.name, self.variant.name)

    def expectation(self) -> expect.Rule | None:
        return expect.expected(self.testcase.rules, self.attributes())


def expected_banner(variant: Variant) -> dict[str, str] | None:
    """k=v pairs the variant's boot banner must show (from the family's `banner`)."""
    if not variant.banner:
        return None
    return dict(w.split("=", 1) for w in variant.banner.split() if "=" in w)


def guest_files(
    cfg: LabConfig, cell: Cell, log: Callable[[str], None] = lambda _m: None
) -> dict[str, tuple[bytes, int]]:
    lib = resources.files("lab.guest").joinpath("labguest.py").read_bytes()
    files = {
        "lab/lib/labguest.py": (lib, 0o644),
        f"lab/testcases/{cell.testcase.name}.py": (cell.testcase.path.read_bytes(), 0o644),
    }
    for need in cell.testcase.needs:
        if not need.startswith(kselftest.PREFIX):
            raise LabError(
                f"{cell.testcase.path}: unknown need {need!r} "
                f"(known: {kselftest.PREFIX}<dir>/<name>)"
            )
        src = source.prepare(cfg.source, cfg.cache_dir, log)
        binary = kselftest.build(
            need, cell.arch, src.tree, boot.image_recipe(cfg), cfg.cache_dir, log
        )
        files[f"lab/bin/{binary.name}"] = (binary.read_bytes(), 0o755)
    return files


def job_for(cell: Cell) -> dict[str, Any]:
    return {
        "mode": "testcases",
        "arch": cell.arch.name,
        "variant": cell.variant.name,
        "params": dict(cell.variant.params),
        "testcases": [{"name": cell.testcase.name, "timeout": cell.testcase.timeout}],
    }


def reproducer(cfg: LabConfig, cell: Cell) -> str:
    return shlex.join(
        [
            "lab",
            "--config",
            str(cfg.file),
            "run",
            cell.testcase.name,
            "--arch",
            cell.arch.name,
            "--variant",
            cell.variant.name,
        ]
    )


@dataclass(frozen=True)
class CellResult:
    cell: Cell
    dir: Path
    observed: str
    expected: tuple[str, ...]  # empty: the test case declares no expectation here
    verdict: str  # expected | unexpected | infra
    classification: classify.Classification
    timings: Mapping[str, float | None]

    @property
    def exit_code(self) -> int:
        return {"expected": 0, "unexpected": 1}.get(self.verdict, 2)


def verdict_for(observed: str, expected: tuple[str, ...]) -> str:
    if observed == "infra_error":
        return "infra"
    if not expected:
        return "unexpected"
    return "expected" if observed in expected else "unexpected"


def run_cell(
    cfg: LabConfig,
    cell: Cell,
    kernel: Kernel,
    base: BaseImage,
    directory: Path,
    log: Callable[[str], None] = lambda _m: None,
) -> CellResult:
    """Boot, run the test case, classify; everything lands in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    req = boot.BootRequest(
        arch=cell.arch,
        variant=cell.variant,
        kernel=kernel,
        base=base,
        job=job_for(cell),
        extra_cmdline=cell.testcase.cmdline,
        extra_files=guest_files(cfg, cell),
        memory_mib=cell.testcase.memory_mib or None,
    )
    started = time.monotonic()
    prepared = boot.prepare(cfg, req, directory, log)
    m = prepared.machine
    deadline: str | None = None
    ready = False
    try:
        with m:
            try:
                m.wait_ready()
                ready = True
            except BootError as exc:
                deadline = "boot" if exc.kind == "hang" else None
            if ready:
                how = m.follow(lambda r: r.get("type") == "done", cell.testcase.timeout + MARGIN)
                if how == "timeout":
                    deadline = "test"
                elif how == "record":
                    m.wait_exit()
    finally:
        boot.discard_initrd(directory)
    if any(r.get("type") == "result" and r.get("timeout") is True for r in m.results.records):
        deadline = deadline or "test"
    console = (directory / "console.log").read_text(errors="replace")
    facts = classify.RunFacts(
        ready=ready,
        deadline=deadline,
        qemu_exit=m.exit_status,
        records=tuple(m.results.records),
        problems=tuple(m.results.problems),
        expected_banner=expected_banner(cell.variant),
    )
    result = classify.classify(console, facts)
    rule = cell.expectation()
    expected = rule.outcomes if rule else ()
    observed = result.outcome
    t = m.timings()
    timings = {
        "ready": t.ready,
        "agent": t.first_result,
        "qemu": t.total,
        "cell": time.monotonic() - started,
    }
    verdict = verdict_for(observed, expected)
    cache.write_json(directory / "evidence.json", result.to_json())
    cache.write_json(
        directory / "cell.json",
        {
            "id": cell.id,
            "arch": cell.arch.name,
            "variant": cell.variant.name,
            "testcase": cell.testcase.name,
            "params": dict(cell.variant.params),
            "observed": observed,
            "expected": list(expected),
            "expected_rule": rule.text if rule else None,
            "verdict": verdict,
            "detail": result.detail,
            "kernel": {
                "key": kernel.key,
                "image_sha256": kernel.meta.get("image_sha256"),
                "config_sha256": kernel.meta.get("config_sha256"),
                "dir": str(kernel.dir),
            },
            "image": {"key": base.key, "path": str(base.path)},
            "accel": prepared.accel.accel,
            "accel_reason": prepared.accel.reason,
            "cmdline": prepared.launch.cmdline,
            "timings": timings,
            "qemu_exit": m.exit_status,
            "qemu_killed": m.killed,
            "reproducer": reproducer(cfg, cell),
            "host": platform.node(),
            "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        },
    )
    return CellResult(cell, directory, observed, expected, verdict, result, timings)
