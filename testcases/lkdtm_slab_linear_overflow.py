"""lkdtm_slab_linear_overflow: LKDTM SLAB_LINEAR_OVERFLOW: write 4 bytes past a kmalloc(1020).

Predictions (written before any run, from the kernel code; the guest runs with
panic=-1 and nothing else: panic_on_oops=0, panic_on_warn=0, no *_panic sysctls):

lkdtm_SLAB_LINEAR_OVERFLOW() writes a u32 at byte 1024 of a kmalloc(1020).
KASAN: bytes past 1020 are poisoned and generic KASAN gives kmalloc-1024 objects a
redzone: `BUG: KASAN: slab-out-of-bounds in lkdtm_SLAB_LINEAR_OVERFLOW`, Write of
size 4: bug. Elsewhere nothing checks the write (slub_debug is off at boot, the
free pointer of the next object is at its middle) and the next object's first word
is overwritten silently: pass (= nothing detected).
"""

import labguest as lg

TESTCASE = {
    "name": "lkdtm_slab_linear_overflow",
    "purpose": "LKDTM SLAB_LINEAR_OVERFLOW: write 4 bytes past a kmalloc(1020)",
    "families": ["lkdtm"],
    "timeout": 60,
    "destructive": True,
    "expect": [
        "debug=kasan -> bug",
        "* -> pass",
    ],
}


def run(t: lg.Context) -> None:
    lg.lkdtm_provoke(t, "SLAB_LINEAR_OVERFLOW")
