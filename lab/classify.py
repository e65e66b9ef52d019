"""The outcome classifier: a raw console log (+ what the lab knows) -> one class with evidence.

Pure: no I/O, no processes. `lab run` calls `classify(console, facts)` after a boot;
`lab classify LOG` calls `classify(console)` on any saved serial log, from this lab
or another one. Three stages:

1. `normalise` splits the console into lines (CR dropped, original 1-based line
   numbers kept), strips terminal escapes and the prefixes in front of a kernel
   message: the lab's host timestamp (`console.timed.log`), `<N>` syslog levels,
   the printk timestamp and a `[T123]` caller id.
2. Every line is matched against the declarative table in `lab.signatures`; the
   first matching entry wins for that line.
3. `RULES`, an explicit ordered list, picks the class: the first rule whose
   condition holds decides, and its id is recorded. docs/outcomes.md explains
   each rule and why the order is what it is.

Everything from the guest (console text and agent records) is untrusted: records
are type-checked field by field, malformed ones become protocol problems, and any
string copied into the output is cleaned of control characters and capped.
"""

from __future__ import annotations

import math
import re
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from lab.errors import UserError
from lab.outcome import CLASSES as CLASSES  # re-exported: callers knew it here
from lab.signatures import INT_FIELDS, SIGNATURES, Signature

MAX_EVIDENCE = 40  # evidence lines per classification
MAX_TEXT = 2000  # characters of one console line kept in evidence
MAX_MATCH = 4096  # characters of one console line the classifier reads (printk: < 1024)
MAX_STRING = 200  # characters of a string copied from a record or a field
MAX_DETAIL = 300
MAX_RECORDS = 10_000  # records looked at; the host already bounds their size
MAX_PROBLEMS = 20
MAX_HITS = 200  # hits kept per signature (all are counted)
TAIL = 10  # last console lines shown when a log just stops

TASK_STATUSES = ("exited", "signaled", "timeout", "killed")
VERDICTS = ("pass", "fail", "error")
# What a task is to the scenario (lab/guest/labguest.py ROLES; a test checks they agree).
# The outcome is decided for the victim; the others are context. "harness" is the
# test-case process itself: never a victim, and its death is an infrastructure error.
TASK_ROLES = ("victim", "attacker", "hog", "worker", "probe", "reader", "holder")
HARNESS = "harness"
ROLES = (*TASK_ROLES, HARNESS)
MAX_OTHERS = 20  # entries of fields.others
# A test case may report what userspace saw; these classes need kernel evidence.
KERNEL_CLASSES = ("oom_kill", "fault_livelock", "panic", "oops", "bug", "warn")
# Slack (s) around a task's run window when holding kernel lines against it: the agent's
# times run from the test case's start, the console's from the kernel's printk clock,
# anchored by the stamped `lab: testcase NAME start` line written just before the fork.
WINDOW_SLACK = 2.0


# --- public value types -------------------------------------------------------


@dataclass(frozen=True)
class RunFacts:
    """What the lab knows about a run besides the console (None for a foreign log).

    `ready`: the guest printed its ready marker (userspace ran).
    `deadline`: "boot" or "test" when that deadline expired and the lab killed QEMU.
    `qemu_exit`: QEMU's exit status, if it exited.
    `records`: the agent's JSON records, already bounded and parsed by the host,
      still untrusted (see docs/outcomes.md for the schema).
    `problems`: result-channel protocol problems (malformed lines, limits hit).
    `expected_banner`: the `secretmem: lab variant` attributes the cell asked for.
    """

    ready: bool = False
    deadline: str | None = None  # a lab.outcome.Deadline; from a cell.json, any string
    qemu_exit: int | None = None
    records: tuple[Mapping[str, Any], ...] = ()
    problems: tuple[str, ...] = ()
    expected_banner: Mapping[str, str] | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> RunFacts:
        """Build from a JSON object (a corpus `FACTS:` header, a saved cell).

        Raises:
            LabError: unknown keys or values of the wrong type.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"facts: unknown key(s) {unknown}; expected some of {sorted(known)}")
        ready = data.get("ready", False)
        deadline = data.get("deadline")
        qemu_exit = data.get("qemu_exit")
        records = data.get("records", [])
        problems = data.get("problems", [])
        banner = data.get("expected_banner")
        if not isinstance(ready, bool):
            raise UserError("facts: 'ready' must be true or false")
        if deadline is not None and not isinstance(deadline, str):
            raise UserError("facts: 'deadline' must be a string or null")
        if qemu_exit is not None and _int(qemu_exit) is None:
            raise UserError("facts: 'qemu_exit' must be an integer or null")
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise UserError("facts: 'records' must be a list of objects")
        if not isinstance(problems, list) or not all(isinstance(p, str) for p in problems):
            raise UserError("facts: 'problems' must be a list of strings")
        if banner is not None and not (
            isinstance(banner, dict) and all(isinstance(v, str) for v in banner.values())
        ):
            raise UserError("facts: 'expected_banner' must be an object of strings or null")
        return cls(ready, deadline, qemu_exit, tuple(records), tuple(problems), banner)


@dataclass(frozen=True)
class Evidence:
    """One line that justifies a class. Records and lab facts have line_no 0."""

    line_no: int
    text: str  # the original console line without CR (capped), or a rendered record
    ktime: float | None  # the kernel's printk timestamp, when the line has one
    signature: str  # the signature that matched, "context:<sig>", "tail", "agent:...", "lab:..."

    def to_json(self) -> dict[str, Any]:
        return {
            "line_no": self.line_no,
            "text": self.text,
            "ktime": self.ktime,
            "signature": self.signature,
        }


@dataclass(frozen=True)
class Classification:
    outcome: str  # one of CLASSES (an Outcome value)
    detail: str  # one human line
    rule: str  # id of the precedence rule that decided (see RULES)
    rule_text: str  # that rule in one sentence
    evidence: tuple[Evidence, ...]
    matched: tuple[str, ...]  # every signature that matched, first-match order
    fields: Mapping[str, Any]  # JSON-safe values

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "detail": self.detail,
            "rule": self.rule,
            "rule_text": self.rule_text,
            "evidence": [e.to_json() for e in self.evidence],
            "matched": list(self.matched),
            "fields": _jsonable(self.fields),
        }


@dataclass(frozen=True)
class Line:
    """One console line after normalisation."""

    line_no: int  # 1-based, in the console as given
    text: str  # the original line without CR
    message: str  # escapes and prefixes stripped: what signatures match
    ktime: float | None  # printk timestamp
    host_time: float | None  # the lab's console.timed.log stamp
    level: int | None  # `<N>` syslog level
    inner: str | None = None  # text after a printk stamp found mid-line (interleaved output)
    inner_ktime: float | None = None


@dataclass(frozen=True)
class Hit:
    sig: Signature
    index: int  # into the normalised lines
    fields: Mapping[str, Any]
    ktime: float | None
    inner: bool = False  # matched the text after a mid-line printk stamp


# --- normalisation ------------------------------------------------------------

_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[()*+][0-~]|[@-~])")
_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# C0 (but tab), DEL and C1 controls, and the bidi controls that reorder what a reader
# sees (Trojan Source): embeddings/overrides, isolates, LRM/RLM and the Arabic mark.
_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_TOKEN = re.compile(
    r"<(?P<level>\d{1,3})>|\[\s*(?P<stamp>\d{1,12}\.\d{1,9})\]|\[\s*(?P<caller>[TC]\d{1,10})\]"
)
_INNER = re.compile(r"\[\s*(\d{1,12}\.\d{6})\]\s?")


def shown(text: str) -> str:
    """A console line as evidence shows it: control characters as `\\xNN` escapes and
    bidi controls as `\\uNNNN`, so that a guest can neither drive the terminal of
    whoever reads the evidence nor reorder what they see."""
    return _UNSAFE.sub(_escape, text)


def _escape(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _prefix(message: str) -> tuple[list[tuple[str, str]], int]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while len(tokens) < 6:
        m = _TOKEN.match(message, pos)
        if not m:
            break
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
        if message.startswith(" ", pos):
            pos += 1
    return tokens, pos


def normalise(console: str) -> tuple[Line, ...]:
    """Split a raw console log into `Line`s.

    Accepted format: any text; CR characters are dropped; terminal escape
    sequences and other control characters are removed from `message`. A line
    may start with, in this order and each optional: the lab's host stamp
    `[  12.345678] ` (console.timed.log), a `<4>` syslog level, the printk stamp
    `[    1.234567]`, a `[    T1]`/`[ C0]` caller id. When any line carries two
    leading stamps the log is a timed log and the first stamp of every line is the
    host's; otherwise a single stamp is the kernel's.
    """
    raw_lines = console.replace("\r", "").split("\n")
    if raw_lines and raw_lines[-1] == "":
        raw_lines.pop()
    parsed = []
    timed = False
    for text in raw_lines:
        # Only the start of a line is read: kernel messages are short, and one endless
        # guest line must cost no more than this.
        clean = text[:MAX_MATCH]
        if "\x1b" in clean or _CTRL.search(clean):
            clean = _CTRL.sub("", _ANSI.sub("", clean))
        tokens, pos = _prefix(clean)
        if sum(k == "stamp" for k, _ in tokens) >= 2 and tokens[0][0] == "stamp":
            timed = True
        parsed.append((text, clean, tokens, pos))
    out = []
    for no, (text, clean, tokens, pos) in enumerate(parsed, 1):
        stamps = [float(v) for k, v in tokens if k == "stamp"]
        levels = [int(v) for k, v in tokens if k == "level"]
        host: float | None = None
        ktime: float | None = None
        if timed and tokens and tokens[0][0] == "stamp":
            host = stamps[0]
            ktime = stamps[1] if len(stamps) > 1 else None
        elif stamps:
            ktime = stamps[-1]
        message = clean[pos:]
        inner = inner_ktime = None
        if "[" in message[1:]:
            m = _INNER.search(message, 1)
            if m:
                inner, inner_ktime = message[m.end() :], float(m.group(1))
        out.append(
            Line(no, text, message, ktime, host, levels[0] if levels else None, inner, inner_ktime)
        )
    return tuple(out)


def _strip_groups(pattern: str) -> str:
    return re.sub(r"\(\?P<\w+>", "(?:", pattern)


# One alternation of every signature: most lines match nothing, and one match()
# tells so much faster than trying each entry.
_ANY = re.compile("|".join(f"(?:{_strip_groups(s.pattern.pattern)})" for s in SIGNATURES))


def _extract(m: re.Match[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in m.groupdict().items():
        if value is None:
            continue
        if key in INT_FIELDS:
            try:
                out[key] = int(value)
                continue
            except ValueError:
                pass
        out[key] = _clean(value, MAX_STRING)
    return out


def scan(lines: Sequence[Line]) -> list[Hit]:
    """Every line that matches a signature, in line order (one signature per line).

    A kernel line echoed later by userspace (`dmesg | grep` in a foreign harness)
    has the same printk stamp and message as the original; the echo is skipped so
    that counts are not inflated.
    """
    hits = []
    seen: set[tuple[float, str]] = set()
    for index, line in enumerate(lines):
        candidates = [(line.message, line.ktime, False)]
        if line.inner is not None:
            candidates.append((line.inner, line.inner_ktime, True))
        for message, ktime, inner in candidates:
            if not message or not _ANY.match(message):
                continue
            hit = _match_line(lines, index, message, ktime, inner)
            if hit is None:
                continue
            if ktime is not None:
                if (ktime, message) in seen:
                    break
                seen.add((ktime, message))
            hits.append(hit)
            break
    return hits


def _match_line(
    lines: Sequence[Line], index: int, message: str, ktime: float | None, inner: bool
) -> Hit | None:
    for sig in SIGNATURES:
        m = sig.pattern.match(message)
        if not m:
            continue
        values = _extract(m)
        ctx = sig.context
        if ctx is not None and ctx.scan:
            wanted = list(ctx.fields)
            for j in range(index + 1, min(len(lines), index + 1 + ctx.scan)):
                for pat in list(wanted):
                    mm = pat.search(lines[j].message)
                    if mm:
                        wanted.remove(pat)
                        for k, v in _extract(mm).items():
                            values.setdefault(k, v)
                if not wanted:
                    break
        return Hit(sig, index, values, ktime, inner)
    return None


# --- untrusted agent records --------------------------------------------------


def _clean(value: str, cap: int) -> str:
    text = "".join(c if c.isprintable() else "?" for c in value[: cap + 1])
    return text if len(text) <= cap else text[: cap - 1] + "…"


def _str(value: Any) -> str | None:
    return _clean(value, MAX_STRING) if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class _Task:
    testcase: str
    name: str
    pid: int | None
    comm: str | None
    status: str
    signal: str | None
    si_code: str | None
    exit_code: int | None
    seconds: float | None
    expected_signal: str | None = None  # the test provoked this signal on purpose
    role: str | None = None  # one of ROLES; None in records from before roles

    @property
    def harness(self) -> bool:
        """The test-case process (records from before roles name it `testcase:NAME`)."""
        return self.role == HARNESS or (self.role is None and self.name.startswith("testcase:"))

    @property
    def intended(self) -> bool:
        """Died of the very signal the test case meant to provoke (not an outcome)."""
        return (
            self.status == "signaled"
            and self.signal is not None
            and (self.signal == self.expected_signal)
        )

    def render(self) -> str:
        who = f"task {self.name}" + (f" pid {self.pid}" if self.pid is not None else "")
        if self.comm:
            who += f" ({self.comm})"
        if self.status == "signaled":
            what = f"signaled {self.signal or '?'}" + (f" ({self.si_code})" if self.si_code else "")
        elif self.status == "exited":
            what = f"exited {self.exit_code if self.exit_code is not None else '?'}"
        else:
            what = self.status + (f" {self.signal}" if self.signal else "")
        after = f" after {self.seconds:.1f}s" if self.seconds is not None else ""
        return f"agent: {self.testcase}: {who} {what}{after}"


@dataclass(frozen=True)
class _About:
    """The task a result's observation is about (`result.about`)."""

    name: str
    pid: int
    role: str


@dataclass(frozen=True)
class _Spawn:
    """A task started (`spawn` record): its role and pid, and when (s since its test
    case started)."""

    testcase: str
    name: str
    role: str
    pid: int
    t: float | None
    oom_score_adj: int | None = None  # what the lab set for it


@dataclass(frozen=True)
class _Precondition:
    testcase: str
    check: str
    ok: bool
    message: str
    data: Any  # bounded copy (_small)


@dataclass(frozen=True)
class _Error:
    """An agent `error` record. kind "harness": the test-case process died (or could not
    be protected); kind "precondition": the scenario could not be staged."""

    message: str
    kind: str | None
    testcase: str | None
    check: str | None
    pid: int | None
    data: Any


@dataclass(frozen=True)
class _Result:
    testcase: str
    verdict: str
    observed: str | None
    message: str
    timeout: bool = False  # the agent killed the test case at its own timeout
    about: _About | None = None
    precondition: str | None = None  # the check that failed (verdict error)

    def render(self) -> str:
        seen = f" (observed {self.observed})" if self.observed else ""
        over = " (timeout)" if self.timeout else ""
        return f"agent: result {self.testcase}: {self.verdict}{over}{seen}: {self.message}"


@dataclass
class _Agent:
    tasks: list[_Task] = field(default_factory=list)
    results: list[_Result] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    error_records: list[_Error] = field(default_factory=list)
    spawns: list[_Spawn] = field(default_factory=list)
    preconditions: list[_Precondition] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    agent_pid: int | None = None
    done: bool = False

    def problem(self, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(_clean(text, MAX_STRING))

    def roles(self) -> dict[int, tuple[str, str]]:
        """pid -> (role, name), from spawn and task records (the first says)."""
        out: dict[int, tuple[str, str]] = {}
        for sp in self.spawns:
            out.setdefault(sp.pid, (sp.role, sp.name))
        for t in self.tasks:
            if t.pid is not None:
                role = HARNESS if t.harness else t.role
                if role is not None:
                    out.setdefault(t.pid, (role, t.name))
        return out

    def lab_pids(self) -> dict[int, str]:
        """The pids that are the lab, not the scenario: harnesses and the agent."""
        out = {pid: name for pid, (role, name) in self.roles().items() if role == HARNESS}
        if self.agent_pid is not None:
            out.setdefault(self.agent_pid, "the agent")
        return out

    def victim(self) -> _About | None:
        """The task the scenario is about: a result's `about` with role victim, else the
        one task started with role victim (several, or none: no victim is named)."""
        for r in self.results:
            if r.about is not None and r.about.role == "victim":
                return r.about
        spawned = [sp for sp in self.spawns if sp.role == "victim"]
        if len(spawned) == 1:
            sp = spawned[0]
            return _About(sp.name, sp.pid, sp.role)
        return None

    def task_of(self, pid: int) -> _Task | None:
        return next((t for t in self.tasks if t.pid == pid), None)

    def spawn_of(self, pid: int) -> _Spawn | None:
        return next((sp for sp in self.spawns if sp.pid == pid), None)


def _optional(
    rec: Mapping[str, Any], key: str, conv: Callable[[Any], Any], agent: _Agent, where: str
) -> Any:
    if key not in rec or rec[key] is None:
        return None
    value = conv(rec[key])
    if value is None:
        agent.problem(f"{where}: '{key}' has the wrong type")
    return value


def _small(value: Any, depth: int = 3) -> Any:
    """A bounded, JSON-safe copy of an untrusted value for fields (numbers of a check)."""
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return _clean(value, MAX_STRING)
    if depth <= 0:
        return "…"
    if isinstance(value, Mapping):
        items = list(value.items())[:MAX_OTHERS]
        return {_clean(str(k), 64): _small(v, depth - 1) for k, v in items}
    if isinstance(value, list | tuple):
        return [_small(v, depth - 1) for v in list(value)[:MAX_OTHERS]]
    return None


def _role(rec: Mapping[str, Any], agent: _Agent, where: str, known: Sequence[str]) -> str | None:
    role = rec.get("role")
    if role is None:
        return None
    if role not in known:
        agent.problem(f"{where}: 'role' is not one of {', '.join(known)}")
        return None
    return str(role)


def _about(rec: Mapping[str, Any], agent: _Agent, where: str) -> _About | None:
    about = rec.get("about")
    if about is None:
        return None
    name = _str(about.get("name")) if isinstance(about, Mapping) else None
    pid = _int(about.get("pid")) if isinstance(about, Mapping) else None
    role = about.get("role") if isinstance(about, Mapping) else None
    if name is None or pid is None or role not in TASK_ROLES:
        agent.problem(
            f"{where}: 'about' must be {{name, pid, role}} with role one of {', '.join(TASK_ROLES)}"
        )
        return None
    return _About(name, pid, str(role))


def _parse_records(records: Sequence[Any], problems: Sequence[Any]) -> _Agent:
    agent = _Agent()
    for p in list(problems)[:MAX_PROBLEMS]:
        agent.problem(p if isinstance(p, str) else repr(p))
    if len(records) > MAX_RECORDS:
        agent.problem(f"{len(records)} records; only the first {MAX_RECORDS} were read")
    for i, rec in enumerate(list(records)[:MAX_RECORDS]):
        where = f"record {i + 1}"
        if not isinstance(rec, Mapping):
            agent.problem(f"{where}: not an object")
            continue
        kind = rec.get("type")
        if not isinstance(kind, str):
            agent.problem(f"{where}: no string 'type'")
            continue
        if kind == "task":
            name, status = _str(rec.get("name")), rec.get("status")
            if name is None or status not in TASK_STATUSES:
                agent.problem(f"{where}: task record without a string 'name' and a known 'status'")
                continue
            agent.tasks.append(
                _Task(
                    testcase=_str(rec.get("testcase")) or "?",
                    name=name,
                    pid=_optional(rec, "pid", _int, agent, where),
                    comm=_optional(rec, "comm", _str, agent, where),
                    status=str(status),
                    signal=_optional(rec, "signal", _str, agent, where),
                    si_code=_optional(rec, "si_code", _str, agent, where),
                    exit_code=_optional(rec, "exit_code", _int, agent, where),
                    seconds=_optional(rec, "seconds", _float, agent, where),
                    expected_signal=_optional(rec, "expected_signal", _str, agent, where),
                    role=_role(rec, agent, where, ROLES),
                )
            )
        elif kind == "spawn":
            name, pid = _str(rec.get("name")), _int(rec.get("pid"))
            role = _role(rec, agent, where, ROLES)
            if name is None or pid is None or role is None:
                agent.problem(f"{where}: spawn record without a string 'name', 'pid' and 'role'")
                continue
            t = _optional(rec, "t", _float, agent, where)
            adj = _optional(rec, "oom_score_adj", _int, agent, where)
            agent.spawns.append(_Spawn(_str(rec.get("testcase")) or "?", name, role, pid, t, adj))
        elif kind == "precondition":
            check, ok = _str(rec.get("check")), rec.get("ok")
            if check is None or not isinstance(ok, bool):
                agent.problem(f"{where}: precondition record without a string 'check' and 'ok'")
                continue
            agent.preconditions.append(
                _Precondition(
                    _str(rec.get("testcase")) or "?",
                    check,
                    ok,
                    _optional(rec, "message", _str, agent, where) or "",
                    _small(rec.get("data")),
                )
            )
        elif kind == "result":
            verdict = rec.get("verdict")
            if verdict not in VERDICTS:
                agent.problem(f"{where}: result record without a known 'verdict'")
                continue
            observed = rec.get("observed")
            if observed is not None and observed not in CLASSES:
                agent.problem(f"{where}: 'observed' is not an outcome class")
                observed = None
            message = _optional(rec, "message", _str, agent, where)
            agent.results.append(
                _Result(
                    _str(rec.get("testcase")) or "?",
                    str(verdict),
                    observed,
                    message or "",
                    rec.get("timeout") is True,
                    _about(rec, agent, where),
                    _optional(rec, "precondition", _str, agent, where),
                )
            )
        elif kind == "error":
            message = _str(rec.get("message")) or "(no message)"
            agent.errors.append(message)
            agent.error_records.append(
                _Error(
                    message,
                    _optional(rec, "kind", _str, agent, where),
                    _optional(rec, "testcase", _str, agent, where),
                    _optional(rec, "check", _str, agent, where),
                    _optional(rec, "pid", _int, agent, where),
                    _small(rec.get("data")),
                )
            )
        elif kind == "ready":
            agent.agent_pid = _optional(rec, "agent_pid", _int, agent, where)
        elif kind == "done":
            agent.done = True
        # "event", "output", "exit" and unknown types carry nothing to decide on.
    return agent


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


# --- the rules, in precedence order ----------------------------------------------


def _banner_mismatch(f: _Findings) -> _Verdict | None:
    expected = f.facts.expected_banner if f.facts is not None else None
    if not expected:
        return None
    want = {str(k): str(v) for k, v in expected.items()}
    banners = f.banners()
    ev = _Evidence(f)
    wanted_text = " ".join(f"{k}={v}" for k, v in want.items())
    if not banners:
        if not f.userspace_ran():
            return None  # no banner because the kernel never got that far: the boot rules say why
        ev.note(f"lab: expected the banner 'secretmem: lab variant {wanted_text}'", "lab:banner")
        ev.tail(5)
        return _Verdict(
            "infra_error",
            "infra_error: the secretmem lab banner is missing: not the kernel the cell asked for",
            ev,
            {"expected_banner": want, "banner": None},
        )
    for hit, seen in banners:
        diff = {k: (v, seen.get(k)) for k, v in want.items() if seen.get(k) != v}
        if diff:
            ev.hit(hit)
            ev.note(
                f"lab: expected the banner 'secretmem: lab variant {wanted_text}'", "lab:banner"
            )
            words = ", ".join(f"{k}={got} (expected {exp})" for k, (exp, got) in diff.items())
            return _Verdict(
                "infra_error",
                f"infra_error: the wrong kernel booted: banner has {words}",
                ev,
                {
                    "expected_banner": want,
                    "banner": seen,
                    "mismatch": {k: {"expected": e, "seen": g} for k, (e, g) in diff.items()},
                },
            )
    return None


def _panic_hits(f: _Findings) -> list[Hit]:
    return f.by_class("panic")


def _panic_common(f: _Findings, outcome: str, hit: Hit) -> _Verdict:
    ev = _Evidence(f)
    ev.hit(hit)
    values: dict[str, Any] = {
        "reason": hit.fields.get("reason", ""),
        "panic_signature": hit.sig.name,
    }
    for k in ("pid", "comm"):
        if k in hit.fields:
            values[k] = hit.fields[k]
    extra = []
    causes = [h for cls in ("bug", "oops", "warn") for h in f.by_class(cls) if h.index < hit.index]
    if causes:
        cause = min(causes, key=lambda h: h.index)
        ev.hit(cause, context=12)
        values["cause_signature"] = cause.sig.name
        values["cause"] = _msg(f, cause)
        extra.append(f"after {cause.sig.outcome}: {values['cause']}")
    kills = [
        h for h in f.hits("oom_killed_process", "memcg_oom_killed_process") if h.index < hit.index
    ]
    if kills:
        values["oom_kills"] = len(kills)
        extra.append(f"after {len(kills)} OOM kill{'s' if len(kills) > 1 else ''}")
        for h in kills[:3]:
            ev.hit(h)
    for h in f.hits("oom_no_killable")[:1] + f.hits("oom_invoked")[-1:]:
        if h.index < hit.index:
            ev.hit(h)
    running = f.running_testcase(hit.index)
    if running:
        values["testcase"] = running
        extra.append(f"during test case {running}")
    reason = values["reason"] or "(no reason)"
    what = "kernel panic before userspace ran: " if outcome == "boot_failure" else ""
    more = f" ({'; '.join(extra)})" if extra else ""
    return _Verdict(outcome, f"{outcome}: {what}{reason}{more}", ev, values)


def _panic_before_userspace(f: _Findings) -> _Verdict | None:
    panics = _panic_hits(f)
    if not panics or f.userspace_ran(before=panics[0].index):
        return None
    return _panic_common(f, "boot_failure", panics[0])


def _panic(f: _Findings) -> _Verdict | None:
    panics = _panic_hits(f)
    return _panic_common(f, "panic", panics[0]) if panics else None


def _integrity(outcome: str) -> Callable[[_Findings], _Verdict | None]:
    def rule(f: _Findings) -> _Verdict | None:
        hits = f.by_class(outcome)
        if not hits:
            return None
        ev = _Evidence(f)
        ev.hit(hits[0])
        kinds: dict[str, Hit] = {}
        for h in hits:
            kinds.setdefault(h.sig.name, h)
        for h in kinds.values():
            ev.hit(h, context=4)
        first = hits[0]
        values: dict[str, Any] = {"signature": first.sig.name, "message": _msg(f, first)}
        values.update({k: v for k, v in first.fields.items() if k not in values})
        values["reports"] = sum(f.count[n] for n in kinds)
        more = f" (+{values['reports'] - 1} more)" if values["reports"] > 1 else ""
        return _Verdict(outcome, f"{outcome}: {values['message']}{more}", ev, values)

    return rule


# --- the lab, not the scenario: harness deaths, preconditions, what else happened -------


def _label(role: str | None, name: str | None) -> str:
    if role is None or role == name:
        return name or role or "?"
    return f"{role} {name}" if name else role


def _others(
    f: _Findings, victim: _About | None, subject: int | None = None
) -> list[dict[str, Any]]:
    """What happened to every task but the victim (or the `subject` of an infra verdict):
    OOM kills, signals, timeouts, and the Huh lines outside the victim's run. Context,
    never the outcome (bounded)."""
    out: list[dict[str, Any]] = []
    roles = f.agent.roles()
    skip = victim.pid if victim is not None else subject
    killed: dict[int, Hit] = {}
    for h in f.kills():
        pid = h.fields.get("pid")
        if isinstance(pid, int):
            killed.setdefault(pid, h)
    seen: set[int] = set()
    for t in f.agent.tasks:
        if t.pid is None or t.pid == skip or t.pid in seen:
            continue
        seen.add(t.pid)
        role, name = roles.get(t.pid, (t.role, t.name))
        kill = killed.get(t.pid)
        if kill is not None:
            fate, evidence = "OOM-killed", _msg(f, kill)
        elif t.status == "signaled" and not t.intended:
            fate, evidence = f"died of {t.signal or '?'}", t.render()
        elif t.status == "timeout":
            fate, evidence = "timed out", t.render()
        else:
            continue
        out.append({"pid": t.pid, "role": role, "name": name, "fate": fate, "evidence": evidence})
    for pid, kill in killed.items():
        if pid == skip or pid in seen:
            continue
        seen.add(pid)
        role, name = roles.get(pid, (None, str(kill.fields.get("comm", "?"))))
        entry = {"pid": pid, "role": role, "name": name, "fate": "OOM-killed"}
        out.append({**entry, "evidence": _msg(f, kill)})
    if victim is not None:
        window = f.window(victim.pid)
        outside = [h for h in f.hits("fault_oom_huh") if not _inside(h, window)]
        if outside:
            out.append(
                {
                    "pid": None,
                    "role": None,
                    "name": None,
                    "fate": f"{len(outside)} 'Huh VM_FAULT_OOM' lines outside the victim's run",
                    "evidence": _msg(f, outside[0]),
                }
            )
    return out[:MAX_OTHERS]


def _context(others: Sequence[Mapping[str, Any]]) -> str:
    if not others:
        return ""
    shown_ = []
    for o in others[:3]:
        who = _label(o.get("role"), o.get("name"))
        pid = f" (pid {o['pid']})" if o.get("pid") is not None else ""
        shown_.append(f"{who}{pid} {o['fate']}" if o.get("name") else str(o["fate"]))
    more = f" (+{len(others) - 3} more)" if len(others) > 3 else ""
    return "; others: " + ", ".join(shown_) + more


def _inside(hit: Hit, window: tuple[float, float] | None) -> bool:
    if window is None:
        return True  # no anchor to tell when the task ran: every line may be its
    return hit.ktime is not None and window[0] <= hit.ktime <= window[1]


def _harness_oom_panic(f: _Findings) -> _Verdict | None:
    """`System is deadlocked on memory` (no killable task) whose last OOM invocation ran
    in a harness or the agent: they are at -1000, so the lab left the OOM killer nothing
    to kill; not a kernel outcome. A BUG/oops/WARNING before it still is (rule panic)."""
    if f.facts is None:
        return None
    panics = _panic_hits(f)
    if not panics:
        return None
    panic = panics[0]
    deadlocked = panic.sig.name == "oom_deadlock_panic" or any(
        h.index < panic.index for h in f.hits("oom_no_killable")
    )
    if not deadlocked:
        return None
    if any(h.index < panic.index for c in ("bug", "oops", "warn") for h in f.by_class(c)):
        return None
    inv = next((h for h in reversed(f.hits("oom_invoked")) if h.index < panic.index), None)
    lab = f.agent.lab_pids()
    pid = inv.fields.get("pid") if inv is not None else None
    if not isinstance(pid, int):
        return None
    spawn = f.agent.spawn_of(pid)
    kernel_adj = inv.fields.get("oom_score_adj") if inv is not None else None
    if (
        pid not in lab
        and spawn is not None
        and kernel_adj == -1000
        and spawn.oom_score_adj not in (None, -1000)
    ):
        # A workload task the lab meant to leave killable ran at the harness's -1000
        # (the kernel prints the invoker's value): the protection leaked, the lab's doing.
        lab = {**lab, pid: f"{spawn.name} (oom_score_adj {spawn.oom_score_adj} meant)"}
    if pid not in lab:
        return None
    ev = _Evidence(f)
    ev.hit(panic)
    assert inv is not None
    ev.hit(inv)
    for h in f.hits("oom_no_killable")[-1:]:
        ev.hit(h)
    values: dict[str, Any] = {
        "reason": panic.fields.get("reason", ""),
        "invoker_pid": pid,
        "invoker": lab[pid],
        "gfp_mask": inv.fields.get("gfp_mask"),
        "others": _others(f, None),
    }
    return _Verdict(
        "infra_error",
        f"infra_error: the OOM killer found nothing killable when {lab[pid]} (pid {pid}, "
        f"oom_score_adj -1000) allocated, and the kernel panicked ({values['reason']}): the "
        "lab left it nothing to kill; the run measured nothing",
        ev,
        values,
    )


def _harness_death(f: _Findings) -> _Verdict | None:
    if f.facts is None:
        return None
    lab = f.agent.lab_pids()
    died = [t for t in f.agent.tasks if t.harness and t.status == "signaled"]
    errors = [e for e in f.agent.error_records if e.kind == "harness"]
    kills = [h for h in f.kills() if h.fields.get("pid") in lab]
    if not (died or errors or kills):
        return None
    ev = _Evidence(f)
    for h in kills[:3]:
        inv = f.invoker(h)
        if inv is not None:
            ev.hit(inv)
        ev.hit(h)
    for t in died[:3]:
        ev.note(t.render(), "agent:task")
    for e in errors[:3]:
        ev.note(f"agent: error: {e.message}", "agent:error")
    pid: int | None
    if died:
        pid, signal, name = died[0].pid, died[0].signal, died[0].name
    elif kills:
        kpid = kills[0].fields.get("pid")
        pid, signal = (kpid if isinstance(kpid, int) else None), "SIGKILL"
        name = lab.get(pid, "?") if pid is not None else "?"
    else:
        pid, signal = errors[0].pid, None
        name = f"testcase:{errors[0].testcase}" if errors[0].testcase else "the agent"
    by_oom = pid is not None and any(h.fields.get("pid") == pid for h in kills)
    values: dict[str, Any] = {
        "harness_pid": pid,
        "harness": name,
        "signal": signal,
        "killed_by_oom": by_oom,
        "others": _others(f, None, pid),
    }
    if signal is None and errors:
        how = f"failed: {errors[0].message}"
    else:
        how = f"was killed by {signal or '?'}" + (" (the OOM killer)" if by_oom else "")
    who = f"{name}, pid {pid}" if pid is not None else name
    detail = f"infra_error: the harness ({who}) {how}; the run measured nothing"
    return _Verdict("infra_error", detail, ev, values)


def _precondition_failed(f: _Findings) -> _Verdict | None:
    if f.facts is None:
        return None
    failed = [p for p in f.agent.preconditions if not p.ok]
    errors = [e for e in f.agent.error_records if e.kind == "precondition"]
    results = [r for r in f.agent.results if r.precondition is not None]
    if not (failed or errors or results):
        return None
    ev = _Evidence(f)
    for p in failed[:3]:
        ev.note(f"agent: precondition {p.testcase}: {p.check} failed: {p.message}", "agent:check")
    for e in errors[:3]:
        ev.note(f"agent: error: {e.message}", "agent:error")
    for r in results[:3]:
        ev.note(r.render(), "agent:result")
    if failed:
        p = failed[0]
        check, testcase, message, data = p.check, p.testcase, p.message, p.data
    elif errors:
        e = errors[0]
        check, testcase, message, data = e.check or "?", e.testcase or "?", e.message, e.data
    else:
        r = results[0]
        check, testcase, message, data = str(r.precondition), r.testcase, r.message, None
    values = {"check": check, "testcase": testcase, "data": data, "others": _others(f, None)}
    detail = f"infra_error: precondition {check} failed in {testcase}: {message}"
    return _Verdict("infra_error", detail, ev, values)


# --- oom kill and fault livelock: for the victim when the records name one ------------


def _oom_kill(f: _Findings) -> _Verdict | None:
    victim = f.agent.victim() if f.facts is not None else None
    if victim is not None:
        return _oom_kill_victim(f, victim)
    return _oom_kill_console(f)


def _victim_fields(f: _Findings, v: _About) -> dict[str, Any]:
    task = f.agent.task_of(v.pid)
    fate = None
    if task is not None:
        fate = task.status + (f" {task.signal}" if task.signal else "")
        if task.status == "exited":
            fate += f" {task.exit_code}"
    return {"name": v.name, "pid": v.pid, "role": v.role, "fate": fate}


_INVOKER_FIELDS = (
    ("comm", "invoker_comm"),
    ("pid", "invoker_pid"),
    ("gfp_mask", "gfp_mask"),
    ("gfp_flags", "gfp_flags"),
    ("order", "order"),
    ("oom_score_adj", "oom_score_adj"),
)


def _invoker_fields(inv: Hit) -> dict[str, Any]:
    """What an `invoked oom-killer` report says about the allocation that ran it."""
    return {name: inv.fields[key] for key, name in _INVOKER_FIELDS if key in inv.fields}


def _kill_count(f: _Findings) -> int:
    return f.count.get("oom_killed_process", 0) + f.count.get("memcg_oom_killed_process", 0)


def _oom_kill_victim(f: _Findings, v: _About) -> _Verdict | None:
    """oom_kill for the victim: it was OOM-killed (its task did not return, and a stamped
    `Killed process <its pid>` exists), or its own allocation ran the OOM killer, which
    killed some task (spec 3(c) P0, 3(e) U0: the OOM killer fires in its context)."""
    task = f.agent.task_of(v.pid)
    kills = f.kills()
    own_kill = next((h for h in kills if h.fields.get("pid") == v.pid), None)
    killed = own_kill is not None and (task is None or task.status != "exited")
    by_victim = [
        (inv, h)
        for h in kills
        if (inv := f.invoker(h)) is not None and inv.fields.get("pid") == v.pid
    ]
    if not killed and not by_victim:
        return None
    ev = _Evidence(f)
    if by_victim:
        ev.hit(by_victim[0][0])
        ev.hit(by_victim[0][1])
    if killed:
        assert own_kill is not None
        inv = f.invoker(own_kill)
        if inv is not None:
            ev.hit(inv)
        ev.hit(own_kill)
    else:
        inv = by_victim[0][0]
    if task is not None:
        ev.note(task.render(), "agent:task")
    values: dict[str, Any] = {
        "victim": _victim_fields(f, v),
        "victim_killed": killed,
        "invoker_is_victim": bool(by_victim),
        "kill_count": _kill_count(f),
    }
    if inv is not None:
        values.update(_invoker_fields(inv))
    who = f"the {_label(v.role, v.name)} (pid {v.pid})"
    mask = f"gfp_mask={values.get('gfp_mask')}" if inv is not None else "no invoker line"
    if killed:
        if by_victim:
            how = f"was OOM-killed; the OOM killer ran in its own allocation ({mask})"
        elif inv is not None:
            how = (
                f"was OOM-killed; invoked by {values.get('invoker_comm', '?')} "
                f"(pid {values.get('invoker_pid', '?')}, {mask})"
            )
        else:
            how = "was OOM-killed"
    else:
        first = by_victim[0][1]
        pid = first.fields.get("pid")
        known = f.agent.roles().get(pid) if isinstance(pid, int) else None
        role, name = known or (None, str(first.fields.get("comm", "?")))
        how = (
            f"ran the OOM killer in its own allocation ({mask}, order={values.get('order')}), "
            f"which killed {_label(role, name)} (pid {pid})"
        )
    return _Verdict("oom_kill", f"oom_kill: {who} {how}", ev, values)


def _oom_kill_console(f: _Findings) -> _Verdict | None:
    kills = f.hits("oom_killed_process", "memcg_oom_killed_process")
    if not kills:
        return None
    ev = _Evidence(f)
    invoked = f.hits("oom_invoked")
    summaries = f.hits("oom_summary")
    reaped = f.hits("oom_reaped", "oom_reap_failed")
    tasks_by_pid = {t.pid: t for t in f.agent.tasks if t.pid is not None}
    described = []
    for n, kill in enumerate(kills):
        pid, comm = kill.fields.get("pid"), kill.fields.get("comm", "?")
        inv = next((h for h in reversed(invoked) if h.index < kill.index), None)
        task = tasks_by_pid.get(pid) if isinstance(pid, int) else None
        if task is not None and task.harness:
            # Not reached in lab runs (rule harness-death); never the culprit.
            role, culprit = f"the harness {task.name!r}", False
        elif task is not None:
            role, culprit = f"test task {task.name!r}", True
        elif inv is not None and (
            inv.fields.get("pid") == pid if "pid" in inv.fields else inv.fields.get("comm") == comm
        ):
            role, culprit = "the task that invoked the OOM killer", True
        else:
            role, culprit = "bystander", False
        described.append(
            {
                "pid": pid,
                "comm": comm,
                "role": role,
                "culprit": culprit,
                "memcg": kill.sig.name == "memcg_oom_killed_process",
                "invoker_comm": inv.fields.get("comm") if inv else None,
                "invoker_pid": inv.fields.get("pid") if inv else None,
            }
        )
        if n < 4:
            if inv is not None:
                ev.hit(inv)
            summary = next(
                (
                    h
                    for h in reversed(summaries)
                    if h.index < kill.index and (inv is None or h.index > inv.index)
                ),
                None,
            )
            if summary is not None:
                ev.hit(summary)
            ev.hit(kill)
            reap = next(
                (h for h in reaped if h.index > kill.index and h.fields.get("pid") == pid), None
            )
            if reap is not None:
                ev.hit(reap)
            if task is not None:
                ev.note(task.render(), "agent:task")
    first = described[0]
    inv = next((h for h in reversed(invoked) if h.index < kills[0].index), None)
    values: dict[str, Any] = {
        "victim_pid": first["pid"],
        "victim_comm": first["comm"],
        "victim_role": first["role"],
        "victim_is_culprit": first["culprit"],
        "kill_count": _kill_count(f),
        "kills": described[:20],
    }
    if inv is not None:
        values.update(_invoker_fields(inv))
    summary = next((h for h in summaries if h.index < kills[0].index), None)
    if summary is not None and "constraint" in summary.fields:
        values["constraint"] = summary.fields["constraint"]
    if first["culprit"]:
        who = first["role"]
    else:
        who = "a bystander, not the task that faulted"
        if inv is not None:
            invoker = str(inv.fields.get("comm", "?"))
            if "pid" in inv.fields:
                invoker += f", pid {inv.fields['pid']}"
            who = f"a bystander, not the task that invoked the OOM killer ({invoker})"
    more = f"; {values['kill_count']} kills in all" if values["kill_count"] > 1 else ""
    return _Verdict(
        "oom_kill", f"oom_kill: killed {first['pid']} ({first['comm']}) — {who}{more}", ev, values
    )


def _fault_livelock(f: _Findings) -> _Verdict | None:
    if not f.has("fault_oom_huh"):
        return None
    victim = f.agent.victim() if f.facts is not None else None
    if victim is not None:
        return _fault_livelock_victim(f, victim)
    timed_out = [t for t in f.agent.tasks if t.status == "timeout"]
    overran = [r for r in f.agent.results if r.timeout]
    suppressed = f.hits("fault_oom_suppressed")
    if f.facts is not None:
        if f.facts.deadline is None and not timed_out and not overran:
            return None
    elif not suppressed and f.orderly_end() is not None:
        return None
    huh = f.hits("fault_oom_huh")
    ev = _Evidence(f)
    for h in huh[:3]:
        ev.hit(h)
    for h in suppressed[:5]:
        ev.hit(h)
    for name in ("cma_alloc_failed", "secretmem_refill_failed", "oom_no_killable"):
        for h in f.hits(name)[:1]:
            ev.hit(h)
    for t in timed_out[:5]:
        ev.note(t.render(), "agent:task")
    for r in overran[:3]:
        ev.note(r.render(), "agent:result")
    counts = [int(h.fields.get("count", 0)) for h in suppressed]
    values: dict[str, Any] = {
        "huh_lines": f.count["fault_oom_huh"],
        "suppressed": counts[:50],
        "suppressed_total": sum(counts),
        "first_ktime": huh[0].ktime,
        "last_ktime": f.last["fault_oom_huh"].ktime,
        "timed_out": [{"name": t.name, "pid": t.pid, "seconds": t.seconds} for t in timed_out[:10]],
    }
    head = (
        f"fault_livelock: {values['huh_lines']} 'Huh VM_FAULT_OOM' lines "
        f"(+{values['suppressed_total']} suppressed) and no OOM kill"
    )
    if timed_out:
        t = timed_out[0]
        secs = f" after {t.seconds:.1f}s" if t.seconds is not None else ""
        why = f"; task {t.name} (pid {t.pid}) spun until the test case's watchdog killed it{secs}"
    elif overran:
        why = f"; test case {overran[0].testcase} overran its timeout"
    elif f.facts is not None:
        phase = _clean(str(f.facts.deadline), 20)
        why = f"; the {phase} deadline expired"
        ev.note(f"lab: the {phase} deadline expired; the lab killed QEMU", "lab:deadline")
    elif suppressed:
        why = "; the rate limit dropped more, so the task spun for at least 5 s"
    else:
        why = "; the log stops without the kernel's restart line"
        ev.tail(5)
    return _Verdict("fault_livelock", head + why, ev, values)


def _fault_livelock_victim(f: _Findings, v: _About) -> _Verdict | None:
    """fault_livelock for the victim: its watchdog killed it (task status timeout; or it
    has no task record because the lab's deadline or the test case's timeout came
    first) and stamped Huh lines fall inside its run window."""
    task = f.agent.task_of(v.pid)
    overran = [r for r in f.agent.results if r.timeout]
    if task is not None and task.status != "timeout":
        return None
    if task is None and f.facts is not None and f.facts.deadline is None and not overran:
        return None
    window = f.window(v.pid)
    huh = [h for h in f.hits("fault_oom_huh") if _inside(h, window)]
    if not huh:
        return None
    suppressed = [h for h in f.hits("fault_oom_suppressed") if _inside(h, window)]
    ev = _Evidence(f)
    for h in f.hits("lab_testcase")[:1]:
        ev.hit(h)
    for h in huh[:3]:
        ev.hit(h)
    for h in suppressed[:5]:
        ev.hit(h)
    for name in ("cma_alloc_failed", "secretmem_refill_failed"):
        for h in [h for h in f.hits(name) if _inside(h, window)][:1]:
            ev.hit(h)
    if task is not None:
        ev.note(task.render(), "agent:task")
    counts = [int(h.fields.get("count", 0)) for h in suppressed]
    values: dict[str, Any] = {
        "victim": _victim_fields(f, v),
        "huh_lines": len(huh),
        "suppressed": counts[:50],
        "suppressed_total": sum(counts),
        "first_ktime": huh[0].ktime,
        "last_ktime": huh[-1].ktime,
        "window": None if window is None else [window[0], _finite(window[1])],
    }
    who = f"the {_label(v.role, v.name)} (pid {v.pid})"
    if task is not None:
        secs = f" after {task.seconds:.1f}s" if task.seconds is not None else ""
        why = f"{who} spun until the test case's watchdog killed it{secs}"
    elif overran:
        why = f"{who} spun until test case {overran[0].testcase} overran its timeout"
    else:
        why = f"{who} spun until the lab's deadline"
    where = "in its run" if window is not None else "(no start line to place them)"
    return _Verdict(
        "fault_livelock",
        f"fault_livelock: {values['huh_lines']} 'Huh VM_FAULT_OOM' lines "
        f"(+{values['suppressed_total']} suppressed) {where}; {why}, not OOM-killed",
        ev,
        values,
    )


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _deadline(f: _Findings) -> _Verdict | None:
    if f.facts is None or f.facts.deadline is None:
        return None
    phase = _clean(f.facts.deadline, 20)
    ev = _Evidence(f)
    ev.tail()
    ev.note(f"lab: the {phase} deadline expired; the lab killed QEMU", "lab:deadline")
    for t in [t for t in f.agent.tasks if t.status == "timeout"][:5]:
        ev.note(t.render(), "agent:task")
    last = next((line.text for line in reversed(f.lines) if line.message.strip()), "")
    values: dict[str, Any] = {"phase": phase}
    running = f.running_testcase()
    if running:
        values["testcase"] = running
        for h in f.hits("lab_testcase")[-1:]:
            ev.hit(h)
    return _Verdict(
        "hang",
        f"hang ({phase} phase): the {phase} deadline passed with no other evidence"
        f"{' during test case ' + running if running else ''}; last line: {_clean(last, 120)}",
        ev,
        values,
    )


def _qemu_failed(f: _Findings) -> _Verdict | None:
    if f.facts is None or f.facts.ready or f.facts.deadline is not None or f.kernel_output():
        return None
    ev = _Evidence(f)
    messages = f.hits("qemu_message")
    for h in messages[:5]:
        ev.hit(h)
    ev.tail(5)
    status = f.facts.qemu_exit
    ev.note(f"lab: QEMU exited with status {status}", "lab:qemu_exit")
    first = f": {messages[0].fields.get('message', '')}" if messages else ""
    return _Verdict(
        "infra_error",
        f"infra_error: QEMU exited (status {status}) before the kernel printed anything{first}",
        ev,
        {"qemu_exit": status},
    )


def _qemu_signaled(f: _Findings) -> _Verdict | None:
    """QEMU died of a signal before the agent's `done` record, and no lab deadline was
    involved: the lab kills QEMU only at a deadline, after `done`, or after kernel
    evidence that an earlier rule took. So someone else killed it, or it crashed: the
    run says nothing about the kernel, and partial records must not decide its class."""
    status = f.facts.qemu_exit if f.facts is not None else None
    if f.facts is None or f.facts.deadline is not None or f.agent.done or status is None:
        return None
    try:
        name = signal.Signals(status - 128).name if status > 128 else ""
    except ValueError:
        name = ""
    if not name:
        return None
    ev = _Evidence(f)
    ev.tail(5)
    when = "during the test" if f.facts.ready else "before the ready marker"
    ev.note(f"lab: QEMU died of {name} (exit status {status}) {when}", "lab:qemu_exit")
    return _Verdict(
        "infra_error",
        f"infra_error: QEMU died of {name} (status {status}) {when}; the lab did not stop it",
        ev,
        {"qemu_exit": status, "signal": name},
    )


def _no_userspace(f: _Findings) -> _Verdict | None:
    if f.facts is None or f.facts.ready or f.facts.deadline is not None:
        return None
    ev = _Evidence(f)
    ev.tail()
    status = f.facts.qemu_exit
    ev.note(f"lab: QEMU exited with status {status} before the ready marker", "lab:qemu_exit")
    return _Verdict(
        "boot_failure",
        f"boot_failure: QEMU exited (status {status}) before userspace printed the ready marker",
        ev,
        {"qemu_exit": status},
    )


def _agent_error(f: _Findings) -> _Verdict | None:
    if not f.agent.errors:
        return None
    ev = _Evidence(f)
    for e in f.agent.errors[:5]:
        ev.note(f"agent: error: {e}", "agent:error")
    return _Verdict(
        "infra_error",
        f"infra_error: the agent failed: {f.agent.errors[0]}",
        ev,
        {"agent_errors": f.agent.errors[:10]},
    )


def _protocol_problems(f: _Findings) -> _Verdict | None:
    if not f.agent.problems:
        return None
    ev = _Evidence(f)
    for p in f.agent.problems:
        ev.note(f"agent channel: {p}", "agent:problem")
    return _Verdict(
        "infra_error",
        f"infra_error: result channel protocol problem: {f.agent.problems[0]}",
        ev,
        {"problems": list(f.agent.problems)},
    )


def _test_raised(f: _Findings) -> _Verdict | None:
    # A test case process that died of SIGBUS did not raise: the sigbus rule takes it.
    bus = {t.testcase for t in f.agent.tasks if t.status == "signaled" and t.signal == "SIGBUS"}
    errors = [
        r
        for r in f.agent.results
        if r.verdict == "error" and not r.timeout and r.testcase not in bus
    ]
    if not errors:
        return None
    r = errors[0]
    ev = _Evidence(f)
    for e in errors[:5]:
        ev.note(e.render(), "agent:result")
    return _Verdict(
        "fail",
        f"fail: test case {r.testcase} raised: {r.message}",
        ev,
        {"testcase": r.testcase, "raised": True, "message": r.message},
    )


def _task_timeout(f: _Findings) -> _Verdict | None:
    timed_out = [t for t in f.agent.tasks if t.status == "timeout"]
    overran = [r for r in f.agent.results if r.timeout]
    if not (timed_out or overran):
        return None
    ev = _Evidence(f)
    for r in overran[:5]:
        ev.note(r.render(), "agent:result")
    for x in timed_out[:5]:
        ev.note(x.render(), "agent:task")
    ev.tail(5)
    if overran:
        r = overran[0]
        detail = f"hang (test phase): test case {r.testcase} overran its timeout: {r.message}"
        values: dict[str, Any] = {"phase": "test", "testcase": r.testcase}
    else:
        t = timed_out[0]
        secs = f" after {t.seconds:.1f}s" if t.seconds is not None else ""
        detail = (
            f"hang (test phase): task {t.name} (pid {t.pid}) overran; the test case's watchdog "
            f"killed it{secs}"
        )
        values = {"phase": "test", "task": t.name, "pid": t.pid, "testcase": t.testcase}
    return _Verdict("hang", detail, ev, values)


def _sigbus(f: _Findings) -> _Verdict | None:
    tasks = [
        t
        for t in f.agent.tasks
        if t.status == "signaled" and t.signal == "SIGBUS" and not t.intended
    ]
    # A test case's word for SIGBUS counts with a task record that died of it (a test
    # provoking it on purpose says so through `observed`): not on its own.
    observed = [r for r in f.agent.results if r.observed == "sigbus" and _sigbus_backed(f, r)]
    # A test provoking SIGBUS on purpose (expected_signal) also gets the kernel's
    # print-fatal-signals line; that line says nothing new about the outcome.
    intended = {t.pid for t in f.agent.tasks if t.intended and t.pid is not None}
    kernel = [h for h in f.hits("fatal_sigbus") if h.fields.get("pid") not in intended]
    if not (tasks or observed or kernel):
        return None
    ev = _Evidence(f)
    for h in kernel[:5]:
        ev.hit(h)
    arm = f.hits("arm64_unhandled_exception")
    for h in arm[:3]:
        ev.hit(h)
    for t in tasks[:5]:
        ev.note(t.render(), "agent:task")
    for r in observed[:3]:
        ev.note(r.render(), "agent:result")
    values: dict[str, Any]
    if tasks:
        t = tasks[0]
        values = {
            "task": t.name,
            "pid": t.pid,
            "comm": t.comm,
            "si_code": t.si_code,
            "testcase": t.testcase,
        }
        who = f"task {t.name} (pid {t.pid}{', ' + t.comm if t.comm else ''})"
    elif kernel:
        h = kernel[0]
        near = next((a for a in reversed(arm) if a.index < h.index), None)
        pid = h.fields.get("pid", near.fields.get("pid") if near else None)
        comm = h.fields.get("comm", near.fields.get("comm") if near else None)
        values = {"task": comm, "pid": pid, "comm": comm, "si_code": None}
        who = f"{comm or '?'} (pid {pid})"
    else:
        r = observed[0]
        values = {"task": None, "pid": None, "comm": None, "si_code": None, "testcase": r.testcase}
        who = f"a task of test case {r.testcase}"
    values["kernel_lines"] = f.count.get("fatal_sigbus", 0)
    code = f" ({values['si_code']})" if values.get("si_code") else ""
    return _Verdict("sigbus", f"sigbus: {who} got SIGBUS{code}", ev, values)


def _test_failed(f: _Findings) -> _Verdict | None:
    failed = [r for r in f.agent.results if r.verdict == "fail"]
    if not failed:
        return None
    r = failed[0]
    ev = _Evidence(f)
    for x in failed[:5]:
        ev.note(x.render(), "agent:result")
    return _Verdict(
        "fail",
        f"fail: {r.testcase}: {r.message}",
        ev,
        {"testcase": r.testcase, "raised": False, "message": r.message},
    )


def _sigbus_backed(f: _Findings, r: _Result) -> bool:
    for t in f.agent.tasks:
        mine = t.pid == r.about.pid if r.about is not None else t.testcase == r.testcase
        if mine and t.status == "signaled" and t.signal == "SIGBUS":
            return True
    return False


def _supported(f: _Findings, r: _Result) -> bool:
    """May the result's `observed` class stand? Userspace classes (refused, fail) may; sigbus
    with a task record that died of it; a kernel class only with the stamped kernel
    evidence for the task it is about (the victim's, when it names none)."""
    cls = r.observed
    if cls in ("pass", "refused", "fail"):
        return True
    if cls == "sigbus":
        return _sigbus_backed(f, r)
    if cls not in KERNEL_CLASSES:
        return False  # hang, boot_failure, infra_error: the lab's to say, not a test's
    about = r.about or f.agent.victim()
    if cls == "oom_kill":
        if about is None:
            return bool(f.kills())
        return any(h.fields.get("pid") == about.pid for h in f.kills()) or any(
            (inv := f.invoker(h)) is not None and inv.fields.get("pid") == about.pid
            for h in f.kills()
        )
    if cls == "fault_livelock":
        window = f.window(about.pid) if about is not None else None
        return any(_inside(h, window) for h in f.hits("fault_oom_huh"))
    return bool(f.by_class(cls))


def _unsupported(f: _Findings) -> list[_Result]:
    return [r for r in f.agent.results if r.observed is not None and not _supported(f, r)]


def _returned(f: _Findings, r: _Result) -> bool:
    """The task the result is about (or the victim) returned normally: its fate is known."""
    about = r.about or f.agent.victim()
    task = f.agent.task_of(about.pid) if about is not None else None
    return task is not None and task.status == "exited" and task.exit_code == 0


def _claim_unsupported(f: _Findings) -> _Verdict | None:
    """A test case named a class without the evidence for it, and the task it is about
    did not simply return (whose fate would then be the outcome, rule test-passed)."""
    claims = [r for r in _unsupported(f) if r.verdict == "pass" and not _returned(f, r)]
    if not claims:
        return None
    r = claims[0]
    whom = "the task it is about" if r.about or f.agent.victim() else "it"
    return _Verdict(
        "infra_error",
        f"infra_error: test case {r.testcase} claimed {r.observed} with no kernel evidence "
        f"for {whom}: {r.message}",
        _results_evidence(f, claims),
        {"testcase": r.testcase, "claimed": r.observed, "message": r.message},
    )


def _results_evidence(f: _Findings, results: Sequence[_Result]) -> _Evidence:
    ev = _Evidence(f)
    for x in results[:5]:
        ev.note(x.render(), "agent:result")
    return ev


def _test_observed(f: _Findings) -> _Verdict | None:
    seen = [r for r in f.agent.results if r.observed not in (None, "pass") and _supported(f, r)]
    if not seen:
        return None
    r = seen[0]
    outcome = str(r.observed)
    ev = _Evidence(f)
    ev.note(r.render(), "agent:result")
    return _Verdict(
        outcome,
        f"{outcome}: test case {r.testcase} observed {outcome}: {r.message}",
        ev,
        {"testcase": r.testcase, "observed": outcome, "message": r.message},
    )


def _test_passed(f: _Findings) -> _Verdict | None:
    if not f.agent.results or any(r.verdict != "pass" for r in f.agent.results):
        return None
    ev = _Evidence(f)
    for r in f.agent.results[:10]:
        ev.note(r.render(), "agent:result")
    names = sorted({r.testcase for r in f.agent.results})
    values: dict[str, Any] = {"testcases": names[:50]}
    rejected = [r for r in _unsupported(f) if r.observed != "pass"]
    note = ""
    if rejected:
        # The task it is about returned (rule claim-unsupported): its fate is the outcome.
        values["claims_rejected"] = [
            {"testcase": r.testcase, "claimed": r.observed} for r in rejected[:10]
        ]
        note = (
            f" (the claim {rejected[0].observed} has no kernel evidence for the task it is "
            "about, which returned)"
        )
    return _Verdict("pass", f"pass: {', '.join(names)} passed{note}", ev, values)


def _no_result(f: _Findings) -> _Verdict | None:
    if f.facts is None:
        return None
    ev = _Evidence(f)
    ev.tail(5)
    done = "" if f.agent.done else " and no 'done' record"
    ev.note(f"lab: no result record{done} from the agent", "lab:records")
    return _Verdict(
        "infra_error",
        f"infra_error: the agent reported no test result{done}",
        ev,
        {"done": f.agent.done},
    )


def _orderly_end(f: _Findings) -> _Verdict | None:
    if f.facts is not None:
        return None
    end = f.orderly_end()
    if end is None:
        return None
    ev = _Evidence(f)
    for h in f.hits("lab_ready", "init_started")[:1]:
        ev.hit(h)
    ev.hit(end)
    for s in SIGNATURES:
        if s.role == "end" and s.name in f.last:
            ev.hit(f.last[s.name])
    return _Verdict(
        "pass",
        f"pass: the log ends with '{_msg(f, end)}' and holds no failure evidence",
        ev,
        {"end": _msg(f, end)},
    )


def _log_stopped(f: _Findings) -> _Verdict | None:
    if f.facts is not None:
        return None
    phase = "test" if f.userspace_ran() else "boot"
    ev = _Evidence(f)
    ev.tail()
    if ev.items:
        what = "stops without the kernel's restart or power-down line and without other evidence"
    else:
        what = "is empty"
        ev.note("lab: the console log holds no text", "lab:console")
    return _Verdict("hang", f"hang ({phase} phase): the log {what}", ev, {"phase": phase})


@dataclass(frozen=True)
class Rule:
    id: str
    outcome: str  # the class it yields ("<observed>" when the test case names it)
    text: str
    check: Callable[[_Findings], _Verdict | None] = field(repr=False, compare=False)


RULES: tuple[Rule, ...] = (
    Rule(
        "banner-mismatch",
        "infra_error",
        "The cell named a variant and the kernel's secretmem banner disagrees with it (or is "
        "missing although userspace ran): the results belong to the wrong kernel.",
        _banner_mismatch,
    ),
    Rule(
        "panic-before-userspace",
        "boot_failure",
        "The kernel panicked before userspace ran.",
        _panic_before_userspace,
    ),
    Rule(
        "harness-oom-panic",
        "infra_error",
        "The kernel panicked with no killable task ('System is deadlocked on memory') and "
        "the last OOM invocation ran in a harness or the agent (oom_score_adj -1000), or in "
        "a workload task the kernel shows at -1000 although its spawn record says otherwise: "
        "the lab left the OOM killer nothing to kill.",
        _harness_oom_panic,
    ),
    Rule("panic", "panic", "The kernel panicked (reason = the rest of the panic line).", _panic),
    Rule(
        "bug",
        "bug",
        "A kernel BUG-class report (BUG:, kernel BUG at, Bad page state, hung "
        "task, soft lockup, RCU stall, KASAN, page dump).",
        _integrity("bug"),
    ),
    Rule(
        "oops",
        "oops",
        "A kernel oops (page fault in the kernel, GPF, die header).",
        _integrity("oops"),
    ),
    Rule("warn", "warn", "A kernel WARNING.", _integrity("warn")),
    Rule(
        "harness-death",
        "infra_error",
        "The harness (a test-case process) or the agent died: its task record says "
        "signaled, the agent sent an error of kind harness, or a kernel 'Killed process' "
        "names its pid. It is not part of the scenario: the run measured nothing.",
        _harness_death,
    ),
    Rule(
        "precondition-failed",
        "infra_error",
        "A precondition of the scenario did not hold (a precondition record with ok false, "
        "an error of kind precondition): the scenario did not happen.",
        _precondition_failed,
    ),
    Rule(
        "oom-kill",
        "oom_kill",
        "The OOM killer killed a process. When the records name a victim: the victim was "
        "OOM-killed, or its own allocation invoked the OOM killer that killed some task.",
        _oom_kill,
    ),
    Rule(
        "fault-livelock",
        "fault_livelock",
        "'Huh VM_FAULT_OOM leaked out' lines, no OOM kill, and the task spun: a deadline "
        "expired or a task timed out (for a foreign log: the rate limit suppressed lines or "
        "the log stops). When the records name a victim: its watchdog killed it and the "
        "Huh lines fall inside its run.",
        _fault_livelock,
    ),
    Rule("deadline", "hang", "A lab deadline expired with no kernel evidence above.", _deadline),
    Rule(
        "qemu-failed",
        "infra_error",
        "QEMU exited before the kernel printed anything.",
        _qemu_failed,
    ),
    Rule(
        "qemu-signaled",
        "infra_error",
        "QEMU died of a signal the lab did not send (no deadline, no 'done' record): "
        "killed from outside or crashed.",
        _qemu_signaled,
    ),
    Rule(
        "no-userspace",
        "boot_failure",
        "QEMU exited before the ready marker, with no panic.",
        _no_userspace,
    ),
    Rule("agent-error", "infra_error", "The agent sent an error record.", _agent_error),
    Rule(
        "protocol-problems",
        "infra_error",
        "The result channel had protocol problems (malformed or oversized records).",
        _protocol_problems,
    ),
    Rule("test-raised", "fail", "A test case raised an exception.", _test_raised),
    Rule(
        "task-timeout",
        "hang",
        "A test case overran its timeout (the agent killed it), or its own watchdog had to "
        "kill a task; and no Huh lines.",
        _task_timeout,
    ),
    Rule(
        "sigbus",
        "sigbus",
        "A task got SIGBUS: a task record, the test case's observation, or the kernel's "
        "'potentially unexpected fatal signal 7.'",
        _sigbus,
    ),
    Rule("test-failed", "fail", "A test assertion failed.", _test_failed),
    Rule(
        "test-observed",
        "<observed>",
        "The test case passed and names what it observed (a class other than pass) with "
        "the evidence for it: refused, fail, sigbus with a task that died of it, a kernel "
        "class with stamped kernel lines for the task it is about.",
        _test_observed,
    ),
    Rule(
        "claim-unsupported",
        "infra_error",
        "A test case named a class without that evidence, and the task it is about did "
        "not return (else its return is the outcome: test-passed).",
        _claim_unsupported,
    ),
    Rule("test-passed", "pass", "Every test case passed.", _test_passed),
    Rule(
        "no-result",
        "infra_error",
        "The lab ran the guest but the agent reported no result.",
        _no_result,
    ),
    Rule(
        "orderly-end",
        "pass",
        "Foreign log: it ends with the kernel's restart or power-down line.",
        _orderly_end,
    ),
    Rule(
        "log-stopped",
        "hang",
        "Foreign log: it stops without that line and without other evidence.",
        _log_stopped,
    ),
)


def classify(console: str, facts: RunFacts | None = None) -> Classification:
    """Classify one run.

    Args:
        console: the raw serial console log (any text; see `normalise`).
        facts: what the lab knows besides the console, or None for a foreign log.

    Returns:
        The class picked by the first rule of `RULES` that holds, with evidence.
        Never raises for anything found in the console or the records.
    """
    f = _Findings(normalise(console), facts)
    for rule in RULES:
        verdict = rule.check(f)
        if verdict is None:
            continue
        values = dict(verdict.fields)
        banners = f.banners()
        if banners and "banner" not in values:
            values["banner"] = banners[0][1]
        victim = f.agent.victim() if facts is not None else None
        if victim is not None:
            values.setdefault("victim", _victim_fields(f, victim))
            values.setdefault("others", _others(f, victim))
        detail = verdict.detail + _context(values.get("others") or ())
        return Classification(
            outcome=verdict.outcome,
            detail=_clean(detail, MAX_DETAIL),
            rule=rule.id,
            rule_text=rule.text,
            evidence=verdict.evidence.done(),
            matched=f.matched,
            fields=values,
        )
    raise AssertionError("unreachable: the last rules cover both foreign logs and lab runs")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)
