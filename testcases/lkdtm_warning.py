"""lkdtm_warning: LKDTM WARNING: WARN_ON(1).

Predictions (written before any run, from the kernel code; the guest runs with
panic=-1 and nothing else: panic_on_oops=0, panic_on_warn=0, no *_panic sysctls):

lkdtm_WARNING() is WARN_ON(++warn_counter): `WARNING: CPU: N PID: N at
drivers/misc/lkdtm/bugs.c:85 lkdtm_WARNING+...`, then the write returns. panic_on_warn
is 0 (no kernel.panic_on_warn on the command line, no sysctl), so nothing else
follows: warn on every config.
"""

import labguest as lg

TESTCASE = {
    "name": "lkdtm_warning",
    "purpose": "LKDTM WARNING: WARN_ON(1)",
    "families": ["lkdtm"],
    "timeout": 60,
    "destructive": True,
    "expect": [
        "* -> warn",
    ],
}


def run(t: lg.Context) -> None:
    lg.lkdtm_provoke(t, "WARNING")
