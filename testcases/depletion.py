"""depletion: an unprivileged user exhausts the shared secretmem resource, then another
user's task faults a secret page (Hocko, 26 Jan 2021: "any task is able to deprive access
to secret memory to other tasks and cause OOM killer which wouldn't really recover ever").
"""

import contextlib
import json
import mmap
import os
import time

import labguest as lg

TESTCASE = {
    "name": "depletion",
    "purpose": "uid 1000 maps one-page secret files until the pool, CMA area or its limit is "
    "exhausted; then uid 1001 faults one secret page: what does it get?",
    "arches": ["*"],
    "families": ["secretmem"],  # the secretmem series: meaningless on other families
    "timeout": 300,
    "memory_mib": 256,
    "expect": [
        # era 5.11 (issue 10; argued in docs/variants.md 7, written before any 5.11 run):
        # the victim's VM_FAULT_OOM reaches pagefault_out_of_memory(), which runs the
        # global OOM killer; it kills the task with the highest badness (the attacker,
        # whose mapped secret pages count as rss), not the faulting victim.
        "era=5.11 pool=cma fallback=false reserve=false fault=oom -> oom_kill",
        "era=5.11 pool=pmd fallback=false reserve=false fault=oom -> oom_kill",
        "reserve=true -> refused",
        "pool=cma fallback=false fault=oom -> fault_livelock",
        "pool=cma fallback=false fault=sigbus -> sigbus",
        # Spec 3(c) P1: the refill fails as soon as no free order-9 block exists; the OOM
        # policy gives the C0-style spin, the SIGBUS policy SIGBUS. No OOM kill is
        # predicted for P1: an OOM kill of some other task is context, not the outcome.
        "pool=pmd fallback=false fault=oom -> fault_livelock",
        "pool=pmd fallback=false fault=sigbus -> sigbus",
        # Spec 3(c) P0: the victim's order-9 attempt fails silently, order-0 succeeds
        # until RAM runs out, then the page-allocator OOM killer fires. This outcome only
        # counts for a victim that actually faulted while the attacker held its hoard
        # (asserted by run()); an attacker or harness killed before that is no outcome.
        "pool=pmd fallback=true -> oom_kill",
        "* -> pass",
    ],
}

VICTIM_TIMEOUT = 20.0  # a victim still faulting after this long is spinning
CHUNK_KB = 2048
STATE = "/tmp/depletion-attacker.json"


def _free_pmd_blocks() -> int:
    """Free buddy blocks of order >= 9 (a PMD chunk could still be had)."""
    total = 0
    with open("/proc/buddyinfo") as f:
        for line in f:
            counts = [int(x) for x in line.split()[4:]]
            total += sum(counts[9:])
    return total


def _exhausted(params: dict[str, object]) -> str | None:
    """Stop *before* a touch that would need a chunk that cannot be had: the attacker
    wants to hold the resource, not to fall into the failure it is causing."""
    if params.get("pool") == "cma" and lg.meminfo().get("CmaFree", 0) < CHUNK_KB:
        return "CMA area exhausted (CmaFree < 2 MiB)"
    if params.get("pool") == "pmd" and not params.get("fallback") and _free_pmd_blocks() == 0:
        return "no free order-9 block left"
    return None


def _attacker(params: dict[str, object], limit: int) -> None:
    # ctypes mmap, not mmap.mmap: Python's mmap object keeps a dup of the fd, and a
    # thousand files would hit RLIMIT_NOFILE long before any secretmem limit.
    maps: list[int] = []
    reason = f"reached {limit} files (its RLIMIT_MEMLOCK budget)"
    started = time.monotonic()
    for _ in range(limit):
        stop = _exhausted(params)
        if stop:
            reason = stop
            break
        step = "memfd_secret"
        try:
            fd = lg.memfd_secret()
            step = "ftruncate"
            os.ftruncate(fd, lg.PAGE)
        except OSError as exc:
            reason = f"{step} failed: {lg.errno_name(exc.errno)}"
            break
        addr = lg.raw_mmap(fd, lg.PAGE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED)
        os.close(fd)  # the mapping keeps the file; the fd table stays small
        lg.poke(addr)
        maps.append(addr)
    with open(STATE + ".tmp", "w") as f:
        json.dump(
            {"files": len(maps), "reason": reason, "seconds": round(time.monotonic() - started, 2)},
            f,
        )
    os.rename(STATE + ".tmp", STATE)
    while True:  # hold everything until the test kills us
        time.sleep(1)


def _victim(stages: lg.Stages, attacker: int | None) -> dict[str, object]:
    # Each step says whether the attacker still holds its hoard (None: no attacker,
    # the recovery probe after it exited).
    def held() -> bool | None:
        return None if attacker is None else lg.alive(attacker)

    try:
        fd = lg.memfd_secret()
    except OSError as exc:
        return {"refused": f"memfd_secret: {lg.errno_name(exc.errno)}", "step": "memfd_secret"}
    stages.mark("ftruncate", attacker_alive=held())
    try:
        os.ftruncate(fd, lg.PAGE)
    except OSError as exc:
        return {"refused": f"ftruncate: {lg.errno_name(exc.errno)}", "step": "ftruncate"}
    m = mmap.mmap(fd, lg.PAGE, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    # said before the touch: a spinning or killed victim got here
    stages.mark("faulting", attacker_alive=held())
    m[0] = 0x42  # the fault under test
    stages.mark("faulted")
    return {"touched": m[0] == 0x42}


def _exhaustion(
    params: dict[str, object], state: dict[str, object], limit: int, before: dict[str, int]
) -> tuple[bool, str, dict[str, object]]:
    """Is the resource the victim needs really gone? (holds, how, the numbers)

    Read by the harness (root: the debugfs counters are root-only) right before the
    victim faults. A counter that is missing is a failed precondition, never a 0.
    """
    mi, stats = lg.meminfo(), lg.secretmem_stats()
    if params.get("pool") == "cma":
        total, free = mi.get("CmaTotal"), mi.get("CmaFree")
        pages = stats.get("pool_pages")
        if total is None or free is None or pages is None:
            missing = [
                k
                for k, v in (("CmaTotal", total), ("CmaFree", free), ("pool_pages", pages))
                if v is None
            ]
            return False, f"counters missing: {', '.join(missing)}", {"missing": missing}
        held_kb = (pages - before.get("pool_pages", 0)) * lg.PAGE // 1024
        numbers: dict[str, object] = {"cma_total_kb": total, "cma_free_kb": free}
        numbers["pools_hold_kb"] = held_kb
        # Every chunk of the area sits in the attacker's pools (docs/variants.md G9:
        # exactly CmaTotal / 2 MiB chunks), and no free 2 MiB is left.
        ok = held_kb >= total and free < CHUNK_KB
        return (
            ok,
            f"the attacker's pools hold {held_kb} of {total} kB CMA, CmaFree {free} kB",
            numbers,
        )
    if params.get("pool") == "pmd":
        blocks = _free_pmd_blocks()
        return (
            blocks == 0,
            f"{blocks} free order>=9 blocks left (the victim's chunk refill must fail)",
            {"free_pmd_blocks": blocks, "MemFree": mi.get("MemFree")},
        )
    files = state.get("files")
    return (
        files == limit,
        f"the attacker holds {files} of the {limit} files it set out to map",
        {"files": files, "limit": limit},
    )


def _outcome(res: lg.TaskResult) -> str:
    if res.status == "timeout":
        return "fault_livelock"
    if res.sigbus:
        return "sigbus"
    if res.signal == "SIGKILL":
        return "oom_kill"
    if res.ok and isinstance(res.value, dict) and "refused" in res.value:
        return "refused"
    if res.ok:
        return "pass"
    return "fail"


def run(t: lg.Context) -> None:
    limit = 2048 - 64 if t.params.get("pool") != "none" else 512
    before = {"meminfo": lg.meminfo(), "stats": lg.secretmem_stats()}
    t.require(
        bool(before["stats"]),
        "counters",
        "the lab kernel's secretmem counters (/sys/kernel/debug/secretmem) are readable",
        stats=before["stats"],
    )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(STATE)
    attacker = t.spawn(
        "attacker", _attacker, dict(t.params), limit, role="attacker", user=lg.UNPRIVILEGED
    )
    try:
        deadline = time.monotonic() + 200
        while not os.path.exists(STATE):
            if attacker.poll():
                break
            if time.monotonic() > deadline:
                attacker.kill(status="timeout")
                t.require(False, "attacker_filled", "the attacker did not finish filling in 200s")
            time.sleep(0.2)
        state = {}
        if os.path.exists(STATE):
            with open(STATE) as f:
                state = json.load(f)
        t.event("attacker holds its files", **state, meminfo=_mem(), stats=lg.secretmem_stats())
        # Preconditions, right before the victim faults: the attacker still holds its hoard
        # (a dead attacker has given everything back) and the resource really is gone.
        t.require(
            not attacker.poll(),
            "attacker_alive",
            f"the attacker holds its files when the victim starts (fate: {attacker.result})",
            attacker=state,
        )
        ok, how_gone, numbers = _exhaustion(t.params, state, limit, before["stats"])
        t.require(ok, "resource_exhausted", how_gone, **numbers)

        stages = lg.Stages()
        victim = t.task(
            "victim",
            _victim,
            stages,
            attacker.pid,
            role="victim",
            user=lg.OTHER_USER,
            timeout=VICTIM_TIMEOUT,
        )
        outcome = _outcome(victim)
        attacker_after = "alive" if not attacker.poll() else f"{attacker.result}"
        t.event(
            "victim",
            outcome=outcome,
            status=victim.status,
            signal=victim.signal,
            seconds=victim.seconds,
            value=victim.value,
            stages=stages.seen(),
            attacker=attacker_after,
        )
        t.require_secretmem(victim)
        # Only a victim that reached its fault has an outcome to report (the recorded P0
        # cell "reproduced" an OOM kill in which the victim never ran); a refusal at
        # ftruncate is the one outcome that comes before the fault.
        at = stages.reached("ftruncate" if outcome == "refused" else "faulting")
        t.require(
            at is not None,
            "victim_faulted",
            f"the victim reached its fault (it ended {victim.status} {victim.signal or ''}, "
            f"stages {[m.get('stage') for m in stages.seen()]})",
            victim_status=victim.status,
            victim_signal=victim.signal,
        )
        # ...and met the depletion there: an attacker killed meanwhile (by the OOM
        # killer, say) has given its hoard back.
        t.require(
            at is not None and at.get("attacker_alive") is True,
            "attacker_alive_at_fault",
            f"the attacker held its hoard when the victim faulted ({at})",
            attacker_after=attacker_after,
        )
    finally:
        # also when a precondition failed: nothing of the attacker outlives the scenario
        attacker.kill()
    time.sleep(0.5)
    after = t.task(
        "victim-after-attacker-exit",
        _victim,
        lg.Stages(),
        None,
        role="probe",
        user=lg.OTHER_USER,
        timeout=VICTIM_TIMEOUT,
    )
    recovered = _outcome(after) == "pass"
    t.event(
        "after the attacker exited",
        outcome=_outcome(after),
        recovered=recovered,
        meminfo=_mem(),
        stats=lg.secretmem_stats(),
    )
    how = {
        "fault_livelock": f"the victim's fault spun for {victim.seconds:.0f}s until killed",
        "sigbus": "the victim's first touch got SIGBUS",
        "refused": f"the victim was refused cleanly ({(victim.value or {}).get('refused')})",
        "oom_kill": "the victim was killed (SIGKILL)",
        "pass": "the victim's fault succeeded",
    }.get(outcome, outcome)
    t.observe(
        outcome,
        f"uid 1000 held {state.get('files', '?')} one-page files "
        f"({state.get('reason', 'still filling')}); {how}; attacker afterwards: {attacker_after}"
        + ("; a new file works once the attacker has gone" if recovered else ""),
        about=victim,
        attacker=state,
        attacker_after=attacker_after,
        exhaustion=numbers,
        victim_seconds=victim.seconds,
        victim=victim.value,
        recovered=recovered,
        cma_total_kb=before["meminfo"].get("CmaTotal"),
        stats=lg.secretmem_stats(),
    )


def _mem() -> dict[str, int]:
    mi = lg.meminfo()
    return {k: mi[k] for k in ("MemFree", "CmaTotal", "CmaFree", "Unevictable") if k in mi}
