"""RULES: the precedence table, in order, on one screen."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from lab.classify.findings import _Findings, _Verdict
from lab.classify.kernel_rules import _banner_mismatch, _integrity, _panic, _panic_before_userspace
from lab.classify.lab_rules import _harness_death, _harness_oom_panic, _precondition_failed
from lab.classify.run_rules import (
    _agent_error,
    _claim_unsupported,
    _deadline,
    _log_stopped,
    _no_result,
    _no_userspace,
    _orderly_end,
    _protocol_problems,
    _qemu_failed,
    _qemu_signaled,
    _sigbus,
    _task_timeout,
    _test_failed,
    _test_observed,
    _test_passed,
    _test_raised,
)
from lab.classify.victim_rules import _fault_livelock, _oom_kill


@dataclass(frozen=True)
class Rule:
    id: str
    outcome: str  # the class it yields ("<observed>" when the test case names it)
    text: str
    check: Callable[[_Findings], _Verdict | None] = field(repr=False, compare=False)


RULES: tuple[Rule, ...] = (
    Rule(
        "banner-mismatch",
        "infra_error",
        "The cell named a variant and the kernel's secretmem banner disagrees with it (or is "
        "missing although userspace ran): the results belong to the wrong kernel.",
        _banner_mismatch,
    ),
    Rule(
        "panic-before-userspace",
        "boot_failure",
        "The kernel panicked before userspace ran.",
        _panic_before_userspace,
    ),
    Rule(
        "harness-oom-panic",
        "infra_error",
        "The kernel panicked with no killable task ('System is deadlocked on memory') and "
        "the last OOM invocation ran in a harness or the agent (oom_score_adj -1000), or in "
        "a workload task the kernel shows at -1000 although its spawn record says otherwise: "
        "the lab left the OOM killer nothing to kill.",
        _harness_oom_panic,
    ),
    Rule("panic", "panic", "The kernel panicked (reason = the rest of the panic line).", _panic),
    Rule(
        "bug",
        "bug",
        "A kernel BUG-class report (BUG:, kernel BUG at, Bad page state, hung "
        "task, soft lockup, RCU stall, KASAN, page dump).",
        _integrity("bug"),
    ),
    Rule(
        "oops",
        "oops",
        "A kernel oops (page fault in the kernel, GPF, die header).",
        _integrity("oops"),
    ),
    Rule("warn", "warn", "A kernel WARNING.", _integrity("warn")),
    Rule(
        "harness-death",
        "infra_error",
        "The harness (a test-case process) or the agent died: its task record says "
        "signaled, the agent sent an error of kind harness, or a kernel 'Killed process' "
        "names its pid. It is not part of the scenario: the run measured nothing.",
        _harness_death,
    ),
    Rule(
        "precondition-failed",
        "infra_error",
        "A precondition of the scenario did not hold (a precondition record with ok false, "
        "an error of kind precondition): the scenario did not happen.",
        _precondition_failed,
    ),
    Rule(
        "oom-kill",
        "oom_kill",
        "The OOM killer killed a process. When the records name a victim: the victim was "
        "OOM-killed, or its own allocation invoked the OOM killer that killed some task.",
        _oom_kill,
    ),
    Rule(
        "fault-livelock",
        "fault_livelock",
        "'Huh VM_FAULT_OOM leaked out' lines, no OOM kill, and the task spun: a deadline "
        "expired or a task timed out (for a foreign log: the rate limit suppressed lines or "
        "the log stops). When the records name a victim: its watchdog killed it and the "
        "Huh lines fall inside its run.",
        _fault_livelock,
    ),
    Rule("deadline", "hang", "A lab deadline expired with no kernel evidence above.", _deadline),
    Rule(
        "qemu-failed",
        "infra_error",
        "QEMU exited before the kernel printed anything.",
        _qemu_failed,
    ),
    Rule(
        "qemu-signaled",
        "infra_error",
        "QEMU died of a signal the lab did not send (no deadline, no 'done' record): "
        "killed from outside or crashed.",
        _qemu_signaled,
    ),
    Rule(
        "no-userspace",
        "boot_failure",
        "QEMU exited before the ready marker, with no panic.",
        _no_userspace,
    ),
    Rule("agent-error", "infra_error", "The agent sent an error record.", _agent_error),
    Rule(
        "protocol-problems",
        "infra_error",
        "The result channel had protocol problems (malformed or oversized records).",
        _protocol_problems,
    ),
    Rule("test-raised", "fail", "A test case raised an exception.", _test_raised),
    Rule(
        "task-timeout",
        "hang",
        "A test case overran its timeout (the agent killed it), or its own watchdog had to "
        "kill a task; and no Huh lines.",
        _task_timeout,
    ),
    Rule(
        "sigbus",
        "sigbus",
        "A task got SIGBUS: a task record, the test case's observation, or the kernel's "
        "'potentially unexpected fatal signal 7.'",
        _sigbus,
    ),
    Rule("test-failed", "fail", "A test assertion failed.", _test_failed),
    Rule(
        "test-observed",
        "<observed>",
        "The test case passed and names what it observed (a class other than pass) with "
        "the evidence for it: refused, fail, sigbus with a task that died of it, a kernel "
        "class with stamped kernel lines for the task it is about.",
        _test_observed,
    ),
    Rule(
        "claim-unsupported",
        "infra_error",
        "A test case named a class without that evidence, and the task it is about did "
        "not return (else its return is the outcome: test-passed).",
        _claim_unsupported,
    ),
    Rule("test-passed", "pass", "Every test case passed.", _test_passed),
    Rule(
        "no-result",
        "infra_error",
        "The lab ran the guest but the agent reported no result.",
        _no_result,
    ),
    Rule(
        "orderly-end",
        "pass",
        "Foreign log: it ends with the kernel's restart or power-down line.",
        _orderly_end,
    ),
    Rule(
        "log-stopped",
        "hang",
        "Foreign log: it stops without that line and without other evidence.",
        _log_stopped,
    ),
)
