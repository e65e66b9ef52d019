"""lkdtm_overflow_signed: LKDTM OVERFLOW_SIGNED: INT_MAX-2 + 5 in an int.

Predictions (written before any run, from the kernel code; the guest runs with
panic=-1 and nothing else: panic_on_oops=0, panic_on_warn=0, no *_panic sysctls):

The kernel builds with -fno-strict-overflow (Makefile), and 6.1's UBSAN has no
signed-overflow check (lib/Kconfig.ubsan and scripts/Makefile.ubsan: bounds, shift,
div-zero, unreachable, bool, enum, alignment; CONFIG_UBSAN_SIGNED_WRAP came in 6.8).
The addition wraps silently on every config of this family: pass (= nothing
detected). The cell documents that 6.1 cannot catch it.
"""

import labguest as lg

TESTCASE = {
    "name": "lkdtm_overflow_signed",
    "purpose": "LKDTM OVERFLOW_SIGNED: INT_MAX-2 + 5 in an int",
    "families": ["lkdtm"],
    "timeout": 60,
    "destructive": True,
    "expect": [
        "* -> pass",
    ],
}


def run(t: lg.Context) -> None:
    lg.lkdtm_provoke(t, "OVERFLOW_SIGNED")
