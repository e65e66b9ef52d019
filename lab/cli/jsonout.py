"""--json output of commands that print for people (matrix --list, compare). Pure.

Each document has `format` (1): a script reading it checks the version it knows.
docs/reports.md describes the fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from lab.config.hosts import Host
from lab.errors import printable
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


class CheckLine(Protocol):
    """lab.hosts.check.CheckLine (not imported: the SSH stack stays out of planning)."""

    @property
    def label(self) -> str: ...
    @property
    def ok(self) -> bool: ...
    @property
    def detail(self) -> str: ...


def hosts_check(
    chosen: Sequence[Host], answers: Mapping[str, Sequence[CheckLine]]
) -> dict[str, Any]:
    """`lab hosts check --json`: per host its checks; `ok` when every check passed. A
    host's answers are what it said: made printable, one line each."""
    out = []
    for h in chosen:
        lines = answers.get(h.name)
        checks = (
            [{"label": c.label, "ok": c.ok, "detail": printable(c.detail, 2000, one_line=True)}
             for c in lines]
            if lines is not None
            else [{"label": "check", "ok": False, "detail": "no answer"}]
        )  # fmt: skip
        out.append(
            {
                "name": h.name,
                "target": h.target,
                "capacity": h.capacity,
                "arches": list(h.arches),
                "ok": all(c["ok"] for c in checks),
                "checks": checks,
            }
        )
    return {"format": FORMAT, "ok": all(h["ok"] for h in out), "hosts": out}
