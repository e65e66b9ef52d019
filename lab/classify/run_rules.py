"""Rule checks over what the lab and the agent saw: deadlines, QEMU, userspace, test results."""

from __future__ import annotations

import math
import signal
from collections.abc import Sequence
from typing import Any

from lab.classify.findings import _Evidence, _Findings, _msg, _Verdict
from lab.classify.lab_rules import _inside
from lab.classify.model import KERNEL_CLASSES, _clean
from lab.classify.records import _Result
from lab.classify.signatures import SIGNATURES


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
    last = f.tail[-1].text if f.tail else ""
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
