"""lkdtm_hung_task: LKDTM HUNG_TASK: sleep uninterruptibly forever.

Predictions (written before any run, from the kernel code; the guest runs with
panic=-1 and nothing else: panic_on_oops=0, panic_on_warn=0, no *_panic sysctls):

lkdtm_HUNG_TASK() sets TASK_UNINTERRUPTIBLE and schedule()s with no waker: the probe
sits in D state forever. Only the lockdep config has DETECT_HUNG_TASK, with
DEFAULT_HUNG_TASK_TIMEOUT=10: khungtaskd prints `INFO: task python3:N blocked for more
than 10 seconds.` 10-20 s after (kernel/hung_task.c; hung_task_panic=0): bug.
plain/kasan/ubsan have no detector and a sleeping task stalls nothing else (no lock
anyone else wants, RCU unaffected): the kernel says nothing: pass (= nothing detected).
"""

import labguest as lg

TESTCASE = {
    "name": "lkdtm_hung_task",
    "purpose": "LKDTM HUNG_TASK: sleep uninterruptibly forever",
    "families": ["lkdtm"],
    "timeout": 120,
    "destructive": True,
    "expect": [
        "debug=lockdep -> bug",
        "* -> pass",
    ],
}


def run(t: lg.Context) -> None:
    lg.lkdtm_provoke(t, "HUNG_TASK", settle=45)
