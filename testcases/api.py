"""api: memfd_secret's documented behaviour, and SIGBUS past the end of the file."""

import mmap
import os

import labguest as lg

TESTCASE = {
    "name": "api",
    "purpose": "create, ftruncate, mmap, write and read back; the documented EINVAL/EPERM "
    "cases; SIGBUS past the end of the file",
    "arches": ["*"],
    "families": ["secretmem"],  # the secretmem series: meaningless on other families
    "timeout": 60,
    "expect": ["* -> pass"],
}

PAGES = 16


def _beyond_eof() -> None:
    fd = lg.memfd_secret()
    os.ftruncate(fd, lg.PAGE)
    addr = lg.raw_mmap(fd, 2 * lg.PAGE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED)
    lg.poke(addr)  # inside the file: fine
    lg.poke(addr + lg.PAGE)  # past i_size: the fault handler returns VM_FAULT_SIGBUS


def run(t: lg.Context) -> None:
    fd = lg.memfd_secret()
    t.check(fd >= 0, "memfd_secret returned a descriptor")
    size = PAGES * lg.PAGE
    os.ftruncate(fd, size)
    m = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    pattern = bytes((i * 7 + 3) & 0xFF for i in range(size))
    m[:] = pattern
    t.check(m[:] == pattern, "read back what was written through the mapping")
    t.event("wrote and read back", pages=PAGES, meminfo_cached_kb=lg.meminfo().get("Cached"))

    t.expect_errno(lambda: os.read(fd, 1), "EINVAL", "read(2) on the fd")
    t.expect_errno(lambda: os.write(fd, b"x"), "EINVAL", "write(2) on the fd")
    t.expect_errno(lambda: os.ftruncate(fd, 2 * size), "EINVAL", "a second ftruncate")
    t.expect_errno(
        lambda: mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE),
        "EINVAL",
        "MAP_PRIVATE",
    )
    t.expect_errno(
        lambda: mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_EXEC),
        "EPERM",
        "PROT_EXEC (the secretmem mount is noexec)",
    )
    t.expect_errno(lambda: lg.memfd_secret(0x1), "EINVAL", "unknown flags")
    cloexec = lg.memfd_secret(os.O_CLOEXEC)
    t.check(cloexec >= 0, "O_CLOEXEC is accepted")

    beyond = t.task("beyond-eof", _beyond_eof, role="probe", timeout=20, expect_signal="SIGBUS")
    t.check(
        beyond.sigbus,
        f"a touch past i_size raises SIGBUS (got {beyond.status} "
        f"{beyond.signal or beyond.exit_code} {beyond.error or ''})",
    )
    m.close()
    os.close(fd)
    os.close(cloexec)
    t.observe("pass", stats=lg.secretmem_stats())
