"""pressure: fault secret pages while an anonymous-memory hog holds almost all of RAM."""

import mmap
import os
import time

import labguest as lg

TESTCASE = {
    "name": "pressure",
    "purpose": "a hog (uid 1000, oom_score_adj 500) takes RAM down to a few MiB; then uid "
    "1001 faults 8 MiB of secret pages; who pays?",
    "arches": ["*"],
    "timeout": 240,
    "memory_mib": 256,
    "expect": [
        # era 5.11 (issue 10; docs/variants.md 7, written before any 5.11 run): a pool
        # refill that fails returns VM_FAULT_OOM, and the #PF handler OOM-kills (the hog,
        # oom_score_adj 500) instead of retrying: no fault_livelock in that world.
        "era=5.11 pool=pmd|cma fallback=false reserve=false fault=oom -> oom_kill",
        # Reservation moves the failure to ftruncate (spec 3(e): ENOMEM under pressure);
        # when the reservation can still migrate the hog out of CMA, the hog is OOM-killed.
        "reserve=true -> refused|oom_kill",
        "pool=pmd fallback=false fault=oom -> fault_livelock|oom_kill",
        "pool=pmd fallback=false fault=sigbus -> sigbus|oom_kill",
        "pool=cma fallback=false reserve=false fault=oom -> fault_livelock|oom_kill",
        "pool=cma fallback=false reserve=false fault=sigbus -> sigbus|oom_kill",
        "* -> oom_kill",
    ],
}

LEAVE_KB = 6 * 1024
STEP = 1 << 20
SECRET_PAGES = 2048
READY = "/tmp/pressure-hog"


def _hog() -> None:
    held = []
    while lg.meminfo().get("MemAvailable", 0) > LEAVE_KB:
        m = mmap.mmap(-1, STEP)
        for off in range(0, STEP, lg.PAGE):
            m[off] = 1
        held.append(m)
    with open(READY, "w") as f:
        f.write(str(len(held)))
    while True:
        time.sleep(1)


def _faulter() -> dict[str, object]:
    try:
        fd = lg.memfd_secret()
        os.ftruncate(fd, SECRET_PAGES * lg.PAGE)  # a reserving variant fills its pool here
    except OSError as exc:
        return {"refused": f"{lg.errno_name(exc.errno)} before any fault"}
    m = mmap.mmap(
        fd, SECRET_PAGES * lg.PAGE, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
    )
    for i in range(SECRET_PAGES):
        m[i * lg.PAGE] = 1
    return {"touched": SECRET_PAGES}


def run(t: lg.Context) -> None:
    if os.path.exists(READY):
        os.unlink(READY)
    hog = t.spawn("hog", _hog, user=lg.UNPRIVILEGED, oom_score_adj=500)
    deadline = time.monotonic() + 120
    while not os.path.exists(READY) and not hog.poll():
        t.check(time.monotonic() < deadline, "the hog did not fill memory in 120s")
        time.sleep(0.2)
    t.event(
        "hog holds memory",
        hog_alive=not hog.poll(),
        meminfo={
            k: v for k, v in lg.meminfo().items() if k in ("MemFree", "MemAvailable", "CmaFree")
        },
    )
    res = t.task("faulter", _faulter, user=lg.OTHER_USER, timeout=60)
    hog_fate = "alive" if not hog.poll() else f"{hog.result.status} {hog.result.signal}"
    hog.kill()
    t.event(
        "faulter ended",
        status=res.status,
        signal=res.signal,
        seconds=res.seconds,
        hog=hog_fate,
        stats=lg.secretmem_stats(),
    )
    if res.status == "timeout":
        t.observe("fault_livelock", f"the faulter spun until killed; hog {hog_fate}", hog=hog_fate)
    elif res.sigbus:
        t.observe("sigbus", f"the faulter got SIGBUS; hog {hog_fate}", hog=hog_fate)
    elif res.signal == "SIGKILL":
        t.observe(
            "oom_kill", f"the faulter was killed; hog {hog_fate}", killed="faulter", hog=hog_fate
        )
    elif res.ok:
        t.observe(
            "oom_kill" if "SIGKILL" in hog_fate else "pass",
            f"the faulter finished; hog {hog_fate}",
            hog=hog_fate,
        )
    else:
        t.check(False, f"the faulter ended {res.status} {res.signal} {res.error}")
