"""Series versions side by side: a family whose `series` template names an axis
(`series = ["secretmem-{{ version }}"]`) makes that axis's values versions of a series.

Cells of one run are matched across the values of an axis by everything else that
names them: arch, test case, repetition and the variant's other params. The report's
per-version table (summary.md) and `lab compare RUN --by AXIS A B` both use this
matching; `--by` accepts any param axis, the table shows the series axes the cells
recorded (cell.json `series_axes`). Pure: reads nothing beyond the loaded Run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from lab.errors import UserError
from lab.report.clean import _line
from lab.report.compare import Change, classify_changes
from lab.report.model import Run, RunCell, Slot

MAX_AXES = 8  # series axes shown per run: a hostile cell.json cannot flood summary.md


def _value(v: object) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _params(c: RunCell | Slot) -> Mapping[str, Any]:
    first = c.runs[0] if isinstance(c, Slot) else c
    p = first.data.get("params")
    return p if isinstance(p, dict) else {}


def _rest(params: Mapping[str, Any], axis: str) -> str:
    """The variant without the axis: its other params, "k=v" in lab.toml order."""
    return " ".join(f"{k}={_value(v)}" for k, v in params.items() if k != axis)


def series_axes(run: Run) -> list[str]:
    """The series axes the run's cells recorded, first-seen order."""
    seen: dict[str, None] = {}
    for c in run.cells:
        axes = c.data.get("series_axes")
        for a in axes if isinstance(axes, list) else []:
            if isinstance(a, str) and a in _params(c) and len(seen) < MAX_AXES:
                seen.setdefault(_line(a, 60), None)
    return list(seen)


def table(run: Run, axis: str) -> tuple[list[str], list[tuple[str, str, str, dict[str, Slot]]]]:
    """The axis's values (first-seen order) and a row per (arch, variant without the
    axis, test case) that ran under two values or more: value -> its slot."""
    values: dict[str, None] = {}
    rows: dict[tuple[str, str, str], dict[str, Slot]] = {}
    for s in run.slots:
        if not s.runs or axis not in _params(s):
            continue
        value = _value(_params(s)[axis])
        values.setdefault(value, None)
        rows.setdefault((s.arch, _rest(_params(s), axis), s.testcase), {})[value] = s
    kept = [(a, r, t, by) for (a, r, t), by in rows.items() if len(by) > 1]
    return list(values), kept


def compare_by(run: Run, axis: str, a: str, b: str) -> list[Change]:
    """Cells whose outcome or verdict differs between axis=a and axis=b in one run, as
    `lab compare` changes: "regression" = as expected under a, not under b. The id
    names both variants: `arch/VA..VB/testcase[#N]`."""
    known: dict[str, None] = {}
    sides: dict[str, dict[tuple[str, str, str, int], RunCell]] = {a: {}, b: {}}
    for c in run.cells:
        params = _params(c)
        if axis not in params:
            continue
        value = _value(params[axis])
        known.setdefault(value, None)
        if value in sides:
            sides[value][(c.arch, _rest(params, axis), c.testcase, c.repeat)] = c
    if not known:
        names = sorted({k for c in run.cells for k in _params(c)})
        raise UserError(
            f"--by {axis}: no cell of {run.id} has a param {axis!r} "
            f"(params: {', '.join(names) or 'none'})"
        )
    for v in (a, b):
        if v not in known:
            raise UserError(
                f"--by {axis}: no cell of {run.id} has {axis}={v} (values: {', '.join(known)})"
            )
    ids: dict[tuple[str, str, str, int], str] = {}
    for key in sides[a].keys() | sides[b].keys():
        ca, cb = sides[a].get(key), sides[b].get(key)
        arch, _, tc, rep = key
        va = ca.variant if ca else "-"
        vb = cb.variant if cb else "-"
        ids[key] = f"{arch}/{va}..{vb}/{tc}" + (f"#{rep}" if rep > 1 else "")
    return classify_changes(
        {ids[k]: (c.observed, c.verdict) for k, c in sides[a].items()},
        {ids[k]: (c.observed, c.verdict) for k, c in sides[b].items()},
    )
