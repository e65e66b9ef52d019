"""One matrix cell: (arch, variant, test case), its expectation and verdict. Pure.

Running a cell (boot, follow, classify, save) is lab.run.execute's business.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from lab.config import ArchSpec, LabConfig, Variant
from lab.run import expect
from lab.run.testcase import TestCase


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


def job_for(cell: Cell) -> dict[str, Any]:
    return {
        "mode": "testcases",
        "arch": cell.arch.name,
        "variant": cell.variant.name,
        "params": dict(cell.variant.params),
        "testcases": [{"name": cell.testcase.name, "timeout": cell.testcase.timeout}],
    }


def reproducer(cfg: LabConfig, cell: Cell, kernel_path: str = "") -> str:
    """The `lab run` line that runs the cell again; `kernel_path`: the prebuilt kernel
    (`--kernel`) the cell booted, which the line must boot too."""
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
            *(["--kernel", kernel_path] if kernel_path else []),
        ]
    )
