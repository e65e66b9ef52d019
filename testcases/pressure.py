"""pressure: fault secret pages while an anonymous-memory hog holds almost all of RAM."""

import json
import mmap
import os
import signal
import time

import labguest as lg

TESTCASE = {
    "name": "pressure",
    "purpose": "a hog (uid 1000, oom_score_adj 500) takes RAM down to a few MiB; then uid "
    "1001 faults 8 MiB of secret pages; who pays?",
    "arches": ["*"],
    "families": ["secretmem"],  # the secretmem series: meaningless on other families
    "timeout": 240,
    "memory_mib": 256,
    "expect": [
        # era 5.11 (issue 10; docs/variants.md 7, written before any 5.11 run): a pool
        # refill that fails returns VM_FAULT_OOM, and the #PF handler OOM-kills (the hog,
        # oom_score_adj 500) instead of retrying: no fault_livelock in that world.
        "era=5.11 pool=pmd|cma fallback=false reserve=false fault=oom -> oom_kill",
        # Spec 3(e) R0: faults are unaffected, ftruncate under pressure returns ENOMEM.
        # The reservation's page allocations never invoke the OOM killer: order-9 chunks
        # (mm/page_alloc.c:4497) whose cma_alloc() migration targets are
        # __GFP_RETRY_MAYFAIL (:9204, :4507). No oom_kill is predicted for the faulter.
        "reserve=true -> refused",
        # Spec 3(e) P1: an order-9 failure is likely: "Huh" spin (OOM policy) or SIGBUS.
        # The refill is order 9 (> PAGE_ALLOC_COSTLY_ORDER), which never invokes the OOM
        # killer (mm/page_alloc.c:4497), and P1 has no order-0 fallback.
        "pool=pmd fallback=false fault=oom -> fault_livelock",
        "pool=pmd fallback=false fault=sigbus -> sigbus",
        # Spec 3(e) C0/C1: a refill that cannot migrate pages out of CMA spins (C0) or
        # gets SIGBUS (C1); allocator OOM kills from other allocations may hit the
        # secretmem holder (the faulter) itself. The spec names both.
        "pool=cma fallback=false reserve=false fault=oom -> fault_livelock|oom_kill",
        "pool=cma fallback=false reserve=false fault=sigbus -> sigbus|oom_kill",
        # Spec 3(e) U0/U1, and P0/C2 through their order-0 fallback: the faulter's
        # order-0 allocation reaches the page-allocator OOM killer in its own context.
        "* -> oom_kill",
    ],
}

LEAVE_KB = 6 * 1024
STEP = 1 << 20
SECRET_PAGES = 2048
READY = "/tmp/pressure-hog"
GO = signal.SIGUSR1  # the harness tells the waiting faulter to go (no memory needed)


def _hog() -> None:
    # Anonymous private memory (spec 3(e): an anonymous hog): the OOM reaper can free
    # it at once when the hog is killed. (A MAP_SHARED hog's pages are shmem, which
    # nothing frees until the hog has exited: the killer then went on to the faulter.)
    held = []
    while lg.meminfo().get("MemAvailable", 0) > LEAVE_KB:
        m = mmap.mmap(-1, STEP, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        for off in range(0, STEP, lg.PAGE):
            m[off] = 1
        held.append(m)
    with open(READY + ".tmp", "w") as f:
        json.dump({"pid": os.getpid(), "mib": len(held)}, f)
    os.rename(READY + ".tmp", READY)
    while True:
        time.sleep(1)


def _faulter(stages: lg.Stages) -> dict[str, object]:
    """Set up before the hog fills, wait for GO, then ask for the secret memory.

    Started before the pressure, with its pages made its own, so that nothing it does
    after GO allocates except what the scenario asks for: the reservation (ftruncate),
    the mapping and the secret faults. A refusal is marked (through a pipe page that
    already exists) and the task ends at once, before anything else could allocate:
    after a refused reservation (R0) the non-CMA memory is gone (the failed cma_alloc
    migrated the hog's pages out of the CMA area), and any later allocation of the
    faulter's own (its result's pipe page) would run the OOM killer, which is not the
    scenario's allocation."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {GO})
    hog: list[int] = []

    def mark(step: str, **data: object) -> None:
        stages.mark(step, hog_alive=lg.alive(hog[0]) if hog else None, **data)

    step = "memfd_secret"
    try:
        fd = lg.memfd_secret()
    except OSError as exc:
        return {"refused": f"{step}: {lg.errno_name(exc.errno)}", "step": step}
    _available()
    stages.mark("ready", alive=lg.alive(os.getpid()), own_pages=lg.own_pages())
    signal.sigwait({GO})
    with open(READY) as f:  # the hog's pid
        hog.append(int(json.load(f)["pid"]))
    try:
        step = "ftruncate"
        mark(step, mem_available_kb=_available())
        os.ftruncate(fd, SECRET_PAGES * lg.PAGE)  # a reserving variant fills its pool here
        step = "mmap"
        m = mmap.mmap(
            fd, SECRET_PAGES * lg.PAGE, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
        )
    except OSError as exc:
        stages.mark("refused", step=step, errno=lg.errno_name(exc.errno))
        os._exit(0)  # nothing more: see above
    mark("faulting", mem_available_kb=_available())
    for i in range(SECRET_PAGES):
        m[i * lg.PAGE] = 1
    mark("faulted")
    return {"touched": SECRET_PAGES}


def _available() -> int | None:
    return lg.meminfo().get("MemAvailable")


def run(t: lg.Context) -> None:
    if os.path.exists(READY):
        os.unlink(READY)
    stages = lg.Stages()
    faulter = t.spawn("faulter", _faulter, stages, role="victim", user=lg.OTHER_USER)
    hog: lg.Handle | None = None
    try:
        deadline = time.monotonic() + 60
        while stages.reached("ready") is None and not faulter.poll():
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        t.require(
            stages.reached("ready") is not None and not faulter.poll(),
            "faulter_ready",
            f"the faulter set up and waits (fate: {faulter.result})",
        )
        hog = t.spawn("hog", _hog, role="hog", user=lg.UNPRIVILEGED, oom_score_adj=500)
        # The harness shares its pages with the tasks it forked: copy them now, while
        # memory is plentiful, so that it needs none once the hog has taken it.
        t.event("harness pages made its own", pages=lg.own_pages())
        _pressure(t, hog, faulter, stages)
    finally:
        faulter.kill()  # also when a precondition failed
        if hog is not None:
            hog.kill()


def _pressure(t: lg.Context, hog: lg.Handle, faulter: lg.Handle, stages: lg.Stages) -> None:
    deadline = time.monotonic() + 120
    while not os.path.exists(READY) and not hog.poll():
        if time.monotonic() >= deadline:
            t.require(False, "hog_filled", "the hog did not fill memory in 120s")
        time.sleep(0.2)
    mem = {k: v for k, v in lg.meminfo().items() if k in ("MemFree", "MemAvailable", "CmaFree")}
    t.event("hog holds memory", hog_alive=not hog.poll(), meminfo=mem)
    t.require(not hog.poll(), "hog_alive", f"the hog holds memory ({hog.result})", meminfo=mem)
    available = mem.get("MemAvailable")
    t.require(
        available is not None and available <= 2 * LEAVE_KB,
        "memory_taken",
        f"the hog took MemAvailable down to {available} kB (<= {2 * LEAVE_KB} kB)",
        meminfo=mem,
    )
    t.require(not faulter.poll(), "faulter_waiting", f"the faulter waits (fate: {faulter.result})")
    os.kill(faulter.pid, GO)
    res = faulter.wait(60)
    hog_fate = "alive" if not hog.poll() else f"{hog.result.status} {hog.result.signal}"
    refusal = stages.reached("refused")
    t.event(
        "faulter ended",
        status=res.status,
        signal=res.signal,
        seconds=res.seconds,
        value=res.value,
        stages=stages.seen(),
        hog=hog_fate,
        stats=lg.secretmem_stats(),
    )
    value = t.require_secretmem(res)
    if refusal is not None:
        value = {"refused": f"{refusal.get('step')}: {refusal.get('errno')}"}
    # SECRET_PAGES is exactly uid 1001's default 8 MiB RLIMIT_MEMLOCK: EAGAIN would be
    # that limit (patch 0005), not memory, i.e. not this scenario.
    t.require(
        not str(value.get("refused", "")).endswith("EAGAIN"),
        "refused_for_memory",
        f"a refusal is for memory, not for RLIMIT_MEMLOCK ({value.get('refused')})",
    )
    # The pressure must be on when the secret memory is asked for: at the fault, or at
    # the ftruncate that reserves it (a refusal comes before any fault).
    at = stages.reached("faulting") or (stages.reached("ftruncate") if refusal else None)
    t.require(
        at is not None and at.get("hog_alive") is True,
        "hog_alive_at_fault",
        f"the hog was alive when the faulter asked for secret memory ({at})",
        stages=stages.seen(),
    )
    if refusal is not None:
        # The refusal is the faulter's answer, marked before anything else happened to
        # it; what came after (an OOM kill, say) is context, not the outcome.
        after = "" if res.ok else f"; afterwards the faulter ended {res.status} {res.signal}"
        t.observe(
            "refused",
            f"the faulter was refused cleanly ({value['refused']}) with the hog alive; "
            f"hog afterwards {hog_fate}{after}",
            about=res,
            refused=value["refused"],
            hog=hog_fate,
        )
    elif res.status == "timeout":
        t.observe(
            "fault_livelock",
            f"the faulter spun until killed; hog {hog_fate}",
            about=res,
            hog=hog_fate,
        )
    elif res.sigbus:
        t.observe("sigbus", f"the faulter got SIGBUS; hog {hog_fate}", about=res, hog=hog_fate)
    elif res.signal == "SIGKILL":
        t.observe(
            "oom_kill",
            f"the faulter was killed; hog {hog_fate}",
            about=res,
            killed="faulter",
            hog=hog_fate,
        )
    elif res.ok:
        # The hog died while the faulter faulted (it was alive at the first fault): an
        # OOM kill during the secret faults. Whose allocation invoked the OOM killer is
        # kernel evidence (the invoker's pid), which the host holds against the faulter.
        t.observe(
            "oom_kill" if "SIGKILL" in hog_fate else "pass",
            f"the faulter finished; hog {hog_fate}",
            about=res,
            hog=hog_fate,
        )
    else:
        t.check(False, f"the faulter ended {res.status} {res.signal} {res.error}")
