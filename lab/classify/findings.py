"""What the rules look at (findings from console and records) and what they return."""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from lab.classify.model import (
    MAX_EVIDENCE,
    MAX_HITS,
    MAX_STRING,
    MAX_TEXT,
    TAIL,
    TITLED,
    WINDOW_SLACK,
    Evidence,
    Hit,
    Line,
    RunFacts,
    _clean,
)
from lab.classify.normalise import Console, Scanner, lines, shown
from lab.classify.records import _Agent, _parse_records
from lab.classify.signatures import SIGNATURES
from lab.classify.title import frames

_LINUX = re.compile(r"\s*Linux version ")
KILLS = ("oom_killed_process", "memcg_oom_killed_process")


# --- userspace or not ------------------------------------------------------------

# Panic reasons that only happen while the kernel boots (init/main.c, init/do_mounts.c).
_BOOT_REASON = re.compile(
    r"No working init found|No init found|Requested init \S+ failed|Unable to mount root fs|"
    r"Attempted to kill the idle task"
)
# Frames of the boot path before userspace: start_kernel on CPU 0, kernel_init as PID 1
# before it execs init (do_one_initcall is missing on purpose: module loading calls it).
_BOOT_FRAMES = frozenset(
    {
        "start_kernel",
        "kernel_init",
        "kernel_init_freeable",
        "do_basic_setup",
        "do_initcalls",
        "prepare_namespace",
        "mount_root",
        "mount_block_root",
        "rest_init",
        "arch_call_rest_init",
    }
)
# Kernel threads: their names say nothing about userspace.
_KTHREAD = re.compile(
    r"(?:swapper|kworker|ksoftirqd|migration|rcu|kthreadd|khungtaskd|kswapd|kcompactd|watchdog|"
    r"irq/|cpuhp|oom_reaper|kauditd|jbd2|kblockd|khugepaged|ksmd|kdevtmpfs|writeback|"
    r"kthrotld|kintegrityd|kcryptd|scsi_|card\d|idle_inject|pr/|napi/|kvm|kswapd)"
)


def _user_task(fields: dict[str, Any]) -> bool:
    """A report's `CPU: N PID: N Comm: name` names a user task (not PID 0/1, not a
    kernel thread)."""
    pid, comm = fields.get("pid"), fields.get("comm")
    if not isinstance(pid, int) or pid <= 1 or not isinstance(comm, str) or not comm:
        return False
    return _KTHREAD.match(comm) is None


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

    def __init__(self, console: Console | Iterable[Line], facts: RunFacts | None) -> None:
        self.facts = facts
        self.first: dict[str, list[Hit]] = {}
        self.last: dict[str, Hit] = {}  # the last stamped hit, else the last weak one
        self.count: dict[str, int] = {}
        self.stamped = False  # any line with a printk stamp
        self.tail: deque[Line] = deque(maxlen=TAIL)  # the last non-empty lines
        self.boot: int | None = None  # the index of the kernel's `Linux version` line
        self.last_stamped = -1  # the last stamped line that is no restart/power-down line
        self.n_lines = 0
        # init_started hit index -> the first unstamped non-empty line after it
        self.after_init: dict[int, int] = {}
        self._scan(console)
        self.matched = tuple(self.first)  # dicts keep first-insertion order
        self.agent = (
            _parse_records(facts.records, facts.problems) if facts is not None else _Agent()
        )

    def _scan(self, console: Console | Iterable[Line]) -> None:
        """One pass over the log, keeping counts, the first MAX_HITS and the last hit of
        each signature (each with its report context), the last lines and a few indices:
        memory does not grow with the log."""
        scanner = Scanner()
        last_any: dict[str, Hit] = {}
        last_strong: dict[str, Hit] = {}  # the last hit that is not an unstamped kernel line
        titled: dict[tuple[str, bool], int] = {}
        waiting: list[int] = []  # init_started hits waiting for an unstamped line
        index = -1
        tail, feed, boot = self.tail.append, scanner.feed, _LINUX.match
        source = lines(console) if isinstance(console, str) or callable(console) else console
        for index, line in enumerate(source):
            message, ktime = line.message, line.ktime
            if message and not message.isspace():
                tail(line)
                if ktime is None and waiting:
                    for start in waiting:
                        self.after_init[start] = index
                    waiting.clear()
            if self.boot is None and boot(message):
                self.boot = index
            hit = feed(index, line)
            if hit is None:
                if ktime is not None:
                    self.stamped = True
                    self.last_stamped = index
                continue
            if ktime is not None:
                self.stamped = True
                if hit.sig.role != "end":
                    self.last_stamped = index
            if self.facts is not None and hit.sig.kernel and hit.ktime is None:
                continue
            name = hit.sig.name
            self.count[name] = self.count.get(name, 0) + 1
            kept = self.first.setdefault(name, [])
            strong = not (hit.sig.kernel and hit.ktime is None)
            key = (name, strong)
            window = hit.sig.role == "report" and titled.get(key, 0) < TITLED
            if window:
                titled[key] = titled.get(key, 0) + 1
            scanner.follow(hit, window)
            if len(kept) < MAX_HITS:
                kept.append(hit)
            last_any[name] = hit
            if strong:
                last_strong[name] = hit
            if name == "init_started":
                waiting.append(index)
        self.n_lines = index + 1
        for name, hit in last_any.items():
            self.last[name] = last_strong.get(name, hit) if self.stamped else hit

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
        return self.stamped

    def userspace_ran(self, before: int | None = None) -> bool:
        """Did userspace run (before line index `before`)?"""
        if self.facts is not None:
            return self.facts.ready
        limit = self.n_lines if before is None else before
        if any(h.index < limit for h in self.hits("lab_ready")):
            return True
        starts = [h for h in self.hits("init_started") if h.index < limit]
        if not starts:
            return False
        if not self.kernel_output():
            return True  # no printk stamps at all: nothing to tell userspace lines apart
        return self.after_init.get(starts[0].index, limit) < limit

    def never_ran(self, panic: Hit) -> str | None:
        """Foreign log: the positive evidence that userspace never ran before `panic`, or
        None. A log that starts mid-run says nothing either way; a user task named by a
        report (`Comm: syz-executor`), or userspace output after `Run /init`, says it ran."""
        if self.userspace_ran(before=panic.index):
            return None
        reports = [
            h
            for n, hs in self.first.items()
            for h in hs
            if h.sig.role == "report" and h.index <= panic.index
        ]
        for h in reports:
            if _user_task(h.fields):
                return None
        reason = str(panic.fields.get("reason", ""))
        if _BOOT_REASON.search(reason):
            return f"the panic reason '{_clean(reason, 80)}'"
        for h in [panic, *reports]:
            frame = next((x for x in frames(h.window) if x in _BOOT_FRAMES), None)
            if frame is not None:
                return f"the report's call trace is in {frame}()"
            if h.fields.get("pid") == 1 and str(h.fields.get("comm", "")).startswith("swapper"):
                return "the report names PID 1 still in the kernel (swapper)"
        if self.boot is not None and self.boot < panic.index:
            return "the log shows the boot (Linux version) and no sign of userspace before it"
        return None

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
        return None if self.last_stamped > end.index else end

    def running_testcase(self, before: int | None = None) -> str | None:
        """The test case whose `lab: testcase X start` marker has no end before `before`."""
        limit = self.n_lines if before is None else before
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
        return self.hits(*KILLS)

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

    def line(self, line: Line, signature: str, ktime: float | None = None) -> None:
        text = shown(line.text[: MAX_TEXT + 1])
        if len(text) > MAX_TEXT:
            text = text[: MAX_TEXT - 1] + "…"
        self._add(Evidence(line.line_no, text, line.ktime if ktime is None else ktime, signature))

    def hit(self, hit: Hit, context: int | None = None) -> None:
        """The hit's line and its report context (at most `context` lines of it)."""
        if hit.line is not None:
            self.line(hit.line, hit.sig.name, hit.ktime)
        ctx = hit.sig.context
        if ctx is None or not ctx.lines:
            return
        n = ctx.lines if context is None else min(context, ctx.lines)
        for line in hit.after[:n]:
            self.line(line, f"context:{hit.sig.name}")

    def note(self, text: str, signature: str) -> None:
        self._add(Evidence(0, _clean(text, MAX_TEXT), None, signature))

    def tail(self, n: int = TAIL) -> None:
        for line in list(self.f.tail)[-n:]:
            self.line(line, "tail")

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
    title: str | None = None  # the CI-bot style title of the report that decided


def _msg(f: _Findings, hit: Hit) -> str:
    line = hit.line
    if line is None:
        return ""
    text = line.inner if hit.inner and line.inner is not None else line.message
    return _clean(text.strip(), MAX_STRING)
