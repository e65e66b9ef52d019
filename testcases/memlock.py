"""memlock: secretmem pages are charged to the creating user's RLIMIT_MEMLOCK budget."""

import ctypes
import mmap
import os
import resource

import labguest as lg

TESTCASE = {
    "name": "memlock",
    "purpose": "with RLIMIT_MEMLOCK = 16 pages, uid 1000's 17th resident secret page (summed "
    "over its files) gets SIGBUS, or ftruncate refuses the size when the variant "
    "reserves at size-set; mlock() of the region fails",
    "arches": ["*"],
    "families": ["secretmem"],  # the secretmem series: meaningless on other families
    "timeout": 90,
    "expect": [
        "reserve=true -> refused",
        "charge=chunk -> sigbus",
        "* -> sigbus",
    ],
}

LIMIT_PAGES = 16
FILE_PAGES = 12  # two files of 12 pages: the limit is crossed inside the second


def _fill() -> dict[str, object]:
    """Two files of the same user; report where the budget ran out."""
    touched = 0
    held = []  # an unmapped file is released, and release returns its charge
    for n in range(2):
        fd = lg.memfd_secret()
        try:
            os.ftruncate(fd, FILE_PAGES * lg.PAGE)
        except OSError as exc:
            return {
                "refused": f"ftruncate of file {n + 1}: {lg.errno_name(exc.errno)}",
                "touched": touched,
            }
        m = mmap.mmap(
            fd, FILE_PAGES * lg.PAGE, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
        )
        os.close(fd)
        held.append(m)
        for i in range(FILE_PAGES):
            # Tell the parent how far we got before each fault: SIGBUS kills us mid-loop.
            with open("/tmp/memlock-progress", "w") as f:
                f.write(str(touched))
            m[i * lg.PAGE] = 1
            touched += 1
    return {"touched": touched}


def _mlock_region() -> str:
    fd = lg.memfd_secret()
    os.ftruncate(fd, lg.PAGE)
    addr = lg.raw_mmap(fd, lg.PAGE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED)
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.mlock(ctypes.c_void_p(addr), lg.PAGE)
    return "ok" if rc == 0 else lg.errno_name(ctypes.get_errno())


def run(t: lg.Context) -> None:
    limit = LIMIT_PAGES * lg.PAGE
    res = t.task(
        "filler",
        _fill,
        role="victim",
        user=lg.UNPRIVILEGED,
        memlock=limit,
        timeout=60,
        expect_signal="SIGBUS",
    )
    try:
        with open("/tmp/memlock-progress") as f:
            progress = int(f.read() or 0)
    except OSError:
        progress = -1
    if res.ok and isinstance(res.value, dict) and "refused" in res.value:
        t.observe(
            "refused",
            f"{res.value['refused']} after {res.value.get('touched')} pages",
            where=res.value["refused"],
            touched=res.value.get("touched"),
        )
    elif res.sigbus:
        t.event("SIGBUS at the budget", faulting_page=progress + 1, limit_pages=LIMIT_PAGES)
        if t.params.get("charge", "page") == "page" and not t.params.get("reserve"):
            t.check(
                progress == LIMIT_PAGES,
                f"SIGBUS on resident page {progress + 1}, expected page {LIMIT_PAGES + 1}",
            )
        t.observe(
            "sigbus",
            f"SIGBUS on resident page {progress + 1} with a {LIMIT_PAGES}-page RLIMIT_MEMLOCK",
            faulting_page=progress + 1,
            limit_pages=LIMIT_PAGES,
        )
    elif res.ok:
        t.observe("pass", "no limit was enforced", touched=(res.value or {}).get("touched"))
    else:
        t.check(False, f"filler ended unexpectedly: {res.status} {res.signal} {res.error}")
    ml = t.task(
        "mlock",
        _mlock_region,
        role="probe",
        user=lg.UNPRIVILEGED,
        memlock=resource.RLIM_INFINITY,
        timeout=30,
    )
    t.event("mlock() of a secret mapping", result=ml.value)
    t.check(ml.value == "ENOMEM", f"mlock of secretmem should fail with ENOMEM, got {ml.value}")
