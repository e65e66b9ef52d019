"""Compare two runs: regressions, fixes and changes per run cell."""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from pathlib import Path

from lab.report.model import load

# --- compare ----------------------------------------------------------------------------------

KINDS = ("regression", "fix", "changed", "only_a", "only_b")


@dataclass(frozen=True)
class Change:
    """A run cell whose outcome or verdict differs between run A and run B.

    A side without a result has observed None and verdict "not run" (planned there
    but without a result) or "absent" (not planned there).
    """

    kind: str  # one of KINDS
    id: str  # run cell id
    a_observed: str | None
    b_observed: str | None
    a_verdict: str
    b_verdict: str


def _outcomes(run_dir: Path) -> tuple[dict[str, tuple[str, str]], set[str]]:
    run = load(run_dir)
    done = {c.run_cell_id: (c.observed, c.verdict) for c in run.cells}
    return done, set(run.not_run)


def compare(run_a: Path, run_b: Path) -> list[Change]:
    """Changed cells, regressions first, then fixes, other changes, cells in one run only."""
    a, a_missing = _outcomes(run_a)
    b, b_missing = _outcomes(run_b)
    return classify_changes(a, b, a_missing, b_missing)


def classify_changes(
    a: Mapping[str, tuple[str, str]],
    b: Mapping[str, tuple[str, str]],
    a_missing: Set[str] = frozenset(),
    b_missing: Set[str] = frozenset(),
) -> list[Change]:
    """Id -> (observed, verdict) on two sides (runs, or two values of an axis in one
    run) -> the changes, regressions first."""
    changes = []
    for rid in sorted(set(a) | set(b) | a_missing | b_missing):
        if rid not in a and rid not in b:
            continue  # planned in both, run in neither: nothing to compare
        av = "not run" if rid in a_missing else "absent"
        bv = "not run" if rid in b_missing else "absent"
        if rid not in b:
            changes.append(Change("only_a", rid, a[rid][0], None, a[rid][1], bv))
        elif rid not in a:
            changes.append(Change("only_b", rid, None, b[rid][0], av, b[rid][1]))
        elif a[rid] != b[rid]:
            (ao, av), (bo, bv) = a[rid], b[rid]
            if av == "expected" and bv != "expected":
                kind = "regression"
            elif av != "expected" and bv == "expected":
                kind = "fix"
            else:
                kind = "changed"
            changes.append(Change(kind, rid, ao, bo, av, bv))
    changes.sort(key=lambda ch: KINDS.index(ch.kind))  # stable: ids stay sorted per kind
    return changes


_TITLES = {
    "regression": "Regressions (as expected in A, not in B)",
    "fix": "Fixes (not as expected in A, as expected in B)",
    "changed": "Other changes (outcome changed)",
    "only_a": "Only in A",
    "only_b": "Only in B",
}


def format_compare(changes: Sequence[Change], a: str = "A", b: str = "B") -> str:
    """Text for the terminal: one line per change, grouped in KINDS order."""
    if not changes:
        return f"no cell changed between {a} and {b}"
    width = max(len(ch.id) for ch in changes)
    lines = [f"A = {a}", f"B = {b}"]
    for kind in KINDS:
        group = [ch for ch in changes if ch.kind == kind]
        if not group:
            continue
        lines += ["", f"{_TITLES[kind]}: {len(group)}"]
        for ch in group:
            lines.append(
                f"  {ch.id:<{width}}  {ch.a_observed or '-'} -> {ch.b_observed or '-'}"
                f"  ({ch.a_verdict} -> {ch.b_verdict})"
            )
    n = collections.Counter(ch.kind for ch in changes)
    lines += [
        "",
        f"{n['regression']} regression(s), {n['fix']} fix(es), {n['changed']} other "
        f"change(s), {n['only_a'] + n['only_b']} in one run only",
    ]
    return "\n".join(lines)
