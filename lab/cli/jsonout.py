"""--json output of commands that print for people (matrix --list, compare). Pure.

Each document has `format` (1): a script reading it checks the version it knows.
docs/reports.md describes the fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from lab.report.compare import Change
from lab.run import matrix

FORMAT = 1


def matrix_list(cells: Sequence[matrix.Planned]) -> dict[str, Any]:
    """`lab matrix --list --json`: the planned cells (what a CI job matrix fans out)."""
    out = []
    for p in cells:
        rule = p.cell.expectation()
        out.append(
            {
                "id": p.id,
                "dir": f"cells/{p.dirname}",
                "arch": p.cell.arch.name,
                "variant": p.cell.variant.name,
                "testcase": p.cell.testcase.name,
                "repeat": p.repeat,
                "kernel": p.kernel,
                "expected": list(rule.outcomes) if rule else [],
                "rule": rule.text if rule else None,
            }
        )
    return {"format": FORMAT, "cells": out, "kernels": sorted({p.kernel for p in cells})}


def compare(changes: Sequence[Change], a: str, b: str) -> dict[str, Any]:
    """`lab compare --json`: the cells whose outcome or verdict differs."""
    return {
        "format": FORMAT,
        "a": a,
        "b": b,
        "changes": [dataclasses.asdict(c) for c in changes],
    }
