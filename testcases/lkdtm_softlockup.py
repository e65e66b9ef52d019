"""lkdtm_softlockup: LKDTM SOFTLOCKUP: spin with preemption disabled.

Predictions (written before any run, from the kernel code; the guest runs with
panic=-1 and nothing else: panic_on_oops=0, panic_on_warn=0, no *_panic sysctls):

lkdtm_SOFTLOCKUP() spins forever with preemption disabled; interrupts stay on, so
the stuck CPU still takes its scheduler tick (HZ_PERIODIC, HZ=250).
lockdep config (SOFTLOCKUP_DETECTOR, watchdog_thresh 10): `watchdog: BUG: soft lockup
- CPU#1 stuck for 2Xs!` after 2*watchdog_thresh = 20 s (kernel/watchdog.c).
Every config: TREE_RCU (SMP, PREEMPT_NONE) with RCU_CPU_STALL_TIMEOUT=21: the stuck CPU
never passes a quiescent state, the harness keeps a grace period pending, and the
tick on that CPU reports `rcu: INFO: rcu_sched self-detected stall on CPU` after
21 s (kernel/rcu/tree_stall.h). Both are bug-class, neither panics
(softlockup_panic=0, panic_on_rcu_stall=0): bug on every config (the title is the
soft lockup's or the RCU stall's, whichever the classifier takes first).
"""

import labguest as lg

TESTCASE = {
    "name": "lkdtm_softlockup",
    "purpose": "LKDTM SOFTLOCKUP: spin with preemption disabled",
    "families": ["lkdtm"],
    "timeout": 120,
    "destructive": True,
    "expect": [
        "* -> bug",
    ],
}


def run(t: lg.Context) -> None:
    lg.lkdtm_provoke(t, "SOFTLOCKUP", settle=60)
