"""rlimit0: a task with RLIMIT_MEMLOCK = 0 that survives its SIGBUS pins no pool memory.

Issue 11, F3: pool faults used to take (and refill) a 2 MiB chunk before the
RLIMIT_MEMLOCK charge; when the charge failed the chunk stayed with the inode, so a
task at RLIMIT_MEMLOCK = 0 that caught the SIGBUS and kept its mappings pinned one
chunk per file. Here uid 1000 (limit 0) maps 64 one-page files and keeps every
mapping; a forked child touches each page and dies of the SIGBUS (the parent, which
holds the mappings, is the task that "catches" it). Neither CmaFree nor the pools'
chunk counters may move.
"""

import json
import mmap
import os
import time

import labguest as lg

TESTCASE = {
    "name": "rlimit0",
    "purpose": "uid 1000 with RLIMIT_MEMLOCK = 0 maps 64 one-page secret files and keeps "
    "them; a child touching each gets SIGBUS (or the mmap/ftruncate is refused); CmaFree "
    "and the pools' chunk counters are unchanged afterwards",
    "arches": ["*"],
    "families": ["secretmem"],  # the secretmem series: meaningless on other families
    "timeout": 150,
    "expect": [
        # Written before the run (issue 11): v16's scheme refuses the mapping itself
        # (mlock_future_check: 1 page > 0), a reservation refuses the size (EAGAIN);
        # every other variant charges before it takes a page and raises SIGBUS.
        "memlock=v16 -> refused",
        "reserve=true -> refused",
        "* -> sigbus",
    ],
}

FILES = 64
CHILD_TIMEOUT = 5.0  # a fault that spins (VM_FAULT_OOM) instead of failing


def _child_touch(addr: int) -> str:
    """Fork a child that touches addr; how it ended: sigbus | ok | spin | other."""
    pid = os.fork()
    if pid == 0:
        try:
            lg.poke(addr)
        finally:
            os._exit(0)
    deadline = time.monotonic() + CHILD_TIMEOUT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return "spin"
        time.sleep(0.01)
    if os.WIFSIGNALED(status):
        return "sigbus" if os.WTERMSIG(status) == 7 else f"signal {os.WTERMSIG(status)}"
    return "ok" if os.WEXITSTATUS(status) == 0 else f"exit {os.WEXITSTATUS(status)}"


def _hoarder(report: str, go: str) -> None:
    maps: list[int] = []
    ends: dict[str, int] = {}
    result: dict[str, object] = {}
    for n in range(FILES):
        step = "memfd_secret"
        try:
            fd = lg.memfd_secret()
            step = "ftruncate"
            os.ftruncate(fd, lg.PAGE)
            step = "mmap"
            addr = lg.raw_mmap(fd, lg.PAGE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED)
        except OSError as exc:
            refused = f"{step} of file {n + 1}: {lg.errno_name(exc.errno)}"
            result = {"refused": refused, "step": step}
            break
        os.close(fd)  # the mapping keeps the file, and with it the inode's pool
        maps.append(addr)
        end = _child_touch(addr)
        ends[end] = ends.get(end, 0) + 1
        if end == "spin":
            break  # one spinning fault says it all; the rest would spin too
    result.update({"files": len(maps), "children": ends})
    with open(report + ".tmp", "w") as f:
        json.dump(result, f)
    os.rename(report + ".tmp", report)
    # Keep every mapping until the harness has read the counters; then, if it says so,
    # take the SIGBUS ourselves: the outcome is a recorded task's SIGBUS, and only
    # once the limit was seen to hold.
    while not os.path.exists(go):
        time.sleep(0.1)
    if maps:
        lg.poke(maps[0])


def _chunks(stats: dict[str, int]) -> int:
    return stats.get("chunks_cma", 0) + stats.get("chunks_buddy", 0)


def _print_fatal_signals(value: str | None) -> str | None:
    path = "/proc/sys/kernel/print-fatal-signals"
    try:
        with open(path) as f:
            old = f.read().strip()
        if value is not None:
            with open(path, "w") as f:
                f.write(value)
        return old
    except OSError:
        return None


def run(t: lg.Context) -> None:
    report, go = "/tmp/rlimit0.json", "/tmp/rlimit0.go"
    for path in (report, go):
        if os.path.exists(path):
            os.unlink(path)
    before_mi, before = lg.meminfo(), lg.secretmem_stats()
    # The 64 children's SIGBUS are the means, not the outcome: keep their
    # print-fatal-signals lines off the console, so that they cannot stand for the
    # outcome while the counters say the limit did not hold.
    saved = _print_fatal_signals("0")
    try:
        hoarder = t.spawn(
            "hoarder",
            _hoarder,
            report,
            go,
            role="victim",
            user=lg.UNPRIVILEGED,
            memlock=0,
            expect_signal="SIGBUS",
        )
        deadline = time.monotonic() + FILES * CHILD_TIMEOUT + 20
        while not os.path.exists(report):
            t.check(not hoarder.poll(), f"the hoarder died: {hoarder.result}")
            t.check(time.monotonic() < deadline, "the hoarder did not finish")
            time.sleep(0.1)
    finally:
        if saved is not None:
            _print_fatal_signals(saved)
    with open(report) as f:
        value = json.load(f)
    after_mi, after = lg.meminfo(), lg.secretmem_stats()  # the mappings are still held
    t.require(
        value.get("step") != "memfd_secret",
        "secretmem_available",
        f"the hoarder could create a secret file ({value.get('refused')})",
    )
    cma = (before_mi.get("CmaFree"), after_mi.get("CmaFree"))
    chunks = _chunks(after) - _chunks(before)
    children = value.get("children") or {}
    t.event(
        "pool memory held by a RLIMIT_MEMLOCK=0 task that survived its faults",
        cma_free_kb_before=cma[0],
        cma_free_kb_after=cma[1],
        chunks_taken=chunks,
        files=value.get("files"),
        children=children,
    )
    if children.get("spin"):
        hoarder.kill()
        t.observe(
            "fault_livelock",
            f"{children['spin']} of {value.get('files')} faults spun until killed",
            children=children,
        )
        return
    ok = chunks == 0 and cma[0] == cma[1]
    if not ok:
        hoarder.kill()
    t.check(chunks == 0, f"{chunks} pool chunks taken by a task with RLIMIT_MEMLOCK=0")
    t.check(cma[0] == cma[1], f"CmaFree moved from {cma[0]} to {cma[1]} kB")
    if "refused" in value:
        hoarder.kill()
        t.observe("refused", f"{value['refused']} (RLIMIT_MEMLOCK=0)", where=value["refused"])
        return
    t.check(
        children.get("sigbus") == FILES,
        f"every touch should get SIGBUS at RLIMIT_MEMLOCK=0, got {children}",
    )
    with open(go, "w") as f:
        f.write("touch")
    res = hoarder.wait(30)
    t.check(res.sigbus, f"the hoarder's own touch: {res.status} {res.signal}")
    t.observe(
        "sigbus",
        f"all {FILES} touches and the hoarder's own got SIGBUS; CmaFree {cma[1]} kB, "
        "no chunk taken",
        about=res,
    )
