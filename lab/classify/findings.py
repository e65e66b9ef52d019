"""What the rules look at (findings from console and records) and what they return."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from lab.classify.model import (
    MAX_EVIDENCE,
    MAX_HITS,
    MAX_STRING,
    MAX_TEXT,
    TAIL,
    WINDOW_SLACK,
    Evidence,
    Hit,
    Line,
    RunFacts,
    _clean,
)
from lab.classify.normalise import scan, shown
from lab.classify.records import _Agent, _parse_records
from lab.classify.signatures import SIGNATURES

# --- findings: everything the rules look at -------------------------------------


class _Findings:
    """The hits of one console, and what the rules ask about them.

    Kernel lines carry a printk stamp: lab kernels are built with CONFIG_PRINTK_TIME
    (kernels/config/base.config.j2). In a lab cell (facts given) a kernel signature on
    an unstamped line is userspace text (a test, the agent, init), not a finding: it
    is dropped. A foreign log keeps its tolerance, since logs without printk stamps
    exist; but when it has stamped lines, an unstamped kernel-signature line is
    "weak": stamped hits come first wherever a rule picks one, and a weak line never
    ends the log in order.
    """

    def __init__(self, lines: tuple[Line, ...], facts: RunFacts | None) -> None:
        self.lines = lines
        self.facts = facts
        self.first: dict[str, list[Hit]] = {}
        self.last: dict[str, Hit] = {}  # the last stamped hit, else the last weak one
        self.count: dict[str, int] = {}
        self.stamped = any(line.ktime is not None for line in lines)
        for hit in scan(lines):
            if facts is not None and hit.sig.kernel and hit.ktime is None:
                continue
            name = hit.sig.name
            self.count[name] = self.count.get(name, 0) + 1
            kept = self.first.setdefault(name, [])
            if len(kept) < MAX_HITS:
                kept.append(hit)
            if not self.weak(hit) or name not in self.last or self.weak(self.last[name]):
                self.last[name] = hit
        self.matched = tuple(self.first)  # dicts keep first-insertion order
        self.agent = (
            _parse_records(facts.records, facts.problems) if facts is not None else _Agent()
        )

    def weak(self, hit: Hit) -> bool:
        """An unstamped kernel-signature line in a foreign log that has stamps."""
        return self.stamped and hit.sig.kernel and hit.ktime is None

    def hits(self, *names: str) -> list[Hit]:
        """In line order, stamped (not weak) hits first."""
        out = [h for n in names for h in self.first.get(n, [])]
        return sorted(out, key=lambda h: (self.weak(h), h.index))

    def by_class(self, outcome: str, role: str = "report") -> list[Hit]:
        names = [s.name for s in SIGNATURES if s.outcome == outcome and s.role == role]
        return self.hits(*names)

    def has(self, name: str) -> bool:
        return name in self.first

    def kernel_output(self) -> bool:
        return any(line.ktime is not None for line in self.lines)

    def userspace_ran(self, before: int | None = None) -> bool:
        """Did userspace run (before line index `before`)?"""
        if self.facts is not None:
            return self.facts.ready
        limit = len(self.lines) if before is None else before
        if any(h.index < limit for h in self.hits("lab_ready")):
            return True
        starts = [h for h in self.hits("init_started") if h.index < limit]
        if not starts:
            return False
        if not self.kernel_output():
            return True  # no printk stamps at all: nothing to tell userspace lines apart
        return any(
            line.ktime is None and line.message.strip()
            for line in self.lines[starts[0].index + 1 : limit]
        )

    def orderly_end(self) -> Hit | None:
        """The last restart/power-down line, if nothing from the kernel follows it."""
        ends = [
            self.last[s.name]
            for s in SIGNATURES
            if s.role == "end" and s.name in self.last and not self.weak(self.last[s.name])
        ]
        if not ends:
            return None
        end = max(ends, key=lambda h: h.index)
        end_names = {s.name for s in SIGNATURES if s.role == "end"}
        end_lines = {h.index for n in end_names for h in self.first.get(n, [])}
        for j in range(end.index + 1, len(self.lines)):
            line = self.lines[j]
            if line.ktime is not None and j not in end_lines:
                return None
        return end

    def running_testcase(self, before: int | None = None) -> str | None:
        """The test case whose `lab: testcase X start` marker has no end before `before`."""
        limit = len(self.lines) if before is None else before
        marks = [h for h in self.hits("lab_testcase") if h.index < limit]
        if marks and marks[-1].fields.get("phase") == "start":
            return str(marks[-1].fields.get("testcase"))
        return None

    def testcase_start(self, testcase: str) -> float | None:
        """The printk time of the agent's stamped `lab: testcase NAME start` line."""
        for h in self.hits("lab_testcase"):
            mine = h.fields.get("testcase") == testcase and h.fields.get("phase") == "start"
            if mine and h.ktime is not None:
                return h.ktime
        return None

    def window(self, pid: int) -> tuple[float, float] | None:
        """The printk-time span in which the task `pid` ran (with WINDOW_SLACK), from its
        spawn record's `t` and its task record's `seconds`, anchored at its test case's
        start line; open-ended while it has no task record. None: no anchor."""
        spawn = self.agent.spawn_of(pid)
        if spawn is None or spawn.t is None:
            return None
        anchor = self.testcase_start(spawn.testcase)
        if anchor is None:
            return None
        task = self.agent.task_of(pid)
        start = anchor + spawn.t
        end = start + task.seconds if task is not None and task.seconds is not None else math.inf
        return start - WINDOW_SLACK, end + WINDOW_SLACK

    def kills(self) -> list[Hit]:
        return self.hits("oom_killed_process", "memcg_oom_killed_process")

    def invoker(self, kill: Hit) -> Hit | None:
        """The `invoked oom-killer` report that led to this kill (the last one before it)."""
        return next((h for h in reversed(self.hits("oom_invoked")) if h.index < kill.index), None)

    def banners(self) -> list[tuple[Hit, dict[str, str]]]:
        # The era is a second banner line (its own initcall); it joins every
        # secretmem banner as `era=`, so a kernel without it, or with another
        # era, mismatches a cell that asked for one.
        era = self.hits("lab_era")
        extra = {"era": str(era[-1].fields.get("era"))} if era else {}
        out = []
        for hit in self.hits("secretmem_banner"):
            attrs = str(hit.fields.get("attrs", ""))
            out.append((hit, {**dict(re.findall(r"(\w+)=(\S+)", attrs)), **extra}))
        return out


# --- evidence -------------------------------------------------------------------


class _Evidence:
    """Evidence in priority order; `done()` caps it and sorts console lines by number."""

    def __init__(self, f: _Findings) -> None:
        self.f = f
        self.items: list[Evidence] = []
        self.seen: set[tuple[int, str]] = set()

    def _add(self, item: Evidence) -> None:
        key = (item.line_no, item.text)
        if key not in self.seen:
            self.seen.add(key)
            self.items.append(item)

    def line(self, index: int, signature: str, ktime: float | None = None) -> None:
        line = self.f.lines[index]
        text = shown(line.text[: MAX_TEXT + 1])
        if len(text) > MAX_TEXT:
            text = text[: MAX_TEXT - 1] + "…"
        self._add(Evidence(line.line_no, text, line.ktime if ktime is None else ktime, signature))

    def hit(self, hit: Hit, context: int | None = None) -> None:
        """The hit's line and its report context (at most `context` lines of it)."""
        self.line(hit.index, hit.sig.name, hit.ktime)
        ctx = hit.sig.context
        if ctx is None or not ctx.lines:
            return
        n = ctx.lines if context is None else min(context, ctx.lines)
        for j in range(hit.index + 1, min(len(self.f.lines), hit.index + 1 + n)):
            self.line(j, f"context:{hit.sig.name}")
            if ctx.until is not None and ctx.until.match(self.f.lines[j].message):
                break

    def note(self, text: str, signature: str) -> None:
        self._add(Evidence(0, _clean(text, MAX_TEXT), None, signature))

    def tail(self, n: int = TAIL) -> None:
        picked = [i for i, line in enumerate(self.f.lines) if line.message.strip()][-n:]
        for i in picked:
            self.line(i, "tail")

    def done(self) -> tuple[Evidence, ...]:
        kept = self.items[:MAX_EVIDENCE]
        console = sorted((e for e in kept if e.line_no), key=lambda e: e.line_no)
        return tuple(console + [e for e in kept if not e.line_no])


@dataclass
class _Verdict:
    outcome: str
    detail: str
    evidence: _Evidence
    fields: dict[str, Any] = field(default_factory=dict)


def _msg(f: _Findings, hit: Hit) -> str:
    line = f.lines[hit.index]
    text = line.inner if hit.inner and line.inner is not None else line.message
    return _clean(text.strip(), MAX_STRING)
