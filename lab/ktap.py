"""KTAP / TAP output of kernel selftests, parsed into per-subtest results. Pure.

Reads what Documentation/dev-tools/ktap.rst specifies, and what kselftest.h prints:
  "KTAP version 1" / "TAP version 13|14"   a (sub)test's header
  "1..N"                                    the plan
  "ok|not ok N [name] [# DIRECTIVE reason]" a result; SKIP, TODO, XFAIL, TIMEOUT, ERROR
  "# Subtest: name"                         TAP14's announcement of a nested test
  "# Totals: pass:N fail:N ..."             kselftest's summary (kept as numbers)
  "Bail out! reason"                        the run stopped
Nested tests are indented (2 spaces in KTAP, 4 in TAP14); their results come before
the parent's own result line, which names them. Anything else is diagnostic output.

The tree's own tools/testing/kunit/kunit_parser.py is made for KUnit's dmesg stream
(it wants a KTAP header, drops kselftest's "# Totals", and prints while parsing); the
lab needs a bounded, side-effect-free reader of a guest program's stdout, so this one
is small and its own. Input is guest output: bounded in lines, line length and depth.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_LINES = 100_000
MAX_LINE = 4096  # characters of a line kept
MAX_DEPTH = 8  # nesting levels followed; deeper results count at this level

_VERSION = re.compile(r"(?:KTAP version \d+|TAP version 1[34])\s*$")
_PLAN = re.compile(r"1\.\.(\d+)\s*$")
_RESULT = re.compile(r"(ok|not ok)\s+(\d+)\b\s*(?:-\s*)?([^#]*?)\s*(?:#\s*(.*))?$")
_DIRECTIVE = re.compile(r"(SKIP|TODO|XFAIL|TIMEOUT|ERROR)\b\s*(.*)$", re.IGNORECASE)
_SUBTEST = re.compile(r"#\s*Subtest:\s*(.*)$")
_TOTALS = re.compile(r"#\s*Totals:\s*(.*)$")
_BAIL = re.compile(r"Bail out!\s*(.*)$")
_PRINTK = re.compile(r"^\[\s*\d+\.\d+\] ?")  # a console's timestamp prefix

STATUSES = ("pass", "fail", "skip", "xfail", "todo", "timeout", "error")


@dataclass(frozen=True)
class Subtest:
    path: tuple[str, ...]  # names from the top level down; a name is "#N" if unnamed
    number: int
    status: str  # one of STATUSES
    reason: str  # the directive's text, or a diagnostic for a fail
    line_no: int  # 1-based line of the result
    leaf: bool  # no nested results under it

    @property
    def name(self) -> str:
        return ".".join(self.path)


@dataclass
class Ktap:
    results: list[Subtest] = field(default_factory=list)
    plan: int | None = None  # the top level's "1..N"
    totals: dict[str, int] = field(default_factory=dict)  # kselftest's "# Totals"
    bailed: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def found(self) -> bool:
        """Any KTAP/TAP at all (a header, a plan or a result)."""
        return bool(self.results) or self.plan is not None

    def leaves(self) -> list[Subtest]:
        return [r for r in self.results if r.leaf]

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATUSES, 0)
        for r in self.leaves():
            out[r.status] += 1
        return out


def _status(word: str, directive: str) -> tuple[str, str]:
    m = _DIRECTIVE.match(directive.strip())
    if m:
        kind, reason = m.group(1).upper(), m.group(2).strip()
        return {
            "SKIP": "skip",
            "TODO": "todo",
            "XFAIL": "xfail",
            "TIMEOUT": "timeout",
            "ERROR": "error",
        }[kind], reason
    return ("pass" if word == "ok" else "fail"), directive.strip()


def parse(text: str) -> Ktap:
    """The KTAP/TAP results in `text` (a selftest's stdout)."""
    out = Ktap()
    lines = text.splitlines()
    if len(lines) > MAX_LINES:
        out.problems.append(f"{len(lines)} lines; only the first {MAX_LINES} were read")
        lines = lines[:MAX_LINES]
    unit = 0  # spaces per nesting level, from the first indented KTAP line
    # level -> the subtrees (result indices) there that no parent has claimed yet
    children: dict[int, list[list[int]]] = {}
    announced: dict[int, str] = {}  # level -> "# Subtest: name" of the test being nested
    for no, raw in enumerate(lines, start=1):
        line = _PRINTK.sub("", raw[:MAX_LINE].rstrip("\r"), count=1)
        body = line.lstrip(" \t")
        indent = len(line) - len(body)
        if not body:
            continue
        is_ktap = bool(
            _VERSION.match(body) or _PLAN.match(body) or _RESULT.match(body) or _SUBTEST.match(body)
        )
        if indent and is_ktap and not unit:
            unit = indent
        level = min(indent // unit, MAX_DEPTH) if unit else 0
        if m := _BAIL.match(body):
            out.bailed = m.group(1).strip()[:500]
            break
        if m := _TOTALS.match(body):
            for k, v in re.findall(r"(\w+):\s*(\d+)", m.group(1)):
                out.totals[k] = int(v)
            continue
        if m := _SUBTEST.match(body):
            announced[level + 1] = m.group(1).strip()[:200]
            continue
        if level == 0 and _VERSION.match(body) and (out.results or out.plan is not None):
            # A second document: e.g. a forked child flushing a copy of the parent's
            # unflushed stdout (block-buffered into a pipe). The last document is the
            # program's own; earlier copies are noted, not counted.
            out.problems.append(f"line {no}: a new {body.strip()!r} restarts the output")
            out.results.clear()
            out.plan = None
            children.clear()
            announced.clear()
            continue
        if m := _PLAN.match(body):
            if level == 0 and out.plan is None:
                out.plan = int(m.group(1))
            continue
        m = _RESULT.match(body)
        if m is None:
            continue  # diagnostics, the program's own output
        word, number, name, directive = m.group(1), int(m.group(2)), m.group(3), m.group(4)
        status, reason = _status(word, directive or "")
        name = name.strip()[:200] or announced.pop(level + 1, "") or f"#{number}"
        announced.pop(level + 1, None)
        subtree: list[int] = []  # indices into out.results of the nested results
        for deeper in sorted(k for k in children if k > level):
            for tree in children.pop(deeper):
                subtree += tree
        # Nested results were recorded with the names below this one: prefix its name.
        for i in subtree:
            c = out.results[i]
            out.results[i] = Subtest((name, *c.path), c.number, c.status, c.reason,
                                     c.line_no, c.leaf)  # fmt: skip
        out.results.append(Subtest((name,), number, status, reason[:500], no, not subtree))
        children.setdefault(level, []).append([*subtree, len(out.results) - 1])
    top = children.get(0, [])
    if out.plan is not None and out.bailed is None and len(top) != out.plan:
        out.problems.append(f"plan 1..{out.plan} but {len(top)} top-level results")
    return out


MAX_SUBTESTS = 1000  # per cell in cell.json


def cell_fields(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """cell.json's `subtests` and `ktap` from the agent's records: a test case reports a
    selftest's stdout as a `ktap` list of lines in its result data (testcases/kselftest.py).
    {} when no test case did (cell.json keeps its shape for every other test case)."""
    subtests: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for rec in records:
        data = rec.get("data") if rec.get("type") == "result" else None
        lines = data.get("ktap") if isinstance(data, dict) else None
        if not isinstance(lines, list):
            continue
        parsed = parse("\n".join(str(x) for x in lines[:MAX_LINES]))
        testcase = str(rec.get("testcase") or "")[:100]
        summary[testcase] = {
            "plan": parsed.plan,
            "totals": parsed.totals,
            "counts": parsed.counts(),
            "bailed": parsed.bailed,
            "problems": parsed.problems[:20],
        }
        for r in parsed.leaves():
            subtests.append({"testcase": testcase, "name": r.name, "number": r.number,
                             "status": r.status, "reason": r.reason})  # fmt: skip
    if not summary:
        return {}
    return {"subtests": subtests[:MAX_SUBTESTS], "ktap": summary}
