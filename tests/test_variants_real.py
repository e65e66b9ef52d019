"""The secretmem variants in real guests: banner, CMA reservation, counters. Slow tier."""

from __future__ import annotations

import pytest
from realtools import lab

pytestmark = pytest.mark.real

# Runs in the guest: one secret page, and what the kernel says while it is mapped
# (closing the file tears the pool down, so the counters must be read before exit).
TOUCH = (
    "import ctypes, mmap, os; libc = ctypes.CDLL(None, use_errno=True); "
    "fd = libc.syscall(447, 0); "
    "print('memfd_secret', fd if fd >= 0 else os.strerror(ctypes.get_errno())); "
    "os.ftruncate(fd, 16384) if fd >= 0 else None; "
    "m = mmap.mmap(fd, 16384) if fd >= 0 else None; "
    "m and m.__setitem__(0, 1); m and print('touched', m[0]); "
    "d = '/sys/kernel/debug/secretmem/'; "
    "[print(c + '=' + open(d + c).read().strip()) for c in "
    "('chunks_cma', 'pool_pages', 'pool_free')]; "
    "[print(line.strip()) for line in open('/proc/meminfo') if line.startswith('CmaFree')]"
)
SCRIPT = (
    "grep -E '^Cma(Total|Free)' /proc/meminfo; "
    "dmesg | grep -E 'secretmem: (lab variant|reserved)'; "
    f'python3 -c "{TOUCH}"'
)


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_cma_variant_reserves_and_hands_out_pages(arch: str) -> None:
    p = lab("boot", "--arch", arch, "--variant", "C0", "--exec", SCRIPT)
    assert p.returncode == 0, p.stderr[-2000:]
    out = p.stdout
    print(out)
    assert "CmaTotal:          65536 kB" in out
    assert "secretmem: lab variant pool=cma fallback=0 reserve=0 fault=oom" in out
    assert "secretmem: reserved 64 MiB CMA" in out
    assert "touched 1" in out
    # one touched page took a whole PMD chunk out of the CMA area
    assert "chunks_cma=1" in out and "pool_pages=512" in out and "pool_free=511" in out
    assert "CmaFree:           63488 kB" in out


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_cma_variant_without_an_area_refuses_memfd_secret(arch: str) -> None:
    # `secretmem=0` after the variant's `secretmem=64M`: the last one wins, no area.
    p = lab("boot", "--arch", arch, "--variant", "C0", "--append", "secretmem=0",
            "--exec", SCRIPT)
    assert p.returncode == 0, p.stderr[-2000:]
    print(p.stdout)
    assert "memfd_secret Cannot allocate memory" in p.stdout  # ENOMEM, as v16 did
    assert "secretmem: reserved" not in p.stdout
