"""Known issues: `[[known_issues]]` in lab.toml. Pure.

An expectation is a prediction written before a run and never loosened to fit an
observation (docs/variants.md). When a run disagrees with it and the disagreement is
understood (a finding, with its evidence and explanation), it is listed here: the cell
pattern, the reason, and a link to where the finding is written up. The reports still
show such a cell as unexpected, with the reason next to it; only the exit status (and so
CI) treats it as known. A known issue names the outcome it covers: the same cell turning
up with yet another outcome is a new disagreement and fails again.

    [[known_issues]]
    cells = "*/R0-5.11/pressure"           # arch/variant/testcase, globs
    observed = ["oom_kill"]                # the outcomes it covers
    reason = "the faulter's own allocation after the refusal ran the OOM killer"
    link = "docs/variants.md#7"            # a docs/ path (with an anchor) or an https URL
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lab.config.tomlread import Table
from lab.errors import UserError
from lab.outcome import CLASSES

MAX_ISSUES = 500
MAX_TEXT = 500
PATTERN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-*?[]!")


@dataclass(frozen=True)
class KnownIssue:
    cells: str  # glob over "arch/variant/testcase"
    observed: tuple[str, ...]  # the outcome classes it covers
    reason: str
    link: str

    def covers(self, cell_id: str, observed: str | None) -> bool:
        return observed in self.observed and fnmatch.fnmatchcase(cell_id, self.cells)


class _Cell(Protocol):
    """What the gate needs of a cell record (results.CellResult has it)."""

    @property
    def run_cell_id(self) -> str: ...

    @property
    def verdict(self) -> str: ...

    @property
    def observed(self) -> str | None: ...


def parse(raw: object, file: Path, classes: Sequence[str] = CLASSES) -> list[KnownIssue]:
    """The `known_issues` array of lab.toml (None: none). Bad input is one line naming
    the entry and key."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
        raise UserError(f"{file}: known_issues must be an array of tables ([[known_issues]])")
    if len(raw) > MAX_ISSUES:
        raise UserError(f"{file}: known_issues has {len(raw)} entries; at most {MAX_ISSUES}")
    out: list[KnownIssue] = []
    for i, entry in enumerate(raw):
        t = Table(file, f"known_issues[{i}]", dict(entry))
        issue = KnownIssue(
            cells=t.string("cells"),
            observed=t.strings("observed"),
            reason=t.string("reason"),
            link=t.string("link"),
        )
        t.done()
        parts = issue.cells.split("/")
        if len(parts) != 3 or not all(parts) or not set(issue.cells) <= PATTERN_CHARS | {"/"}:
            t.fail_key(
                "cells",
                f"{issue.cells!r} is not a cell pattern; write arch/variant/testcase "
                "(globs allowed), e.g. '*/R0/pressure'",
            )
        if not issue.observed:
            t.fail_key("observed", "name at least one outcome the issue covers")
        for c in issue.observed:
            if c not in classes:
                t.fail_key("observed", f"unknown outcome {c!r}; valid: {', '.join(classes)}")
        if not issue.reason.strip() or len(issue.reason) > MAX_TEXT:
            t.fail_key("reason", f"say why in 1 to {MAX_TEXT} characters")
        link = issue.link
        if not (link.startswith(("https://", "docs/")) and len(link) <= MAX_TEXT):
            t.fail_key("link", f"{link!r} is not a link; give a docs/ path or an https:// URL")
        if ".." in link.split("#", 1)[0].split("/"):
            t.fail_key("link", f"{link!r}: a docs/ path stays inside docs/")
        out.append(issue)
    return out


def lookup(issues: Sequence[KnownIssue]) -> Callable[[str, str | None], tuple[str, str] | None]:
    """cell id, observed -> (reason, link) of the first issue that covers it, or None.
    (The reports take this function, so they need not know the config.)"""

    def find(cell_id: str, observed: str | None) -> tuple[str, str] | None:
        for issue in issues:
            if issue.covers(cell_id, observed):
                return issue.reason, issue.link
        return None

    return find


def unknown_unexpected(issues: Sequence[KnownIssue], cells: Iterable[_Cell]) -> list[_Cell]:
    """The unexpected cells no known issue covers."""
    find = lookup(issues)
    return [
        c for c in cells if c.verdict == "unexpected" and find(c.run_cell_id, c.observed) is None
    ]


def gate(code: int, issues: Sequence[KnownIssue], cells: Iterable[_Cell]) -> int:
    """A run's exit status with the known issues honoured: 1 (some unexpected outcome)
    becomes 0 when every unexpected cell is a known issue. 2 (incomplete, infrastructure)
    stays: a known issue never excuses a cell that did not run."""
    if code == 1 and not unknown_unexpected(issues, cells):
        return 0
    return code
