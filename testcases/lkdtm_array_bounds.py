"""lkdtm_array_bounds: LKDTM ARRAY_BOUNDS: index one past a char[8] member.

Predictions (written before any run, from the kernel code; the guest runs with
panic=-1 and nothing else: panic_on_oops=0, panic_on_warn=0, no *_panic sysctls):

lkdtm_ARRAY_BOUNDS() writes data[8] of a char data[8] member (still inside the
kmalloc'd struct, into the following int). UBSAN_BOUNDS with gcc is -fsanitize=bounds
(UBSAN_ONLY_BOUNDS): `UBSAN: array-index-out-of-bounds in drivers/misc/lkdtm/bugs.c:349`
`index 8 is out of range for type 'char [8]'`, and the code goes on (no UBSAN_TRAP):
warn. KASAN sees an in-bounds heap write (the struct is 2 x 24 bytes, all
allocated): nothing; plain and lockdep have no check: pass (= nothing detected;
LKDTM prints `FAIL: survived array bounds overflow!`, a pr_err, no report).
"""

import labguest as lg

TESTCASE = {
    "name": "lkdtm_array_bounds",
    "purpose": "LKDTM ARRAY_BOUNDS: index one past a char[8] member",
    "families": ["lkdtm"],
    "timeout": 60,
    "destructive": True,
    "expect": [
        "debug=ubsan -> warn",
        "* -> pass",
    ],
}


def run(t: lg.Context) -> None:
    lg.lkdtm_provoke(t, "ARRAY_BOUNDS")
