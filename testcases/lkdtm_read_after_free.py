"""lkdtm_read_after_free: LKDTM READ_AFTER_FREE: read a freed kmalloc-1024 object.

Predictions (written before any run, from the kernel code; the guest runs with
panic=-1 and nothing else: panic_on_oops=0, panic_on_warn=0, no *_panic sysctls):

lkdtm_READ_AFTER_FREE() kmallocs 1024 bytes, frees them and reads the int at index 4
(drivers/misc/lkdtm/heap.c). KASAN: the freed object is poisoned (and quarantined):
`BUG: KASAN: use-after-free in lkdtm_READ_AFTER_FREE`, Read of size 4, the task goes
on: bug. Elsewhere: SLUB keeps its free pointer mid-object (offset 512) and
init_on_free is off, so the read sees the old value and LKDTM prints only
`FAIL: Memory was not poisoned!` (pr_err, no report): pass (= nothing detected).
"""

import labguest as lg

TESTCASE = {
    "name": "lkdtm_read_after_free",
    "purpose": "LKDTM READ_AFTER_FREE: read a freed kmalloc-1024 object",
    "families": ["lkdtm"],
    "timeout": 60,
    "destructive": True,
    "expect": [
        "debug=kasan -> bug",
        "* -> pass",
    ],
}


def run(t: lg.Context) -> None:
    lg.lkdtm_provoke(t, "READ_AFTER_FREE")
