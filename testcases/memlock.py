"""memlock: secretmem memory is held against RLIMIT_MEMLOCK, by the variant's scheme.

Two schemes (docs/variants.md, memlock): the base tree (6.1.192) charges each resident
page to the creating user's locked_vm at fault time, SIGBUS over the limit, and
CAP_IPC_LOCK does not exempt; v16 (and mainline 5.14-6.1) made the mapping VM_LOCKED
after mlock_future_check() at mmap: EAGAIN over the limit, per mm, CAP_IPC_LOCK exempt.
"""

import ctypes
import mmap
import os
import resource

import labguest as lg

TESTCASE = {
    "name": "memlock",
    "purpose": "with RLIMIT_MEMLOCK = 16 pages, uid 1000's 17th resident secret page (summed "
    "over its files) gets SIGBUS, or mmap of its second 12-page file is refused (EAGAIN, "
    "v16's scheme), or ftruncate refuses the size when the variant reserves at size-set; "
    "root (CAP_IPC_LOCK) is exempt only under v16's scheme; mlock() of the region fails",
    "arches": ["*"],
    "families": ["secretmem"],  # the secretmem series: meaningless on other families
    "timeout": 90,
    "expect": [
        # v16's scheme (issue 11, F4; written before the run): mmap of the second
        # 12-page file would take mm->locked_vm to 24 > 16 pages: EAGAIN.
        "memlock=v16 -> refused",
        "reserve=true -> refused",
        "charge=chunk -> sigbus",
        "* -> sigbus",
    ],
}

LIMIT_PAGES = 16
FILE_PAGES = 12  # two files of 12 pages: the limit is crossed inside the second


PROGRESS = "/tmp/memlock-progress"
ROOT_PROGRESS = "/tmp/memlock-root-progress"


def _fill(progress: str) -> dict[str, object]:
    """Two files of the same user; report where the budget ran out."""
    touched = 0
    held = []  # an unmapped file is released, and release returns its charge
    for n in range(2):
        fd = lg.memfd_secret()
        step = "ftruncate"
        try:
            os.ftruncate(fd, FILE_PAGES * lg.PAGE)
            step = "mmap"
            m = mmap.mmap(
                fd,
                FILE_PAGES * lg.PAGE,
                flags=mmap.MAP_SHARED,
                prot=mmap.PROT_READ | mmap.PROT_WRITE,
            )
        except OSError as exc:
            return {
                "refused": f"{step} of file {n + 1}: {lg.errno_name(exc.errno)}",
                "step": step,
                "touched": touched,
            }
        os.close(fd)
        held.append(m)
        for i in range(FILE_PAGES):
            # Tell the parent how far we got before each fault: SIGBUS kills us mid-loop.
            with open(progress, "w") as f:
                f.write(str(touched))
            m[i * lg.PAGE] = 1
            touched += 1
    return {"touched": touched}


def _progress(path: str) -> int:
    try:
        with open(path) as f:
            return int(f.read() or 0)
    except (OSError, ValueError):
        return -1


def _mlock_region() -> str:
    fd = lg.memfd_secret()
    os.ftruncate(fd, lg.PAGE)
    addr = lg.raw_mmap(fd, lg.PAGE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED)
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.mlock(ctypes.c_void_p(addr), lg.PAGE)
    return "ok" if rc == 0 else lg.errno_name(ctypes.get_errno())


def run(t: lg.Context) -> None:
    limit = LIMIT_PAGES * lg.PAGE
    v16 = t.params.get("memlock") == "v16"
    res = t.task(
        "filler",
        _fill,
        PROGRESS,
        role="victim",
        user=lg.UNPRIVILEGED,
        memlock=limit,
        timeout=60,
        expect_signal="SIGBUS",
    )
    progress = _progress(PROGRESS)
    if res.ok and isinstance(res.value, dict) and "refused" in res.value:
        if v16:
            # v16: the first file fits (12 <= 16 pages), the second mapping does not
            t.check(
                res.value.get("step") == "mmap" and res.value.get("touched") == FILE_PAGES,
                f"v16's scheme refuses the second mmap after {FILE_PAGES} pages, "
                f"got {res.value['refused']} after {res.value.get('touched')} pages",
            )
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
    # The same fill as root, which has CAP_IPC_LOCK: mlock_future_check() exempts it
    # (v16); the base tree's per-user charge has no capability test.
    root = t.task(
        "root-filler",
        _fill,
        ROOT_PROGRESS,
        role="probe",
        memlock=limit,
        timeout=60,
        expect_signal=None if v16 else "SIGBUS",
    )
    value = root.value if isinstance(root.value, dict) else {}
    completed = root.ok and value.get("touched") == 2 * FILE_PAGES
    t.event(
        "CAP_IPC_LOCK task with the same RLIMIT_MEMLOCK",
        status=root.status,
        signal=root.signal,
        refused=value.get("refused"),
        touched=value.get("touched", _progress(ROOT_PROGRESS)),
        exempt=completed,
    )
    if v16:
        t.check(
            completed,
            f"CAP_IPC_LOCK exempts under v16's scheme: root stopped "
            f"({root.status} {root.signal} {value.get('refused')})",
        )
    else:
        t.check(not completed, "the base tree's per-user charge does not exempt CAP_IPC_LOCK")
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
