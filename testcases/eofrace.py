"""eofrace: two faults race on the last page of a 512-page (one chunk) secret file.

Issue 11, F7: the reservation (R0) holds exactly the pages below i_size, but two
faults on one offset both take a page before the loser of the page-cache insertion
(-EEXIST) gives its page back; at the end of a file whose page count is a multiple of
512 the loser found the pool empty (WARN_ON_ONCE, VM_FAULT_OOM). Each round maps a
fresh 512-page file, faults pages 0..510, then two threads block in read() on their
own pipe with the last page as the buffer: one write to each pipe wakes them at
nearly the same time, and both copy_to_user() faults hit the same offset. The
kernel counters insert_races / reserve_waits say how often the race was won.
"""

import ctypes
import mmap
import os
import resource
import threading
import time

import labguest as lg

TESTCASE = {
    "name": "eofrace",
    "purpose": "repeatedly, two threads fault the last page of a fresh 512-page secret file "
    "at once; every read lands, no kernel warning, no spurious VM_FAULT_OOM or SIGBUS",
    "arches": ["*"],
    "families": ["secretmem"],  # the secretmem series: meaningless on other families
    "timeout": 150,
    "expect": ["* -> pass"],
}

PAGES = 512
ROUNDS = 1500
BUDGET = 50.0  # seconds of racing at most (TCG speed varies by arch and load)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.read.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
_libc.read.restype = ctypes.c_ssize_t
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def _round(value: int) -> list[str]:
    fd = lg.memfd_secret()
    os.ftruncate(fd, PAGES * lg.PAGE)
    addr = lg.raw_mmap(fd, PAGES * lg.PAGE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED)
    os.close(fd)
    errors: list[str] = []
    try:
        ctypes.memset(addr, 1, (PAGES - 1) * lg.PAGE)  # pages 0..510, one fault each
        last = addr + (PAGES - 1) * lg.PAGE
        pipes = [os.pipe(), os.pipe()]
        ready = threading.Barrier(3)

        def reader(n: int) -> None:
            ready.wait()
            # blocks with the GIL released; the wakeup's copy_to_user faults `last`
            got = _libc.read(pipes[n][0], last + n, 1)
            if got != 1:
                err = lg.errno_name(ctypes.get_errno())
                errors.append(f"thread {n}: read returned {got} ({err})")

        threads = [threading.Thread(target=reader, args=(n,)) for n in range(2)]
        for th in threads:
            th.start()
        ready.wait()
        time.sleep(0.002)  # both are asleep in pipe_read()
        os.write(pipes[0][1], bytes([value]))
        os.write(pipes[1][1], bytes([value]))
        for th in threads:
            th.join(20)
            if th.is_alive():
                errors.append("a reader did not return within 20 s")
        for r, w in pipes:
            os.close(r)
            os.close(w)
        got = (lg.peek(last), lg.peek(last + 1))
        if not errors and got != (value, value):
            errors.append(f"last page holds {got}, expected {value}")
    finally:
        _libc.munmap(addr, PAGES * lg.PAGE)
    return errors


def _racer() -> dict[str, object]:
    started = time.monotonic()
    errors: list[str] = []
    rounds = 0
    while rounds < ROUNDS and time.monotonic() - started < BUDGET:
        errors += [f"round {rounds}: {e}" for e in _round(rounds % 250 + 1)]
        rounds += 1
        if len(errors) > 5:
            break
    return {"rounds": rounds, "errors": errors, "seconds": round(time.monotonic() - started, 1)}


def run(t: lg.Context) -> None:
    before = lg.secretmem_stats()
    res = t.task(
        "racer",
        _racer,
        role="worker",
        user=lg.UNPRIVILEGED,
        memlock=resource.RLIM_INFINITY,  # 512 pages per file, whatever the scheme
        timeout=120,
    )
    after = lg.secretmem_stats()
    keys = ("insert_races", "reserve_waits", "chunks_leaked", "chunks_freed")
    races = {k: after.get(k, 0) - before.get(k, 0) for k in keys}
    taken = sum(after.get(k, 0) - before.get(k, 0) for k in ("chunks_cma", "chunks_buddy"))
    value = res.value if isinstance(res.value, dict) else {}
    t.event(
        "end-of-file races",
        rounds=value.get("rounds"),
        seconds=value.get("seconds"),
        **races,
        fault_oom=after.get("fault_oom", 0) - before.get("fault_oom", 0),
        fault_sigbus=after.get("fault_sigbus", 0) - before.get("fault_sigbus", 0),
        chunks_taken=taken,
    )
    t.check(res.ok, f"racer ended: {res.status} {res.signal} {res.error}")
    errors = value.get("errors") or []
    t.check(not errors, f"{len(errors)} failed rounds: {'; '.join(errors[:3])}")
    # every file was unmapped and closed: each chunk taken went back, none leaked
    t.check(races["chunks_leaked"] == 0, f"{races['chunks_leaked']} chunks leaked")
    t.check(
        races["chunks_freed"] == taken,
        f"{taken} chunks taken but {races['chunks_freed']} given back",
    )
    t.observe(
        "pass",
        f"{value.get('rounds')} rounds, insert races {races['insert_races']}, "
        f"reserve waits {races['reserve_waits']}",
    )
