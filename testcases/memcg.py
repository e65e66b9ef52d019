"""memcg: a secret page fault whose memory cgroup charge fails, with nothing killable.

The spec's cleanest discriminator of the fault policy: cgroup v2 memory.max is reached,
the only task in the group has oom_score_adj -1000, so the memcg OOM killer finds no
victim and the charge fails with -ENOMEM. VM_FAULT_OOM then re-faults forever on 6.1
("Huh VM_FAULT_OOM leaked out to the #PF handler"); VM_FAULT_SIGBUS kills the task.
"""

import mmap
import os
import time

import labguest as lg

TESTCASE = {
    "name": "memcg",
    "purpose": "fault secret pages in a memory cgroup at its limit with nothing killable",
    "arches": ["*"],
    "families": ["secretmem"],  # the secretmem series: meaningless on other families
    "timeout": 120,
    "expect": [
        # era 5.11 (issue 10; docs/variants.md 7, written before any 5.11 run): the memcg
        # OOM killer finds no victim (oom_score_adj -1000), so try_charge() forces the
        # charge over memory.max: no fault fails, whatever the fault policy.
        "era=5.11 -> pass",
        # Issue 11, F5 (written before the run): SIGBUS replaces only the VM_FAULT_OOM
        # of an empty page source; the memcg charge fails at page-cache insertion,
        # which stays vmf_error(-ENOMEM) = VM_FAULT_OOM: the same livelock as C0.
        "fault=sigbus sigbus=nopage -> fault_livelock",
        "fault=oom -> fault_livelock",
        "fault=sigbus -> sigbus",
    ],
}

CG = "/sys/fs/cgroup/lab-memcg"
PAGES = 1024
READY, GO = "/tmp/memcg-ready", "/tmp/memcg-go"


def _faulter() -> dict[str, int]:
    fd = lg.memfd_secret()
    os.ftruncate(fd, PAGES * lg.PAGE)
    m = mmap.mmap(fd, PAGES * lg.PAGE, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    open(READY, "w").close()
    while not os.path.exists(GO):
        time.sleep(0.05)
    for i in range(PAGES):
        m[i * lg.PAGE] = 1
    return {"touched": PAGES}


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value + "\n")


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def run(t: lg.Context) -> None:
    for p in (READY, GO):
        if os.path.exists(p):
            os.unlink(p)
    _write("/sys/fs/cgroup/cgroup.subtree_control", "+memory")
    os.makedirs(CG, exist_ok=True)
    handle = t.spawn(
        "faulter", _faulter, role="victim", cgroup=CG, oom_score_adj=-1000, expect_signal=None
    )
    deadline = time.monotonic() + 30
    while not os.path.exists(READY):
        t.check(not handle.poll(), f"the faulter died while preparing: {handle.result}")
        t.check(time.monotonic() < deadline, "the faulter did not get ready")
        time.sleep(0.05)
    current = int(_read(f"{CG}/memory.current"))
    limit = current + 256 * 1024  # room for 64 secret pages, then the charge fails
    _write(f"{CG}/memory.max", str(limit))
    t.event("cgroup limit set", current=current, max=limit)
    # Each retry of the fault runs the memcg OOM path, whose report (memory.stat, task
    # list) is printed again every time: ~10 MB of KERN_INFO lines in 20 s, which a
    # TCG serial console pays for with guest time. Keep warnings and worse on the
    # console (the "Huh" and "no killable processes" lines); dmesg has the rest.
    with open("/proc/sys/kernel/printk") as f:
        printk = f.read().split()
    lg.sysctl("kernel.printk", f"5 {' '.join(printk[1:])}")
    open(GO, "w").close()
    try:
        res = handle.wait(10)  # a fault that has not finished in 10s is spinning
    finally:
        lg.sysctl("kernel.printk", " ".join(printk))
    events = _read(f"{CG}/memory.events")
    t.event(
        "faulter ended",
        status=res.status,
        signal=res.signal,
        seconds=res.seconds,
        memory_events=events,
    )
    if res.status == "timeout":
        t.observe(
            "fault_livelock",
            f"the faulter spun for {res.seconds:.0f}s at the cgroup limit until killed",
            seconds=res.seconds,
            memory_events=events,
        )
    elif res.sigbus:
        t.observe(
            "sigbus",
            "the faulter got SIGBUS at the cgroup limit",
            seconds=res.seconds,
            memory_events=events,
        )
    elif res.ok:
        t.observe("pass", "every fault succeeded despite the limit", memory_events=events)
    else:
        t.check(False, f"the faulter ended {res.status} {res.signal} {res.error}")
    _write(f"{CG}/memory.max", "max")
