"""All of the CLI's human output about cells: one printer for a cell, its evidence and its
reproducer. What comes from a guest or a results tree is made printable here."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from lab import results
from lab.errors import printable

VERDICT_WORDS = {
    "expected": "as expected",
    "unexpected": "UNEXPECTED",
    "infra": "INFRASTRUCTURE ERROR",
}


def evidence_lines(evidence: Iterable[Mapping[str, Any]], indent: str, limit: int) -> list[str]:
    """Evidence lines as `L<line> text` ("agent" for a record), at most `limit`, then how
    many more evidence.json holds."""
    items = list(evidence)
    out = []
    for ev in items[:limit]:
        where = f"L{ev.get('line_no')}" if ev.get("line_no") else "agent"
        out.append(f"{indent}{where:>6} {printable(str(ev.get('text', '')), one_line=True)}")
    if len(items) > limit:
        out.append(f"{indent}... {len(items) - limit} more in evidence.json")
    return out


def print_cell(res: results.CellResult, reproducer: str = "", stream: TextIO = sys.stdout) -> None:
    """A finished cell: verdict, detail, rule, evidence, where its files are."""
    expected = "|".join(res.expected) or "(no expectation declared)"
    word = VERDICT_WORDS.get(res.verdict, res.verdict)
    print(f"{res.id}: observed {res.observed}, expected {expected} -> {word}", file=stream)
    print(f"  {res.detail}", file=stream)
    print(f"  rule: {res.rule}: {res.rule_text}", file=stream)
    if res.lines:
        print("  evidence:", file=stream)
        for line in evidence_lines(res.lines, "    ", 25):
            print(line, file=stream)
    print(f"  artefacts: {res.dir}", file=stream)
    if reproducer:
        print(f"  reproducer: {reproducer}", file=stream)
