"""Rule checks for oom kills and fault livelocks, for the victim when the records name one."""

from __future__ import annotations

from typing import Any

from lab.classify.findings import _Evidence, _Findings, _Verdict
from lab.classify.lab_rules import _inside, _label
from lab.classify.model import Hit, _clean
from lab.classify.records import _About
from lab.classify.run_rules import _finite
from lab.classify.title import title

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
    if any(r.observed == "refused" and r.about == v for r in f.agent.results):
        # Refused before its fault (a userspace answer the test case saw first): it
        # faulted no secret memory, so an OOM kill after that (even its own, even one
        # its next allocation ran) is context, not the outcome (pressure R0).
        return None
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
    kill = own_kill if killed and own_kill is not None else by_victim[0][1]
    return _Verdict("oom_kill", f"oom_kill: {who} {how}", ev, values, _kill_title(f, kill))


def _oom_kill_console(f: _Findings) -> _Verdict | None:
    kills = f.kills()
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
        "oom_kill",
        f"oom_kill: killed {first['pid']} ({first['comm']}) — {who}{more}",
        ev,
        values,
        _kill_title(f, kills[0]),
    )


def _kill_title(f: _Findings, kill: Hit) -> str | None:
    """The kill's title; a bare `Killed process` (before 5.1) takes the scope of the
    `Kill process ... or sacrifice child` line before it."""
    named = title(kill)
    choice = next((h for h in reversed(f.hits("oom_kill_choice")) if h.index < kill.index), None)
    if named and kill.sig.name == "oom_killed_process" and choice is not None:
        scope = str(choice.fields.get("scope", "Out of memory"))
        named = scope + named.removeprefix("Out of memory")
    return named


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
