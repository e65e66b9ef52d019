"""Rule checks that tell the lab from the scenario: harness deaths, preconditions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lab.classify.findings import _Evidence, _Findings, _msg, _Verdict
from lab.classify.kernel_rules import _panic_hits
from lab.classify.model import MAX_OTHERS, Hit
from lab.classify.records import _About

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
