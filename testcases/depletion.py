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
        # A PMD pool takes its chunks out of general RAM: the exhaustion that stops the
        # victim's refill starves everybody else too, so the OOM killer may strike as well
        # (spec 3(c): P0 ends in page-allocator OOM kills of innocent tasks).
        "pool=pmd fallback=false fault=oom -> fault_livelock|oom_kill",
        "pool=pmd fallback=false fault=sigbus -> sigbus|oom_kill",
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


def _victim() -> dict[str, object]:
    try:
        fd = lg.memfd_secret()
    except OSError as exc:
        return {"refused": f"memfd_secret: {lg.errno_name(exc.errno)}"}
    try:
        os.ftruncate(fd, lg.PAGE)
    except OSError as exc:
        return {"refused": f"ftruncate: {lg.errno_name(exc.errno)}"}
    m = mmap.mmap(fd, lg.PAGE, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    m[0] = 0x42  # the fault under test
    return {"touched": m[0] == 0x42}


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
    with contextlib.suppress(FileNotFoundError):
        os.unlink(STATE)
    attacker = t.spawn("attacker", _attacker, dict(t.params), limit, user=lg.UNPRIVILEGED)
    deadline = time.monotonic() + 200
    while not os.path.exists(STATE):
        if attacker.poll():
            break
        if time.monotonic() > deadline:
            attacker.kill(status="timeout")
            t.check(False, "the attacker did not finish filling within 200s")
        time.sleep(0.2)
    state = {}
    if os.path.exists(STATE):
        with open(STATE) as f:
            state = json.load(f)
    t.event("attacker holds its files", **state, meminfo=_mem(), stats=lg.secretmem_stats())
    t.check(not attacker.poll(), f"the attacker died: {attacker.result}")

    victim = t.task("victim", _victim, user=lg.OTHER_USER, timeout=VICTIM_TIMEOUT)
    outcome = _outcome(victim)
    t.event(
        "victim",
        outcome=outcome,
        status=victim.status,
        signal=victim.signal,
        seconds=victim.seconds,
        value=victim.value,
    )

    attacker.kill()
    time.sleep(0.5)
    after = t.task(
        "victim-after-attacker-exit", _victim, user=lg.OTHER_USER, timeout=VICTIM_TIMEOUT
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
        f"({state.get('reason', 'still filling')}); {how}"
        + ("; a new file works once the attacker has gone" if recovered else ""),
        attacker=state,
        victim_seconds=victim.seconds,
        victim=victim.value,
        recovered=recovered,
        cma_total_kb=before["meminfo"].get("CmaTotal"),
        stats=lg.secretmem_stats(),
    )


def _mem() -> dict[str, int]:
    mi = lg.meminfo()
    return {k: mi[k] for k in ("MemFree", "CmaTotal", "CmaFree", "Unevictable") if k in mi}
