"""The classifier's limits and value types: RunFacts in, Classification out."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

from lab.classify.signatures import Signature
from lab.errors import UserError

MAX_EVIDENCE = 40  # evidence lines per classification
MAX_TEXT = 2000  # characters of one console line kept in evidence
MAX_MATCH = 4096  # characters of one console line the classifier reads (printk: < 1024)
MAX_STRING = 200  # characters of a string copied from a record or a field
MAX_DETAIL = 300
MAX_RECORDS = 10_000  # records looked at; the host already bounds their size
MAX_PROBLEMS = 20
MAX_HITS = 200  # hits kept per signature (all are counted)
TAIL = 10  # last console lines shown when a log just stops
TITLE_LINES = 80  # lines after a report read for its title's function
TITLED = 3  # hits per signature (and stamped ones) whose title lines are kept
MAX_SEEN = 20_000  # stamped hit lines remembered to skip echoes of them (about 1 MB)

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
    # The CI-bot style title of the kernel report that decided (`WARNING in func`), None
    # when no kernel report decided (see lab.classify.title).
    title: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "title": self.title,
            "detail": self.detail,
            "rule": self.rule,
            "rule_text": self.rule_text,
            "evidence": [e.to_json() for e in self.evidence],
            "matched": list(self.matched),
            "fields": _jsonable(self.fields),
        }


class Line(NamedTuple):
    """One console line after normalisation (a tuple: a million of them are made per
    50 MB log, and a tuple is the cheapest immutable record to make)."""

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
    fields: dict[str, Any]
    ktime: float | None
    inner: bool = False  # matched the text after a mid-line printk stamp
    # The log is read once and not kept: a hit carries its own line, the lines of its
    # report context (filled as they stream by) and, for the hits a title may come from,
    # the messages of the lines after it (lab.classify.title).
    line: Line | None = None
    after: list[Line] = field(default_factory=list)
    window: list[str] = field(default_factory=list)


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
