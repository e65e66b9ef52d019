"""depletion: an unprivileged user exhausts the shared secretmem resource, then another
user's task faults a secret page (Hocko, 26 Jan 2021: "any task is able to deprive access
to secret memory to other tasks and cause OOM killer which wouldn't really recover ever").
"""

import contextlib
import json
import mmap
import os
import signal
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
# The victim's secret file, mapped in pieces of one page short of a PMD region, so
# that each piece shares the page table the victim made before the depletion (with an
# anonymous page at the start of its region): its faults then allocate secret pages
# and nothing else. 4 pieces: just under uid 1001's 8 MiB RLIMIT_MEMLOCK, and more
# than what reclaim still finds once RAM has run out (x86_64 P0 with one piece: the
# victim's 511 fallback pages came from reclaim with 124 pages above the watermark).
PIECE = (1 << lg.PMD_ORDER) - 1
VICTIM_PAGES = 4 * PIECE
# Watermark room (pages) the PMD attacker leaves: enough for the harness's few records
# and the kernel's own small allocations between the attacker stopping and the victim's
# fault, far less than the victim's file (P0) or an order-9 chunk (P1).
ROOM_P0 = 128
ROOM_P1 = (1 << lg.PMD_ORDER) - 64
# A chunk refill also allocates a little (chunk record, direct-map split): the PMD
# attacker takes a chunk only with this much room above the chunk itself.
CHUNK_ROOM = (1 << lg.PMD_ORDER) + 128
GO = signal.SIGUSR1  # the harness tells the waiting victim to go (no memory needed)


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
    wants to hold the resource, not to fall into the failure it is causing.

    PMD pools take their chunks from the page allocator, so the attacker's hoard is
    the guest's RAM: it stops by the allocator's own numbers (the min watermark,
    /proc/zoneinfo), never by running into the OOM killer itself (which, with nobody
    else killable, would pick the attacker and give everything back: the recorded P0
    and arm64 P1 cells)."""
    if params.get("pool") == "cma" and lg.meminfo().get("CmaFree", 0) < CHUNK_KB:
        return "CMA area exhausted (CmaFree < 2 MiB)"
    if params.get("pool") != "pmd":
        return None
    mem = lg.memory_headroom()
    room = mem.get("headroom", 0)
    if params.get("fallback"):
        # P0: chunks while they come, then order-0 fallback pages, until RAM runs out
        # (spec 3(c) P0: "order-0 succeeds until RAM runs out").
        if room <= ROOM_P0:
            return f"RAM ran out: {room} pages above the min watermark"
        return None
    # P1: no fallback; the next file needs a chunk.
    if not mem.get("pmd_refill") or _free_pmd_blocks() == 0:
        return "no order-9 chunk left to refill a pool"
    if room < CHUNK_ROOM:
        return f"no room for another chunk ({room} pages above the min watermark)"
    return None


def _ballast(room: int) -> int:
    """P1 only: when the attacker stopped short of a chunk for lack of watermark room
    while a free order-9 block was left, take anonymous pages (no swap: nothing can
    reclaim them) until a chunk no longer fits above the min watermark. The victim's
    refill then fails as the spec's P1 says it does without a free order-9 block.
    Returns the pages taken."""
    taken = 0
    held = []
    while lg.memory_headroom().get("headroom", 0) > room:
        m = mmap.mmap(-1, 16 * lg.PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        for off in range(0, len(m), lg.PAGE):
            m[off] = 1
        held.append(m)
        taken += 16
    _BALLAST.extend(held)
    return taken


_BALLAST: list[mmap.mmap] = []


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
    ballast = 0
    if params.get("pool") == "pmd" and not params.get("fallback"):
        ballast = _ballast(ROOM_P1)
    with open(STATE + ".tmp", "w") as f:
        json.dump(
            {
                "pid": os.getpid(),
                "files": len(maps),
                "reason": reason,
                "ballast_pages": ballast,
                "seconds": round(time.monotonic() - started, 2),
            },
            f,
        )
    os.rename(STATE + ".tmp", STATE)
    while True:  # hold everything until the test kills us
        time.sleep(1)


def _victim(stages: lg.Stages, wait: bool, pages: int) -> dict[str, object]:
    """Set up everything that needs memory first, wait for the harness's GO, then ask
    for the secret memory: reserve it (ftruncate), map it, touch it page by page.

    The victim exists before the attacker depletes anything, so nothing it needs after
    GO comes from a fork (a Python child copies megabytes on write): its fault is the
    first allocation that meets the depletion. Its page table is made now too (an
    anonymous page in the PMD region the secret file is mapped into later), so the
    fault allocates the secret page and nothing else. wait=False: no attacker (the
    recovery probe after it exited), go at once."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {GO})
    attacker: list[int] = []

    # Each step says whether the attacker still holds its hoard (None: no attacker).
    def held() -> bool | None:
        return lg.alive(attacker[0]) if attacker else None

    try:
        fd = lg.memfd_secret()
    except OSError as exc:
        return {"refused": f"memfd_secret: {lg.errno_name(exc.errno)}", "step": "memfd_secret"}
    rw = mmap.PROT_READ | mmap.PROT_WRITE
    pieces = -(-pages // PIECE)
    size = (pieces + 1) * lg.PMD_SIZE
    area = lg.raw_mmap(-1, size, rw, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    regions = [
        ((area + lg.PMD_SIZE - 1) & ~(lg.PMD_SIZE - 1)) + k * lg.PMD_SIZE for k in range(pieces)
    ]
    for region in regions:
        lg.poke(region)  # the region's page table, made while memory is plentiful
    sizes = [min(PIECE, pages - k * PIECE) for k in range(pieces)]
    # every address the faults will touch, made now (a list made after GO would
    # allocate: a Python heap page is not the allocation under test)
    addrs = [r + (i + 1) * lg.PAGE for r, n in zip(regions, sizes, strict=True) for i in range(n)]
    fixed = mmap.MAP_SHARED | lg.MAP_FIXED
    held()  # runs what the steps after GO run, so their pages exist
    # Not the area: its pages must not exist (the secret mapping replaces them after
    # GO, which would hand them back to the allocator: x86_64 P0, where they became
    # the victim's chunks).
    own = lg.own_pages(skip=(area, size))
    stages.mark("ready", alive=lg.alive(os.getpid()), own_pages=own)
    if wait:
        signal.sigwait({GO})
        with open(STATE) as f:  # the attacker's pid, written when it stopped filling
            attacker.append(int(json.load(f)["pid"]))
    stages.mark("ftruncate", attacker_alive=held())
    try:
        os.ftruncate(fd, pages * lg.PAGE)  # a reserving variant reserves here
    except OSError as exc:
        stages.mark("refused", errno=lg.errno_name(exc.errno))
        return {"refused": f"ftruncate: {lg.errno_name(exc.errno)}", "step": "ftruncate"}
    for k, region in enumerate(regions):
        lg.raw_mmap(fd, sizes[k] * lg.PAGE, rw, fixed, region + lg.PAGE, k * PIECE * lg.PAGE)
    # said before the touch: a spinning or killed victim got here
    stages.mark("faulting", attacker_alive=held())
    for addr in addrs:
        lg.poke(addr, 0x42)  # the faults under test
    stages.mark("faulted", memory=lg.memory_headroom().get("zones"))
    return {"touched": len(addrs), "ok": all(lg.peek(a) == 0x42 for a in addrs)}


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
        mem = lg.memory_headroom()
        if not mem:
            return False, "counters missing: /proc/zoneinfo or /proc/buddyinfo", {}
        room, refill = mem["headroom"], mem["pmd_refill"]
        numbers = {
            "headroom_pages": room,
            "pmd_refill_possible": refill,
            "victim_pages": VICTIM_PAGES,
            "zones": mem["zones"],
            "MemFree": mi.get("MemFree"),
            "chunks_buddy": stats.get("chunks_buddy"),
            "fallback_pages": stats.get("fallback_pages"),
        }
        if params.get("fallback"):
            # P0: the chunk attempt fails, and order-0 cannot give the victim its
            # pages without reclaim: RAM has run out under the attacker's hoard.
            return (
                not refill and room < VICTIM_PAGES,
                f"{room} pages above the min watermark for the victim's {VICTIM_PAGES} "
                f"(order-9 refill possible: {refill})",
                numbers,
            )
        return (
            not refill,
            f"no order-9 chunk can refill the victim's pool (possible: {refill}; "
            f"{room} pages above the min watermark)",
            numbers,
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
    # Watermark boosting raises the min watermark by up to 1.5 pageblocks (x86_64
    # P1: boost 4096 kB on a 1928 kB min) whenever an allocation steals a pageblock,
    # as the attacker's chunk allocations do: the room the attacker measured would
    # vanish under it. Without boosting the watermarks are the zone's own.
    lg.sysctl("vm.watermark_boost_factor", 0)
    # The victim first: it sets up everything that needs memory before the depletion.
    stages = lg.Stages()
    victim = t.spawn(
        "victim", _victim, stages, True, VICTIM_PAGES, role="victim", user=lg.OTHER_USER
    )
    attacker: lg.Handle | None = None
    try:
        _wait_ready(t, victim, stages)
        attacker = t.spawn(
            "attacker", _attacker, dict(t.params), limit, role="attacker", user=lg.UNPRIVILEGED
        )
        # The harness shares every page with the tasks it forked: copy them now, while
        # memory is plentiful, so that it needs none once the attacker has taken it
        # (the x86_64 P1 run: the harness's copy-on-write ran the OOM killer).
        t.event("harness pages made its own", pages=lg.own_pages())
        state, numbers = _deplete(t, attacker, limit, before["stats"])
        t.require(
            not victim.poll(),
            "victim_waiting",
            f"the victim waits for its turn, set up (fate: {victim.result})",
        )
        vm_before = lg.vmstat()
        go = time.monotonic()
        os.kill(victim.pid, GO)
        res = victim.wait(VICTIM_TIMEOUT)
        # Where the victim's memory came from (or why it did not come): reclaim and
        # compaction counters across its faults.
        vm_after = lg.vmstat()
        t.event("vmstat during the victim's faults", **_vm_delta(vm_before, vm_after))
        spun = res.seconds - (go - victim.started)
        outcome = _outcome(res)
        attacker_after = "alive" if not attacker.poll() else f"{attacker.result}"
        t.event(
            "victim",
            outcome=outcome,
            status=res.status,
            signal=res.signal,
            seconds_after_go=round(spun, 3),
            value=res.value,
            stages=stages.seen(),
            attacker=attacker_after,
        )
        t.require_secretmem(res)
        # Only a victim that reached its fault has an outcome to report (the recorded P0
        # cell "reproduced" an OOM kill in which the victim never ran); a refusal at
        # ftruncate is the one outcome that comes before the fault.
        at = stages.reached("ftruncate" if outcome == "refused" else "faulting")
        t.require(
            at is not None,
            "victim_faulted",
            f"the victim reached its fault (it ended {res.status} {res.signal or ''}, "
            f"stages {[m.get('stage') for m in stages.seen()]})",
            victim_status=res.status,
            victim_signal=res.signal,
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
        # also when a precondition failed: nothing of the scenario outlives it
        victim.kill()
        if attacker is not None:
            attacker.kill()
    time.sleep(0.5)
    after = t.task(
        "victim-after-attacker-exit",
        _victim,
        lg.Stages(),
        False,
        1,
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
        "fault_livelock": f"the victim's fault spun for {spun:.0f}s until killed",
        "sigbus": "the victim's first touch got SIGBUS",
        "refused": f"the victim was refused cleanly ({(res.value or {}).get('refused')})",
        "oom_kill": "the victim was killed (SIGKILL)",
        "pass": f"the victim's {VICTIM_PAGES} faults succeeded",
    }.get(outcome, outcome)
    t.observe(
        outcome,
        f"uid 1000 held {state.get('files', '?')} one-page files "
        f"({state.get('reason', 'still filling')}); {how}; attacker afterwards: {attacker_after}"
        + ("; a new file works once the attacker has gone" if recovered else ""),
        about=res,
        attacker=state,
        attacker_after=attacker_after,
        exhaustion=numbers,
        victim_seconds=round(spun, 3),
        victim=res.value,
        recovered=recovered,
        cma_total_kb=before["meminfo"].get("CmaTotal"),
        stats=lg.secretmem_stats(),
    )


def _wait_ready(t: lg.Context, victim: lg.Handle, stages: lg.Stages) -> None:
    deadline = time.monotonic() + 60
    while stages.reached("ready") is None and not victim.poll():
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    t.require(
        stages.reached("ready") is not None and not victim.poll(),
        "victim_ready",
        f"the victim set up its secret file and waits (fate: {victim.result})",
    )


def _deplete(
    t: lg.Context, attacker: lg.Handle, limit: int, before: dict[str, int]
) -> tuple[dict[str, object], dict[str, object]]:
    """Let the attacker fill, then assert (right before the victim's GO) that it holds its
    hoard and that the resource really is gone; returns (its state, the numbers)."""
    deadline = time.monotonic() + 200
    while not os.path.exists(STATE):
        if attacker.poll():
            break
        if time.monotonic() > deadline:
            attacker.kill(status="timeout")
            t.require(False, "attacker_filled", "the attacker did not finish filling in 200s")
        time.sleep(0.2)
    state: dict[str, object] = {}
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
    ok, how_gone, numbers = _exhaustion(t.params, state, limit, before)
    t.require(ok, "resource_exhausted", how_gone, **numbers)
    return state, numbers


_VM_KEYS = ("steal", "scan", "slabs", "drop", "kswapd", "oom", "compact", "alloc_stall", "free")


def _vm_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {
        k: after[k] - before.get(k, 0)
        for k in sorted(after)
        if any(w in k for w in _VM_KEYS) and after[k] != before.get(k, 0)
    }


def _mem() -> dict[str, int]:
    mi = lg.meminfo()
    return {k: mi[k] for k in ("MemFree", "CmaTotal", "CmaFree", "Unevictable") if k in mi}
