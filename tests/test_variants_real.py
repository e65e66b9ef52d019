"""The secretmem variants in real guests: banner, CMA reservation, counters. Slow tier."""

from __future__ import annotations

import pytest
from realtools import lab

pytestmark = pytest.mark.real

TOUCH = (
    "import ctypes, mmap, os; libc = ctypes.CDLL(None, use_errno=True); "
    "fd = libc.syscall(447, 0); "
    "print('memfd_secret', fd if fd >= 0 else os.strerror(ctypes.get_errno())); "
    "os.ftruncate(fd, 16384) if fd >= 0 else None; "
    "m = mmap.mmap(fd, 16384) if fd >= 0 else None; "
    "m and m.__setitem__(0, 1); m and print('touched', m[0])"
)
SCRIPT = (
    "grep -E '^Cma(Total|Free)' /proc/meminfo; "
    "dmesg | grep -E 'secretmem: (lab variant|reserved)'; "
    f'python3 -c "{TOUCH}"; '
    "for c in chunks_cma pool_pages pool_free; do "
    "echo $c=$(cat /sys/kernel/debug/secretmem/$c); done"
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
    assert "chunks_cma=1" in out and "pool_pages=512" in out and "pool_free=511" in out


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_cma_variant_without_an_area_refuses_memfd_secret(arch: str) -> None:
    # `secretmem=0` after the variant's `secretmem=64M`: the last one wins, no area.
    p = lab("boot", "--arch", arch, "--variant", "C0", "--append", "secretmem=0",
            "--exec", SCRIPT)
    assert p.returncode == 0, p.stderr[-2000:]
    print(p.stdout)
    assert "memfd_secret Cannot allocate memory" in p.stdout  # ENOMEM, as v16 did
    assert "secretmem: reserved" not in p.stdout
