"""lkdtm_exception: LKDTM EXCEPTION: a write through a NULL pointer.

Predictions (written before any run, from the kernel code; the guest runs with
panic=-1 and nothing else: panic_on_oops=0, panic_on_warn=0, no *_panic sysctls):

lkdtm_EXCEPTION() stores to *(volatile int *)0. Without KASAN the store faults:
x86_64 `BUG: kernel NULL pointer dereference, address: 0000000000000000` +
`#PF: supervisor write access in kernel mode` + `Oops: 0002 [#1]`; arm64
`Unable to handle kernel NULL pointer dereference at virtual address 0...` +
`Internal error: Oops: ... [#1]`. Both are the fault path into die(): oops
(docs/outcomes.md, page_fault/arm64_fault). UBSAN (bounds/shift/bool/enum) has no
null check and lockdep no part in it: oops there too.
KASAN (generic, outline): the store is instrumented, __asan_store4(0) finds no shadow
for address 0 (addr_has_metadata() is false) and kasan_report() prints
`BUG: KASAN: null-ptr-deref in lkdtm_EXCEPTION` (mm/kasan/report.c get_wild_bug_type:
addr < PAGE_SIZE) BEFORE the store faults and oopses; bug outranks oops: bug.
(With KASAN_INLINE on x86_64 it would be a GPF on the shadow of NULL instead: oops;
the family uses outline, Kconfig's default.)
"""

import labguest as lg

TESTCASE = {
    "name": "lkdtm_exception",
    "purpose": "LKDTM EXCEPTION: a write through a NULL pointer",
    "families": ["lkdtm"],
    "timeout": 60,
    "destructive": True,
    "expect": [
        "debug=kasan -> bug",
        "* -> oops",
    ],
}


def run(t: lg.Context) -> None:
    lg.lkdtm_provoke(t, "EXCEPTION", expect_signal="SIGSEGV")
