"""lkdtm_overflow_unsigned: LKDTM OVERFLOW_UNSIGNED: UINT wrap-around.

Predictions (written before any run, from the kernel code; the guest runs with
panic=-1 and nothing else: panic_on_oops=0, panic_on_warn=0, no *_panic sysctls):

Unsigned wrap-around is defined C; no 6.1 sanitizer checks it (no
-fsanitize=unsigned-integer-overflow in scripts/Makefile.ubsan): pass on every config
(= nothing detected).
"""

import labguest as lg

TESTCASE = {
    "name": "lkdtm_overflow_unsigned",
    "purpose": "LKDTM OVERFLOW_UNSIGNED: UINT wrap-around",
    "families": ["lkdtm"],
    "timeout": 60,
    "destructive": True,
    "expect": [
        "* -> pass",
    ],
}


def run(t: lg.Context) -> None:
    lg.lkdtm_provoke(t, "OVERFLOW_UNSIGNED")
