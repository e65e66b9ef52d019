"""The agent's records, untrusted: checked field by field into typed private values."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lab.classify.model import (
    HARNESS,
    MAX_OTHERS,
    MAX_PROBLEMS,
    MAX_RECORDS,
    MAX_STRING,
    ROLES,
    TASK_ROLES,
    TASK_STATUSES,
    VERDICTS,
    _clean,
    _float,
    _int,
    _str,
)
from lab.outcome import CLASSES

# --- untrusted agent records --------------------------------------------------


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
