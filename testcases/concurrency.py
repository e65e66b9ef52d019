"""concurrency: many threads and processes fault distinct secret pages at once."""

import mmap
import os
import threading

import labguest as lg

TESTCASE = {
    "name": "concurrency",
    "purpose": "8 threads fault distinct pages of one file while 4 processes fault their own "
    "files; every page holds what its writer wrote; no kernel warning",
    "arches": ["*"],
    "families": ["secretmem"],  # the secretmem series: meaningless on other families
    "timeout": 180,
    "expect": ["* -> pass"],
}

THREADS, PER_THREAD, PROCS, PER_PROC = 8, 64, 4, 256


def _threads() -> dict[str, int]:
    fd = lg.memfd_secret()
    os.ftruncate(fd, THREADS * PER_THREAD * lg.PAGE)
    m = mmap.mmap(
        fd,
        THREADS * PER_THREAD * lg.PAGE,
        flags=mmap.MAP_SHARED,
        prot=mmap.PROT_READ | mmap.PROT_WRITE,
    )
    barrier = threading.Barrier(THREADS)

    def work(n: int) -> None:
        barrier.wait()
        for i in range(PER_THREAD):
            # interleaved offsets: neighbouring pages belong to different threads
            m[(i * THREADS + n) * lg.PAGE] = n + 1

    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    bad = sum(1 for p in range(THREADS * PER_THREAD) if m[p * lg.PAGE] != p % THREADS + 1)
    return {"pages": THREADS * PER_THREAD, "bad": bad}


def _proc(n: int) -> dict[str, int]:
    fd = lg.memfd_secret()
    os.ftruncate(fd, PER_PROC * lg.PAGE)
    m = mmap.mmap(
        fd, PER_PROC * lg.PAGE, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
    )
    for i in range(PER_PROC):
        m[i * lg.PAGE] = (n * 31 + i) & 0xFF
    bad = sum(1 for i in range(PER_PROC) if m[i * lg.PAGE] != (n * 31 + i) & 0xFF)
    return {"pages": PER_PROC, "bad": bad}


def run(t: lg.Context) -> None:
    before = lg.secretmem_stats()
    procs = [
        t.spawn(f"proc{n}", _proc, n, role="worker", user=lg.UNPRIVILEGED) for n in range(PROCS)
    ]
    threaded = t.task("threads", _threads, role="worker", user=lg.UNPRIVILEGED, timeout=120)
    results = [h.wait(120) for h in procs]
    for r in [threaded, *results]:
        t.check(r.ok, f"{r.name} ended {r.status} {r.signal or r.exit_code} {r.error or ''}")
        t.check(
            isinstance(r.value, dict) and r.value.get("bad") == 0,
            f"{r.name}: pages with wrong contents: {r.value}",
        )
    t.observe("pass", before=before, after=lg.secretmem_stats(), tlb_shootdowns=_tlb_shootdowns())


def _tlb_shootdowns() -> int | None:
    try:
        with open("/proc/interrupts") as f:
            for line in f:
                if "TLB shootdowns" in line:
                    return sum(int(x) for x in line.split()[1:] if x.isdigit())
    except OSError:
        pass
    return None
