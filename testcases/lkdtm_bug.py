"""lkdtm_bug: LKDTM BUG: BUG() in process context.

Predictions (written before any run, from the kernel code; the guest runs with
panic=-1 and nothing else: panic_on_oops=0, panic_on_warn=0, no *_panic sysctls):

lkdtm_BUG() is BUG() (drivers/misc/lkdtm/bugs.c). x86_64 prints `kernel BUG at
drivers/misc/lkdtm/bugs.c:78!` then the `invalid opcode: 0000 [#1]` die header; arm64
the same first line then `Internal error: Oops - BUG: ... [#1]`. panic_on_oops is 0
(tinyconfig: PANIC_ON_OOPS_VALUE=0; the lab's command line adds only panic=-1), so
the probe dies (make_task_dead(SIGSEGV)) and the guest goes on. `kernel BUG at` is
bug-class and bug outranks the oops header (docs/outcomes.md): bug on every config.
"""

import labguest as lg

TESTCASE = {
    "name": "lkdtm_bug",
    "purpose": "LKDTM BUG: BUG() in process context",
    "families": ["lkdtm"],
    "timeout": 60,
    "destructive": True,
    "expect": [
        "* -> bug",
    ],
}


def run(t: lg.Context) -> None:
    lg.lkdtm_provoke(t, "BUG", expect_signal="SIGSEGV")
