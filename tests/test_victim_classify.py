"""The outcome is about the victim (issue 12, host side).

The records are the real agent's: each test runs a small test case through
lab/guest/agent.py and labguest.py on the host (test_labguest._run_agent: real forks,
real pids, real task/spawn/precondition records), then writes the console the kernel
would print for that run, with the pids the records name, and classifies both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_labguest import _run_agent, guest_agent  # noqa: F401 (a fixture)

from lab import classify as cl
from lab.classify import Classification, RunFacts, classify
from lab.guest import labguest as lg

pytestmark = pytest.mark.usefixtures("guest_agent")

AGENT_PID = 36
START = 3.0  # printk time of the agent's `lab: testcase NAME start` line


def _facts(records: list[dict[str, Any]], **kw: Any) -> RunFacts:
    ready = {"type": "ready", "boot_id": "b", "agent_pid": AGENT_PID, "oom_score_adj": -1000}
    return RunFacts(ready=True, qemu_exit=0, records=(ready, *records, {"type": "done"}), **kw)


def _console(name: str, body: str, end: float = 30.0) -> str:
    return (
        "[    0.400000] Run /init as init process\n"
        "LABREADY b\n"
        f"[    {START:.6f}] lab: testcase {name} start\n"
        + body
        + f"[   {end:.6f}] lab: testcase {name} end\n"
        + "LABAGENT-EXIT 0\n"
        + f"[   {end + 0.1:.6f}] reboot: Power down\n"
    )


def _pid(records: list[dict[str, Any]], name: str) -> int:
    return int(next(r["pid"] for r in records if r["type"] == "spawn" and r["name"] == name))


def _t(records: list[dict[str, Any]], name: str) -> float:
    return float(next(r["t"] for r in records if r["type"] == "spawn" and r["name"] == name))


def _invoked(at: float, pid: int, gfp: str = "0x100dc2(GFP_HIGHUSER|__GFP_ZERO)") -> str:
    return (
        f"[{at:12.6f}] python3 invoked oom-killer: gfp_mask={gfp}, order=0, oom_score_adj=0\n"
        f"[{at:12.6f}] CPU: 0 PID: {pid} Comm: python3 Not tainted 6.1.192 #1\n"
    )


def _killed(at: float, pid: int) -> str:
    return (
        f"[{at:12.6f}] Out of memory: Killed process {pid} (python3) total-vm:19616kB, "
        "anon-rss:8212kB, file-rss:360kB, shmem-rss:4580kB, UID:1000 pgtables:76kB "
        "oom_score_adj:0\n"
    )


def _huh(at: float) -> str:
    return f"[{at:12.6f}] Huh VM_FAULT_OOM leaked out to the #PF handler. Retrying PF\n"


def _others(c: Classification) -> dict[str, str]:
    return {str(o["name"]): str(o["fate"]) for o in c.fields["others"]}


# (a) depletion P1: the victim spins in its window; the attacker is OOM-killed meanwhile.
P1 = """
import time
def _hold():
    time.sleep(60)
def _spin():
    time.sleep(60)  # stands for the fault that never completes
def run(t):
    attacker = t.spawn("attacker", _hold, role="attacker")
    victim = t.task("victim", _spin, role="victim", timeout=1.0)
    attacker.kill()
    t.observe("fault_livelock", "spun until killed", about=victim)
"""


def test_p1_victim_livelock_with_the_attacker_oom_killed_is_fault_livelock(
    tmp_path: Path,
) -> None:
    records = _run_agent(tmp_path, "depletion", P1)
    victim, attacker = _pid(records, "victim"), _pid(records, "attacker")
    at = START + _t(records, "victim")
    body = (
        _huh(at + 0.2)
        + _huh(at + 0.5)
        # the attacker's own allocation runs the OOM killer and kills it: context
        + _invoked(at + 0.7, attacker, "0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP)")
        + _killed(at + 0.8, attacker)
    )
    c = classify(_console("depletion", body), _facts(records))
    assert (c.outcome, c.rule) == ("fault_livelock", "fault-livelock"), c.detail
    assert c.fields["victim"]["pid"] == victim and c.fields["victim"]["role"] == "victim"
    assert c.fields["huh_lines"] == 2
    assert _others(c) == {"attacker": "OOM-killed"}
    assert "others: attacker (pid" in c.detail and "OOM-killed" in c.detail


def test_huh_lines_outside_the_victims_run_are_context_not_its_livelock(
    tmp_path: Path,
) -> None:
    records = _run_agent(tmp_path, "depletion", P1)
    # 20 s after the victim was killed: some later task's fault, not the victim's
    c = classify(_console("depletion", _huh(START + 25.0), end=40.0), _facts(records))
    assert c.outcome != "fault_livelock", c.detail
    assert any("outside the victim's run" in o["fate"] for o in c.fields["others"])


# (b) depletion P0: the harness itself is OOM-killed.
ATTACKER_KILLED = """
import os, signal, time
def _hold():
    time.sleep(60)
def run(t):
    attacker = t.spawn("attacker", _hold, role="attacker")
    os.kill(attacker.pid, signal.SIGKILL)
    time.sleep(0.1)
"""
P0_HARNESS_KILLED = (
    ATTACKER_KILLED
    + "    os.kill(os.getpid(), signal.SIGKILL)  # the OOM killer picked the harness\n"
)


def test_p0_harness_killed_is_infra_error_never_oom_kill(tmp_path: Path) -> None:
    records = _run_agent(tmp_path, "depletion", P0_HARNESS_KILLED)
    harness, attacker = _pid(records, "testcase:depletion"), _pid(records, "attacker")
    body = (
        _invoked(START + 1.0, attacker, "0xcd0(GFP_KERNEL|__GFP_RECLAIMABLE)")
        + _killed(START + 1.1, harness)
        + _invoked(START + 1.2, attacker, "0xcd0(GFP_KERNEL|__GFP_RECLAIMABLE)")
        + _killed(START + 1.3, attacker)
    )
    c = classify(_console("depletion", body), _facts(records))
    assert (c.outcome, c.rule) == ("infra_error", "harness-death"), c.detail
    assert c.fields["harness_pid"] == harness and c.fields["signal"] == "SIGKILL"
    assert c.fields["killed_by_oom"] is True
    assert _others(c) == {"attacker": "OOM-killed"}
    assert f"the harness (testcase:depletion, pid {harness}) was killed by SIGKILL" in c.detail
    # never the culprit, even where the console-wide OOM rule describes the harness
    assert "culprit" not in str(c.fields)


def test_a_kernel_kill_of_the_agent_is_infra_error(tmp_path: Path) -> None:
    records = _run_agent(tmp_path, "api", "def run(t):\n    t.observe('pass')\n")
    c = classify(_console("api", _killed(START + 1.0, AGENT_PID)), _facts(records))
    assert (c.outcome, c.rule) == ("infra_error", "harness-death"), c.detail
    assert c.fields["harness"] == "the agent" and c.fields["killed_by_oom"] is True


# (c) a failed precondition outranks the OOM kills that came with it.
P0_PRECONDITION = ATTACKER_KILLED + (
    '    t.require(not attacker.poll(), "attacker_alive", "the attacker holds its files",\n'
    "              files=3)\n"
)


def test_failed_precondition_with_oom_lines_is_infra_error(tmp_path: Path) -> None:
    records = _run_agent(tmp_path, "depletion", P0_PRECONDITION)
    attacker = _pid(records, "attacker")
    body = _invoked(START + 1.0, attacker) + _killed(START + 1.1, attacker)
    c = classify(_console("depletion", body), _facts(records))
    assert (c.outcome, c.rule) == ("infra_error", "precondition-failed"), c.detail
    assert (c.fields["check"], c.fields["testcase"]) == ("attacker_alive", "depletion")
    assert c.fields["data"] == {"files": 3}
    assert _others(c) == {"attacker": "OOM-killed"}
    assert c.detail.startswith(
        "infra_error: precondition attacker_alive failed in depletion: the attacker holds"
    )


# (d) pressure U0: whose allocation ran the OOM killer decides.
PRESSURE = """
import time
def _hog():
    time.sleep(60)
def run(t):
    hog = t.spawn("hog", _hog, role="hog", oom_score_adj=500)
    res = t.task("faulter", lambda: {"touched": 2048}, role="victim", timeout=10)
    hog.kill()
    t.observe("oom_kill", "the faulter finished; hog killed", about=res)
"""


def test_pressure_u0_oom_in_the_faulters_own_allocation_is_oom_kill(tmp_path: Path) -> None:
    records = _run_agent(tmp_path, "pressure", PRESSURE)
    faulter, hog = _pid(records, "faulter"), _pid(records, "hog")
    at = START + _t(records, "faulter")
    body = _invoked(at + 0.1, faulter) + _killed(at + 0.2, hog)
    c = classify(_console("pressure", body), _facts(records))
    assert (c.outcome, c.rule) == ("oom_kill", "oom-kill"), c.detail
    assert c.fields["invoker_is_victim"] is True and c.fields["victim_killed"] is False
    assert (c.fields["gfp_mask"], c.fields["invoker_pid"]) == ("0x100dc2", faulter)
    assert c.fields["victim"] == {
        "name": "faulter",
        "pid": faulter,
        "role": "victim",
        "fate": "exited 0",
    }
    assert _others(c) == {"hog": "OOM-killed"}
    assert f"the victim faulter (pid {faulter}) ran the OOM killer in its own allocation" in (
        c.detail
    )


def test_pressure_u0_oom_from_another_allocation_is_pass_with_the_kill_as_context(
    tmp_path: Path,
) -> None:
    records = _run_agent(tmp_path, "pressure", PRESSURE)
    hog = _pid(records, "hog")
    at = START + _t(records, "faulter")
    # a kernel allocation of some other task (GFP_KERNEL), not the secret fault
    body = _invoked(at + 0.1, 77, "0xcc0(GFP_KERNEL)") + _killed(at + 0.2, hog)
    c = classify(_console("pressure", body), _facts(records))
    assert (c.outcome, c.rule) == ("pass", "test-passed"), c.detail
    assert _others(c) == {"hog": "OOM-killed"}
    assert c.fields["claims_rejected"] == [{"testcase": "pressure", "claimed": "oom_kill"}]


def test_the_victim_oom_killed_is_oom_kill(tmp_path: Path) -> None:
    body_src = """
import os, signal
def _die():
    os.kill(os.getpid(), signal.SIGKILL)
def run(t):
    res = t.task("victim", _die, role="victim", timeout=10)
    t.observe("oom_kill", "killed", about=res)
"""
    records = _run_agent(tmp_path, "depletion", body_src)
    victim = _pid(records, "victim")
    at = START + _t(records, "victim")
    c = classify(_console("depletion", _invoked(at, 99) + _killed(at, victim)), _facts(records))
    assert (c.outcome, c.fields["victim_killed"], c.fields["invoker_is_victim"]) == (
        "oom_kill",
        True,
        False,
    )
    # ...but its SIGKILL alone, with no kernel line, is not an OOM kill
    c = classify(_console("depletion", ""), _facts(records))
    assert (c.outcome, c.rule) == ("infra_error", "claim-unsupported"), c.detail


def test_a_victim_invocation_that_kills_nothing_is_not_oom_kill(tmp_path: Path) -> None:
    """memcg: the faulter (at -1000) runs the memcg OOM killer again and again, which
    finds nothing to kill; the fault spins. That is the livelock, not an OOM kill."""
    records = _run_agent(tmp_path, "memcg", P1)
    victim = _pid(records, "victim")
    at = START + _t(records, "victim")
    body = "".join(
        _invoked(at + 0.1 * i, victim)
        + f"[{at + 0.1 * i:12.6f}] Out of memory and no killable processes...\n"
        + _huh(at + 0.1 * i + 0.01)
        for i in range(3)
    )
    c = classify(_console("memcg", body), _facts(records))
    assert (c.outcome, c.rule) == ("fault_livelock", "fault-livelock"), c.detail


# A no-killable-task panic the lab caused.


def _deadlock(at: float) -> str:
    return (
        f"[{at:12.6f}] Out of memory and no killable processes...\n"
        f"[{at:12.6f}] Kernel panic - not syncing: System is deadlocked on memory\n"
    )


def _invoked_adj(at: float, pid: int, adj: int) -> str:
    return (
        f"[{at:12.6f}] python3 invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|"
        f"__GFP_COMP), order=0, oom_score_adj={adj}\n"
        f"[{at:12.6f}] CPU: 1 PID: {pid} Comm: python3 Not tainted 6.1.192 #1\n"
    )


def test_no_killable_panic_invoked_by_the_harness_is_infra_error(tmp_path: Path) -> None:
    records = _run_agent(tmp_path, "depletion", P1)
    harness, attacker = _pid(records, "testcase:depletion"), _pid(records, "attacker")
    body = (
        _invoked_adj(START + 2, harness, -1000)
        + _killed(START + 2.1, attacker)
        + _invoked_adj(START + 2.2, harness, -1000)
        + _deadlock(START + 2.3)
    )
    c = classify(_console("depletion", body), _facts(records))
    assert (c.outcome, c.rule) == ("infra_error", "harness-oom-panic"), c.detail
    assert c.fields["invoker_pid"] == harness
    # the agent likewise
    c = classify(
        _console("depletion", _invoked_adj(START + 2, AGENT_PID, -1000) + _deadlock(START + 2.1)),
        _facts(records),
    )
    assert c.rule == "harness-oom-panic"
    # a workload task the kernel shows at -1000 although the lab set 0: protection leaked
    victim = _pid(records, "victim")
    c = classify(
        _console("depletion", _invoked_adj(START + 2, victim, -1000) + _deadlock(START + 2.1)),
        _facts(records),
    )
    assert c.rule == "harness-oom-panic", c.detail
    # invoked by a task at the value the lab set: the kernel's panic
    c = classify(
        _console("depletion", _invoked_adj(START + 2, victim, 0) + _deadlock(START + 2.1)),
        _facts(records),
    )
    assert (c.outcome, c.rule) == ("panic", "panic")
    # a kernel BUG before it is a finding whatever the lab did
    bug = f"[{START + 1:12.6f}] BUG: Bad page state in process python3  pfn:1bc00\n"
    c = classify(
        _console("depletion", bug + _invoked_adj(START + 2, harness, -1000) + _deadlock(START + 3)),
        _facts(records),
    )
    assert c.outcome == "panic" and c.fields["cause_signature"] == "bad_page_state"


# (f) a test case's word is not kernel evidence.


@pytest.mark.parametrize("claim", ["panic", "oops", "bug", "warn", "oom_kill", "fault_livelock"])
def test_a_kernel_class_claimed_without_kernel_evidence_is_never_that_class(
    tmp_path: Path, claim: str
) -> None:
    about = f"""
def run(t):
    res = t.task("victim", lambda: 1, role="victim", timeout=10)
    t.observe({claim!r}, "saw it", about=res)
"""
    records = _run_agent(tmp_path, "case", about)
    c = classify(_console("case", ""), _facts(records))
    # the victim returned: its return is its fate
    assert (c.outcome, c.rule) == ("pass", "test-passed"), c.detail
    assert c.fields["claims_rejected"] == [{"testcase": "case", "claimed": claim}]
    bare = _run_agent(tmp_path, "bare", f"def run(t):\n    t.observe({claim!r}, 'saw it')\n")
    c = classify(_console("bare", ""), _facts(bare))
    assert (c.outcome, c.rule) == ("infra_error", "claim-unsupported"), c.detail
    assert c.fields["claimed"] == claim


# Untrusted roles and abouts.


def test_the_host_knows_the_guests_roles() -> None:
    assert cl.TASK_ROLES == lg.ROLES and cl.HARNESS == lg.HARNESS


@pytest.mark.parametrize(
    "rec",
    [
        {"type": "spawn", "name": "x", "pid": 5, "role": "bystander"},
        {"type": "spawn", "name": "x", "pid": "5", "role": "victim"},
        {"type": "task", "name": "x", "pid": 5, "status": "exited", "role": 7},
        {"type": "result", "verdict": "pass", "about": {"name": "x", "pid": 5, "role": "harness"}},
        {"type": "result", "verdict": "pass", "about": ["x"]},
        {"type": "precondition", "check": "c", "ok": "no"},
        {"type": "ready", "agent_pid": "36"},
        {"type": "error", "kind": {"a": 1}, "message": "m"},
    ],
)
def test_malformed_role_records_are_protocol_problems(rec: dict[str, Any]) -> None:
    c = classify(_console("case", ""), RunFacts(ready=True, records=(rec, {"type": "done"})))
    assert c.outcome == "infra_error" and c.rule in ("protocol-problems", "agent-error"), c.detail


def test_precondition_data_is_bounded() -> None:
    deep: Any = 1
    for _ in range(50):
        deep = {"k": deep, "s": "x" * 10_000, "l": list(range(1000))}
    rec = {"type": "precondition", "testcase": "c", "check": "c", "ok": False, "data": deep}
    c = classify(_console("c", ""), RunFacts(ready=True, records=(rec, {"type": "done"})))
    assert c.rule == "precondition-failed"
    assert len(str(c.to_json())) < 20_000


def test_a_refusal_before_the_fault_is_refused_whatever_killed_the_victim_later(
    tmp_path: Path,
) -> None:
    """pressure R0 (x86_64 and arm64 runs of 2026-11-30): the reservation is refused
    (ftruncate ENOMEM, the spec's answer), and afterwards the faulter's own next
    allocation runs the OOM killer, which kills the hog and then the faulter. The
    refusal is the outcome (the test case saw it, marked by the task before anything
    else); the kills after it are context: a refused victim never faulted secret memory."""
    src = """
import os, signal
def _refused_then_killed():
    os.kill(os.getpid(), signal.SIGKILL)
def _hold():
    import time
    time.sleep(60)
def run(t):
    hog = t.spawn("hog", _hold, role="hog", oom_score_adj=500)
    res = t.task("faulter", _refused_then_killed, role="victim", timeout=10)
    hog.kill()
    t.observe("refused", "ftruncate: ENOMEM; afterwards the faulter ended signaled SIGKILL",
              about=res, refused="ftruncate: ENOMEM")
"""
    records = _run_agent(tmp_path, "pressure", src)
    faulter, hog = _pid(records, "faulter"), _pid(records, "hog")
    at = START + _t(records, "faulter")
    body = (
        _invoked(at + 0.1, faulter, "0x500cc2(GFP_HIGHUSER|__GFP_ACCOUNT)")
        + _killed(at + 0.2, hog)
        + _invoked(at + 0.3, faulter, "0x500cc2(GFP_HIGHUSER|__GFP_ACCOUNT)")
        + _killed(at + 0.4, faulter)
    )
    c = classify(_console("pressure", body), _facts(records))
    assert (c.outcome, c.rule) == ("refused", "test-observed"), c.detail
    assert _others(c)["hog"] == "OOM-killed"
    # without the refusal, the same console is the victim's OOM kill
    src_killed = src.replace('t.observe("refused"', 't.observe("oom_kill"')
    records = _run_agent(tmp_path, "pressure", src_killed)
    faulter, hog = _pid(records, "faulter"), _pid(records, "hog")
    at = START + _t(records, "faulter")
    body = _invoked(at + 0.1, faulter) + _killed(at + 0.2, hog) + _killed(at + 0.4, faulter)
    c = classify(_console("pressure", body), _facts(records))
    assert (c.outcome, c.rule) == ("oom_kill", "oom-kill"), c.detail
