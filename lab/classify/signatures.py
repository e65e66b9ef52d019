"""The kernel-log signature table: what a console line means, as data.

Each `Signature` names one kind of console line (a kernel message from the 6.1
tree, or one of the lab's own markers), the outcome class it points to, a regex
anchored at the start of the *message* (after the host and kernel timestamps and
any `<N>` level prefix are stripped, see `lab.classify.normalise`), the fields its
named groups extract, how many following lines belong to the report, and where the
line comes from. `lab.classify` decides the class from the matches with an explicit
precedence list; nothing here decides anything on its own.

Accepted format of an entry:
- `name`: stable id, used in evidence, in `Classification.matched` and in
  docs/outcomes.md (a test checks that every name is documented there).
- `outcome`: the class the line points to, or None for lines that only inform.
- `role`: "report" (decides `outcome` when its precedence rule is reached),
  "supporting" (points to `outcome` but decides only together with other facts,
  e.g. an "invoked oom-killer" line without a kill), "info" (never decides),
  "end" (the kernel's orderly restart or power-down), "marker" (lab markers and
  the start of userspace).
- `source`: kernel file:line in the 6.1.192 tree (spec section 3.8 where listed
  there), or the lab file that prints the line.
- `words`: the pattern in words, for the documentation table.
- `kernel`: the line comes from the kernel log (the default). In a lab cell such a
  line counts only with a printk stamp; see `lab.classify.findings`.

Order matters: a line takes the first entry whose pattern matches, so specific
entries come before catch-alls (e.g. `x86_page_fault_oops` before `kernel_bug_other`,
`panic_on_oom` before `kernel_panic`). Pure data: no I/O, no imports beyond `re`.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass
from typing import Literal

Role = Literal["report", "supporting", "info", "end", "marker"]
ROLES: tuple[Role, ...] = typing.get_args(Role)

# Named groups whose values are converted to int when a field is extracted.
INT_FIELDS = frozenset(
    {
        "pid",
        "uid",
        "cpu",
        "order",
        "oom_score_adj",
        "count",
        "pages",
        "ret",
        "err",
        "mib",
        "seconds",
        "signo",
        "die",
        "status",
    }
)


@dataclass(frozen=True)
class Context:
    """The lines after a matching line that belong to the same report.

    `lines`: at most this many following lines are evidence (0: none).
    `until`: the report ends at (and includes) the first following line whose
      message matches this (e.g. `---[ end trace`), if that comes earlier.
    `scan`: how many following lines to search with `fields` (may exceed `lines`).
    `fields`: regexes searched (not anchored) in those lines; the named groups of
      the first match of each become fields of the hit unless already set.
    """

    lines: int = 0
    until: re.Pattern[str] | None = None
    scan: int = 0
    fields: tuple[re.Pattern[str], ...] = ()


@dataclass(frozen=True)
class Signature:
    name: str
    outcome: str | None
    role: Role
    pattern: re.Pattern[str]
    source: str
    words: str
    context: Context | None = None
    # Printed by the kernel (printk), so a lab console shows it with a printk stamp;
    # False for lines from userspace (the lab's init) or QEMU. See lab.classify.
    kernel: bool = True
    # The report family (tests/data/foreign/README.md) and the title a CI bot would give
    # it: `{field}` placeholders from the hit's fields; ` in {func}` is dropped when the
    # report names no usable function. `func` says where the function comes from, in
    # order: "field" (the line's own `func` group), "hint" (an ODEBUG `hint:`), "at"
    # (lockdep's `at: fn+0x..` lines), "rip" (RIP/pc/IP/PC is at), "trace" (the first
    # call-trace frame after the report machinery), "inflight" (a workqueue's in-flight
    # work), "comm" (the task name). See lab.classify.title.
    family: str | None = None
    title: str | None = None
    func: tuple[str, ...] = ("rip", "trace")


def _re(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


# Every pattern must take linear time on one long line (a guest controls the console):
# no unbounded lazy or greedy run may be followed by something that rescans the rest of
# the line (`.*?\s*$`, `.+?\s+x`), and a field between two literals is bounded. A task
# name is at most 15 characters (TASK_COMM_LEN), printed as `%s`; other free text in
# the middle of a line (an OOM message, a CMA area name, a task/pid prefix) at most 128.
COMM = ".{1,64}"
COMM0 = ".{0,64}"
TEXT = ".{1,128}"
# A function name as %pS prints it (`name.cold+0x1f/0x30`; the offset is not part of it).
FUNC = r"[A-Za-z_][\w.$]{0,127}"


# The task line of dump_stack()/show_regs() (lib/dump_stack.c dump_stack_print_info).
_TASK_LINE = _re(r"CPU: (?P<cpu>\d+) PID: (?P<pid>\d+) Comm: (?P<comm>\S+)")
_END_TRACE = _re(r"---\[ end trace ")
_END_PANIC = _re(r"---\[ end Kernel panic - not syncing")
_UBSAN_END = _re(r"={20}")
# KASAN's access line (mm/kasan/report.c:219; `Read of size <n> by task` before 4.11,
# `Read at addr` for the tag-based modes).
_ACCESS = _re(r"^(?P<access>Read|Write) (?:of size|at addr)")
# The line after an old `UBSAN: Undefined behaviour in` header names the kind.
_UBSAN_KIND = _re(
    r"^(?P<ubsan_detail>index \S{1,64} is out of range|shift exponent|signed integer overflow|"
    r"load of value|division(?: of \S{1,64})? by zero|member access within|"
    r"(?:load|store) of (?:null pointer|misaligned address))"
)

PANIC_CONTEXT = Context(lines=14, until=_END_PANIC, scan=4, fields=(_TASK_LINE,))
OOPS_CONTEXT = Context(lines=24, until=_END_TRACE, scan=12, fields=(_TASK_LINE,))
BUG_CONTEXT = Context(lines=16, until=_END_TRACE, scan=12, fields=(_TASK_LINE,))
WARN_CONTEXT = Context(lines=14, until=_END_TRACE, scan=4, fields=(_TASK_LINE,))
TASK_CONTEXT = Context(lines=1, scan=3, fields=(_TASK_LINE,))
REGS_CONTEXT = Context(lines=0, scan=3, fields=(_TASK_LINE,))


SIGNATURES: tuple[Signature, ...] = (
    # --- panic --------------------------------------------------------------
    Signature(
        "panic_on_oom",
        "panic",
        "report",
        _re(
            r"Kernel panic - not syncing: (?P<reason>Out of memory: (?P<scope>.+?) "
            r"panic_on_oom is enabled)"
        ),
        "mm/oom_kill.c:1089, printed by kernel/panic.c:333",
        "`Kernel panic - not syncing: Out of memory: <scope> panic_on_oom is enabled`",
        PANIC_CONTEXT,
        family="panic",
        title="kernel panic: Out of memory: {scope} panic_on_oom is enabled",
        func=(),
    ),
    Signature(
        "oom_deadlock_panic",
        "panic",
        "report",
        _re(r"Kernel panic - not syncing: (?P<reason>System is deadlocked on memory)"),
        "mm/oom_kill.c:1181, printed by kernel/panic.c:333",
        "`Kernel panic - not syncing: System is deadlocked on memory` (global OOM with "
        "no killable task)",
        PANIC_CONTEXT,
        family="panic",
        title="kernel panic: System is deadlocked on memory",
        func=(),
    ),
    Signature(
        "stack_protector_panic",
        "panic",
        "report",
        _re(
            r"Kernel panic - not syncing: (?P<reason>stack-protector: Kernel stack is corrupted "
            rf"in: ?(?P<func>{FUNC})?)"
        ),
        "kernel/panic.c:767 (`__stack_chk_fail`), printed by kernel/panic.c:333",
        "`Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: <fn>`",
        PANIC_CONTEXT,
        family="stack_protector",
        title="kernel panic: stack-protector: Kernel stack is corrupted in {func}",
        func=("field",),
    ),
    Signature(
        "kernel_panic",
        "panic",
        "report",
        _re(r"Kernel panic - not syncing: ?(?P<reason>.*\S)?"),
        "kernel/panic.c:333",
        "`Kernel panic - not syncing: <reason>`; reason is the rest of the line "
        "(`Fatal exception` when an oops panicked; `corrupted stack end detected inside "
        "scheduler` from kernel/sched/core.c:5816; `<origin>: panic_on_warn set ...` from "
        "kernel/panic.c:235 after a WARN, KASAN, UBSAN, ...)",
        PANIC_CONTEXT,
        family="panic",
        title="kernel panic: {reason}",
        func=(),
    ),
    # --- oops ---------------------------------------------------------------
    Signature(
        "x86_page_fault_oops",
        "oops",
        "report",
        _re(r"BUG: unable to handle page fault for address: (?P<address>\S+)"),
        "arch/x86/mm/fault.c:557 (+ `#PF: error_code(...)` :566-567)",
        "`BUG: unable to handle page fault for address: <addr>`",
        OOPS_CONTEXT,
        family="page_fault",
        title="BUG: unable to handle page fault in {func}",
    ),
    Signature(
        "x86_null_deref_oops",
        "oops",
        "report",
        _re(r"BUG: kernel NULL pointer dereference, address: (?P<address>\S+)"),
        "arch/x86/mm/fault.c:554",
        "`BUG: kernel NULL pointer dereference, address: <addr>`",
        OOPS_CONTEXT,
        family="page_fault",
        title="BUG: unable to handle kernel NULL pointer dereference in {func}",
    ),
    Signature(
        "x86_page_fault_old",
        "oops",
        "report",
        _re(
            r"BUG: unable to handle kernel (?P<what>paging request|NULL pointer dereference) "
            r"at (?P<address>\S+)"
        ),
        "arch/x86/mm/fault.c `show_fault_oops` before 5.1 (then `no_context` -> `__die`)",
        "`BUG: unable to handle kernel paging request|NULL pointer dereference at <addr>` "
        "(kernels before 5.1)",
        OOPS_CONTEXT,
        family="page_fault",
        title="BUG: unable to handle kernel {what} in {func}",
    ),
    Signature(
        "stack_guard_page",
        "oops",
        "report",
        _re(r"BUG: (?P<what>\w{1,16} )?stack guard page was hit at (?P<address>\S+)"),
        "arch/x86/kernel/traps.c:408 (`handle_stack_overflow`, then `die()`)",
        "`BUG: <TASK|IRQ|...> stack guard page was hit at <addr> (stack is ...)`",
        OOPS_CONTEXT,
        family="oops",
        title="BUG: {what}stack guard page was hit in {func}",
    ),
    Signature(
        "arm64_paging_oops",
        "oops",
        "report",
        _re(
            r"Unable to handle kernel (?P<what>paging request|NULL pointer dereference|"
            r"execute from non-executable memory|write to read-only memory|access to user memory"
            r"(?: outside uaccess routines)?|\w[\w -]{0,63}? at virtual address)"
        ),
        "arch/arm64/mm/fault.c:305 (`die_kernel_fault`)",
        "`Unable to handle kernel paging request|NULL pointer dereference|execute from "
        "non-executable memory|... at virtual address <addr>` (the address may be wrapped "
        "to the next line in a pasted log)",
        OOPS_CONTEXT,
        family="arm64_fault",
        title="Unable to handle kernel {what} in {func}",
    ),
    Signature(
        "general_protection_fault",
        "oops",
        "report",
        _re(r"(?:Oops: )?general protection fault(?P<what>[^:]*)"),
        "arch/x86/kernel/traps.c:616 (die header arch/x86/kernel/dumpstack.c:426; `Oops: ` "
        "in front since 6.11)",
        "`[Oops: ]general protection fault[, probably for non-canonical address ...]: <code> [#N]`",
        OOPS_CONTEXT,
        family="gpf",
        title="general protection fault in {func}",
    ),
    Signature(
        "divide_error",
        "oops",
        "report",
        _re(r"(?:Oops: )?divide error: (?P<code>[0-9a-f]+) \[#(?P<die>\d+)\]"),
        "arch/x86/kernel/traps.c:207 (`exc_divide_error` -> `die()`, header "
        "arch/x86/kernel/dumpstack.c:426)",
        "`[Oops: ]divide error: <code> [#N]` (x86 #DE in the kernel)",
        OOPS_CONTEXT,
        family="divide_error",
        title="divide error in {func}",
    ),
    Signature(
        "x86_oops",
        "oops",
        "report",
        _re(r"Oops: (?P<what>[^\[\n]{0,128})\[#(?P<die>\d+)\]"),
        "arch/x86/kernel/dumpstack.c:426",
        "`Oops: <code> [#N] ...` (x86 die header)",
        OOPS_CONTEXT,
        family="oops",
        title="Oops in {func}",
    ),
    Signature(
        "arm64_internal_error",
        "oops",
        "report",
        _re(r"Internal error: (?P<what>[^:]+): (?P<code>[0-9a-f]+) \[#(?P<die>\d+)\]"),
        "arch/arm64/kernel/traps.c:189",
        "`Internal error: Oops[ - BUG|...]: <esr> [#N]` (arm64 die header)",
        OOPS_CONTEXT,
        family="oops",
        title="Internal error: {what} in {func}",
    ),
    Signature(
        "x86_invalid_opcode",
        "oops",
        "report",
        _re(r"(?:Oops: )?invalid opcode: (?P<code>[0-9a-f]+) \[#(?P<die>\d+)\]"),
        "arch/x86/kernel/traps.c:297 (die header after BUG())",
        "`invalid opcode: <code> [#N]` (the x86 die header of a BUG())",
        OOPS_CONTEXT,
        family="oops",
        title="invalid opcode in {func}",
    ),
    # --- bug ----------------------------------------------------------------
    Signature(
        "usercopy_abort",
        "bug",
        "report",
        _re(r"usercopy: Kernel memory (?P<what>exposure|overwrite) attempt detected"),
        "mm/usercopy.c:89 (`usercopy_abort`, then `BUG()`)",
        "`usercopy: Kernel memory exposure|overwrite attempt detected ...` (hardened usercopy)",
        BUG_CONTEXT,
        family="usercopy",
        title="BUG: bad usercopy in {func}",
    ),
    Signature(
        "kernel_bug_at",
        "bug",
        "report",
        _re(r"kernel BUG at (?P<location>\S+?)!"),
        "lib/bug.c:205 (spec: lib/genalloc.c:255/:505/:508/:518)",
        "`kernel BUG at <file>:<line>!`",
        BUG_CONTEXT,
        family="kernel_bug",
        title="kernel BUG in {func}",
    ),
    Signature(
        "bad_page_state",
        "bug",
        "report",
        _re(rf"BUG: Bad page state in process (?P<comm>{COMM}?)\s{{1,8}}pfn:(?P<pfn>[0-9a-f]+)"),
        "mm/page_alloc.c:721 (reasons :1288-1301)",
        "`BUG: Bad page state in process <comm>  pfn:<pfn>`",
        BUG_CONTEXT,
        family="bad_page",
        title="BUG: Bad page state in {func}",
        func=("comm",),
    ),
    Signature(
        "bad_page_state_suppressed",
        "bug",
        "report",
        _re(r"BUG: Bad page (?P<what>state|map): (?P<count>\d+) messages suppressed"),
        "mm/page_alloc.c:712, mm/memory.c:542",
        "`BUG: Bad page state|map: <n> messages suppressed`",
        family="bad_page",
        title="BUG: Bad page {what}",
        func=(),
    ),
    Signature(
        "bad_page_map",
        "bug",
        "report",
        _re(rf"BUG: Bad page map in process (?P<comm>{COMM}?)\s{{1,8}}pte:"),
        "mm/memory.c:554 (`print_bad_pte`)",
        "`BUG: Bad page map in process <comm>  pte:<pte> pmd:<pmd>`",
        BUG_CONTEXT,
        family="bad_page",
        title="BUG: Bad page map in {func}",
        func=("comm",),
    ),
    Signature(
        "soft_lockup",
        "bug",
        "report",
        _re(
            r"(?:(?:NMI )?watchdog: )?BUG: soft lockup - CPU#(?P<cpu>\d+) stuck for "
            rf"(?P<seconds>\d+)s! \[(?P<comm>{COMM}):(?P<pid>\d+)\]"
        ),
        "kernel/watchdog.c:434",
        "`[watchdog: ]BUG: soft lockup - CPU#<n> stuck for <s>s! [<comm>:<pid>]`",
        BUG_CONTEXT,
        family="softlockup",
        title="BUG: soft lockup in {func}",
        func=("rip", "trace", "comm"),
    ),
    Signature(
        "hard_lockup",
        "bug",
        "report",
        _re(r"(?:NMI watchdog: )?Watchdog detected hard LOCKUP on cpu (?P<cpu>\d+)"),
        "kernel/watchdog_hld.c:142 (`watchdog_overflow_callback`)",
        "`[NMI watchdog: ]Watchdog detected hard LOCKUP on cpu <n>`",
        BUG_CONTEXT,
        family="hardlockup",
        title="hard LOCKUP on cpu {cpu}",
        func=(),
    ),
    Signature(
        "kasan_report",
        "bug",
        "report",
        _re(
            r"BUG: KAS[Aa][Nn]: (?P<kind>[\w-]{1,64})"
            rf"(?: (?:in (?P<func>{FUNC})|on address (?P<address>\S+)))?"
        ),
        "mm/kasan/report.c:210 (access line :219; `invalid-access` :548; `KASan: ... on "
        "address` before 4.11)",
        "`BUG: KASAN: <kind> in <function>` (+ `Read|Write of size <n> at addr ...`)",
        Context(lines=16, until=_END_TRACE, scan=6, fields=(_TASK_LINE, _ACCESS)),
        family="kasan",
        title="KASAN: {kind} {access} in {func}",
        func=("field", "trace", "rip"),
    ),
    Signature(
        "kmsan_report",
        "bug",
        "report",
        _re(rf"BUG: KMSAN: (?P<kind>[\w-]{{1,64}})(?: in (?P<func>{FUNC}))?"),
        "mm/kmsan/report.c:188 (`kmsan_report`)",
        "`BUG: KMSAN: <kind> in <function>`",
        BUG_CONTEXT,
        family="kmsan",
        title="KMSAN: {kind} in {func}",
        func=("field", "trace"),
    ),
    Signature(
        "kcsan_report",
        "bug",
        "report",
        _re(
            rf"BUG: KCSAN: (?P<kind>[\w-]{{1,64}}) in (?P<func>{FUNC})"
            rf"(?: / (?P<func2>{FUNC}))?"
        ),
        "kernel/kcsan/report.c:432, :437 (`print_report`)",
        "`BUG: KCSAN: <kind> in <function> [/ <function>]`",
        BUG_CONTEXT,
        family="kcsan",
        title="KCSAN: {kind} in {func}",
        func=("field",),
    ),
    Signature(
        "kfence_report",
        "bug",
        "report",
        _re(
            r"BUG: KFENCE: (?P<kind>(?:out-of-bounds|use-after-free|invalid) (?:read|write)|"
            rf"memory corruption|invalid free|[\w-]{{1,64}})(?: in (?P<func>{FUNC}))?"
        ),
        "mm/kfence/report.c:224-251 (`kfence_report_error`)",
        "`BUG: KFENCE: out-of-bounds|use-after-free|invalid read|write / memory corruption / "
        "invalid free in <function>`",
        BUG_CONTEXT,
        family="kfence",
        title="KFENCE: {kind} in {func}",
        func=("field", "trace"),
    ),
    Signature(
        "workqueue_lockup",
        "bug",
        "report",
        _re(r"BUG: workqueue lockup - pool(?P<pool>[^!]{0,128})"),
        "kernel/workqueue.c:5880 (`wq_watchdog_timer_fn`)",
        "`BUG: workqueue lockup - pool cpus=<n> ... stuck for <s>s!`",
        Context(lines=16, scan=0),
        family="workqueue_lockup",
        title="BUG: workqueue lockup in {func}",
        func=("inflight",),
    ),
    Signature(
        "scheduling_while_atomic",
        "bug",
        "report",
        _re(rf"BUG: scheduling while atomic: (?P<comm>{COMM}?)/(?P<pid>\d+)/"),
        "kernel/sched/core.c:5791 (`__schedule_bug`)",
        "`BUG: scheduling while atomic: <comm>/<pid>/<preempt count>`",
        BUG_CONTEXT,
        family="atomic_sleep",
        title="BUG: scheduling while atomic in {func}",
        func=("comm",),
    ),
    Signature(
        "sleeping_in_atomic",
        "bug",
        "report",
        _re(r"BUG: sleeping function called from invalid context at (?P<location>\S+)"),
        "kernel/sched/core.c:9998 (`__might_resched`)",
        "`BUG: sleeping function called from invalid context at <file>:<line>`",
        BUG_CONTEXT,
        family="atomic_sleep",
        title="BUG: sleeping function called from invalid context in {func}",
        func=("trace",),
    ),
    Signature(
        "kernel_bug_other",
        "bug",
        "report",
        _re(r"BUG: (?P<what>.+)"),
        "various (e.g. kernel/locking/spinlock_debug.c `spin_bug`, kernel/workqueue.c "
        "`BUG: workqueue leaked lock`)",
        "any other `BUG: <what>` line (after the specific `BUG:` entries above)",
        BUG_CONTEXT,
        title="BUG: {what}",
        func=(),
    ),
    Signature(
        "hung_task",
        "bug",
        "report",
        _re(
            rf"INFO: task (?P<comm>{COMM}):(?P<pid>\d+) blocked (?:[\w/ ]{{1,32}} )?for more "
            r"than (?P<seconds>\d+) seconds\."
        ),
        "kernel/hung_task.c:133 (6.x: `blocked in I/O wait for more than`)",
        "`INFO: task <comm>:<pid> blocked for more than <s> seconds.`",
        Context(lines=16, until=_END_TRACE, scan=12, fields=(_TASK_LINE,)),
        family="hung_task",
        title="INFO: task hung in {func}",
        func=("trace",),
    ),
    Signature(
        "rcu_stall",
        "bug",
        "report",
        _re(r"(?:rcu: )?INFO: (?P<flavor>\S+) (?:self-)?detected stalls?"),
        "kernel/rcu/tree_stall.h:582, :653 (no `rcu: ` prefix before 5.0)",
        "`[rcu: ]INFO: <rcu> detected stalls on CPUs/tasks:` / `... self-detected stall on CPU`",
        BUG_CONTEXT,
        family="rcu_stall",
        title="INFO: rcu detected stall in {func}",
    ),
    Signature(
        "page_dumped",
        "bug",
        "report",
        _re(r"page dumped because: (?P<reason>.*)"),
        "mm/debug.c:133 (VM_BUG_ON_FOLIO: mm/memcontrol.c:2841, :7066)",
        "`page dumped because: <reason>` (dump_page, e.g. from VM_BUG_ON_FOLIO)",
        BUG_CONTEXT,
        title="page dumped because: {reason}",
        func=(),
    ),
    Signature(
        "pages_still_in_use",
        "bug",
        "report",
        _re(r"(?P<count>\d+) pages are still in use!"),
        "mm/page_alloc.c:9508",
        "`<n> pages are still in use!` (a chunk freed with extra references)",
        title="pages are still in use",
        func=(),
    ),
    # --- warn ---------------------------------------------------------------
    Signature(
        "ubsan_report",
        "warn",
        "report",
        _re(r"UBSAN: (?P<kind>[\w-]{1,64}(?: behaviour)?) in (?P<file>\S+)"),
        "lib/ubsan.c:143 (`ubsan_prologue`; `Undefined behaviour in <file>` before 5.11)",
        "`UBSAN: <kind> in <file>:<line>:<col>` / (old) `UBSAN: Undefined behaviour in <file>`",
        Context(lines=14, until=_UBSAN_END, scan=2, fields=(_UBSAN_KIND,)),
        family="ubsan",
        title="UBSAN: {kind} in {func}",
        func=("trace",),
    ),
    Signature(
        "ubsan_detail",
        "warn",
        "report",
        _re(
            r"(?:index \S{1,64} is out of range for type|shift exponent \S{1,64} is "
            r"(?:negative|too large for))"
        ),
        "lib/ubsan.c:280, :304, :308 (the line after the UBSAN header)",
        "`index <n> is out of range for type '<t>'`, `shift exponent <n> is negative|too "
        "large for ...` (a UBSAN report whose header line is missing from the excerpt)",
        Context(lines=14, until=_UBSAN_END, scan=0),
        family="ubsan",
        title="UBSAN: {kind} in {func}",
        func=("trace",),
    ),
    Signature(
        "refcount_warning",
        "warn",
        "report",
        _re(
            r"refcount_t: (?P<what>underflow|overflow|saturated|addition on 0|decrement hit 0|"
            r"[\w ]{1,40}); "
        ),
        "lib/refcount.c:11-33 (`REFCOUNT_WARN` is `WARN_ONCE`)",
        "`refcount_t: underflow|overflow|saturated|addition on 0|decrement hit 0; ...` (then a "
        "WARNING)",
        WARN_CONTEXT,
        family="refcount",
        title="WARNING: refcount bug in {func}",
        func=("rip", "trace"),
    ),
    Signature(
        "odebug_warning",
        "warn",
        "report",
        _re(r"ODEBUG: (?P<op>\w{1,32}) (?P<state>\w{1,32}) \(active state \d+\)"),
        "lib/debugobjects.c:515 (`debug_print_object` is a `WARN()`)",
        "`ODEBUG: <op> <state> (active state <n>) object[: <addr>] type: <type> hint: <fn>`",
        WARN_CONTEXT,
        family="odebug",
        title="WARNING: ODEBUG bug in {func}",
        func=("trace", "hint"),
    ),
    Signature(
        "usercopy_warning",
        "warn",
        "report",
        _re(r"Bad or missing usercopy whitelist\? Kernel memory (?P<what>exposure|overwrite)"),
        "mm/usercopy.c `usercopy_warn` (4.16-5.x, a `WARN_ONCE` for a cache without a whitelist)",
        "`Bad or missing usercopy whitelist? Kernel memory exposure|overwrite attempt detected "
        "...`",
        WARN_CONTEXT,
        family="usercopy",
        title="WARNING: bad usercopy in {func}",
        func=("trace",),
    ),
    Signature(
        "lockdep_deadlock",
        "warn",
        "report",
        _re(
            r"WARNING: (?P<what>possible circular locking dependency detected|possible "
            r"recursive locking detected|possible irq lock inversion dependency detected|"
            r"\w{1,16}-safe -> \w{1,16}-unsafe lock order detected)"
        ),
        "kernel/locking/lockdep.c:1974, :2603, :3021, :4066",
        "`WARNING: possible circular locking dependency detected` (and the recursive, irq "
        "inversion and `<X>-safe -> <X>-unsafe lock order` reports)",
        WARN_CONTEXT,
        family="lockdep",
        title="possible deadlock in {func}",
        func=("at", "trace"),
    ),
    Signature(
        "lockdep_inconsistent",
        "warn",
        "report",
        _re(r"WARNING: inconsistent lock state"),
        "kernel/locking/lockdep.c:4004",
        "`WARNING: inconsistent lock state`",
        WARN_CONTEXT,
        family="lockdep",
        title="inconsistent lock state in {func}",
        func=("at", "trace"),
    ),
    Signature(
        "lockdep_other",
        "warn",
        "report",
        _re(
            r"WARNING: (?P<what>suspicious RCU usage|held lock freed|bad unlock balance|"
            r"lock held when returning to user space|nested lock was not taken|held lock "
            r"freed)"
        ),
        "kernel/locking/lockdep.c:5215, :6584, :6708, :6732",
        "`WARNING: suspicious RCU usage`, `held lock freed!`, `bad unlock balance detected!`, "
        "`lock held when returning to user space!`, `nested lock was not taken`",
        WARN_CONTEXT,
        family="lockdep",
        title="WARNING: {what} in {func}",
        func=("trace",),
    ),
    Signature(
        "kernel_warning",
        "warn",
        "report",
        _re(
            r"WARNING: CPU: (?P<cpu>\d+) PID: (?P<pid>\d+) at (?P<location>\S+)"
            rf"(?: (?P<func>{FUNC})\+0x)?"
        ),
        "kernel/panic.c:665, :669",
        "`WARNING: CPU: <n> PID: <pid> at <file>:<line> <function>`",
        WARN_CONTEXT,
        family="warning",
        title="WARNING in {func}",
        func=("field", "rip", "trace"),
    ),
    Signature(
        "kernel_warning_new",
        "warn",
        "report",
        _re(
            rf"WARNING: (?P<location>\S+) at (?P<func>{FUNC})[^,\n]{{0,200}}, CPU#(?P<cpu>\d+): "
            rf"(?P<comm>{COMM}?)/(?P<pid>\d+)"
        ),
        "kernel/panic.c `__warn` (6.18 and later)",
        "`WARNING: <file>:<line> at <function>, CPU#<n>: <comm>/<pid>` (6.18 and later)",
        WARN_CONTEXT,
        family="warning",
        title="WARNING in {func}",
        func=("field", "rip", "trace"),
    ),
    Signature(
        "kernel_warning_other",
        "warn",
        "report",
        _re(r"WARNING: (?P<what>.+)"),
        "various",
        "any other `WARNING: <what>` line",
        WARN_CONTEXT,
        title="WARNING: {what}",
        func=(),
    ),
    # --- oom kill -----------------------------------------------------------
    Signature(
        "oom_invoked",
        "oom_kill",
        "supporting",
        _re(
            rf"(?P<comm>{COMM}?) invoked oom-killer: gfp_mask=(?P<gfp_mask>0x[0-9a-f]+)"
            r"(?:\((?P<gfp_flags>[^)]{0,512})\))?, order=(?P<order>-?\d+), "
            r"oom_score_adj=(?P<oom_score_adj>-?\d+)"
        ),
        "mm/oom_kill.c:461",
        "`<comm> invoked oom-killer: gfp_mask=<mask>(<flags>), order=<n>, oom_score_adj=<n>`",
        REGS_CONTEXT,
    ),
    Signature(
        "oom_summary",
        "oom_kill",
        "supporting",
        _re(
            rf"oom-kill:constraint=(?P<constraint>[^,]+),.*?task=(?P<comm>{COMM}?),"
            r"pid=(?P<pid>\d+),uid=(?P<uid>\d+)"
        ),
        "mm/oom_kill.c:450-456",
        "`oom-kill:constraint=<c>,nodemask=...,task=<comm>,pid=<pid>,uid=<uid>`",
    ),
    Signature(
        "oom_kill_choice",
        "oom_kill",
        "supporting",
        _re(
            r"(?P<scope>Memory cgroup out of memory|Out of memory): Kill process (?P<pid>\d+) "
            rf"\((?P<comm>{COMM0}?)\) score"
        ),
        "mm/oom_kill.c `oom_kill_process` before 5.1",
        "`Out of memory|Memory cgroup out of memory: Kill process <pid> (<comm>) score <n> or "
        "sacrifice child` (the choice; `Killed process` follows)",
        family="oom",
    ),
    Signature(
        "oom_killed_process",
        "oom_kill",
        "report",
        _re(
            r"(?:Out of memory(?P<allocating> \(oom_kill_allocating_task\))?: )?Killed process "
            rf"(?P<pid>\d+) \((?P<comm>{COMM0}?)\)(?= total-vm:|\s*$)"
        ),
        "mm/oom_kill.c:959 (messages :1166, :1184; a bare `Killed process` before 5.1, after "
        "`oom_kill_choice`)",
        "`[Out of memory[ (oom_kill_allocating_task)]: ]Killed process <pid> (<comm>) ...`",
        family="oom",
        title="Out of memory: Killed process ({comm})",
        func=(),
    ),
    Signature(
        "memcg_oom_killed_process",
        "oom_kill",
        "report",
        _re(
            r"Memory cgroup out of memory: Killed process (?P<pid>\d+) "
            rf"\((?P<comm>{COMM0}?)\)(?= total-vm:|\s*$)"
        ),
        "mm/oom_kill.c:959 (message :1185)",
        "`Memory cgroup out of memory: Killed process <pid> (<comm>) ...`",
        family="oom",
        title="Memory cgroup out of memory: Killed process ({comm})",
        func=(),
    ),
    Signature(
        "oom_reaped",
        "oom_kill",
        "supporting",
        _re(rf"oom_reaper: reaped process (?P<pid>\d+) \((?P<comm>{COMM0}?)\)(?=, now |\s*$)"),
        "mm/oom_kill.c:602",
        "`oom_reaper: reaped process <pid> (<comm>), now anon-rss:...`",
    ),
    Signature(
        "oom_reap_failed",
        "oom_kill",
        "supporting",
        _re(rf"oom_reaper: unable to reap pid:(?P<pid>\d+) \((?P<comm>{COMM0})\)"),
        "mm/oom_kill.c:629",
        "`oom_reaper: unable to reap pid:<pid> (<comm>)`",
    ),
    Signature(
        "oom_victim_exiting",
        "oom_kill",
        "supporting",
        _re(
            rf"(?P<message>{TEXT}?): OOM victim (?P<pid>\d+) \((?P<comm>{COMM0})\) "
            r"is already exiting\."
        ),
        "mm/oom_kill.c:934",
        "`<message>: OOM victim <pid> (<comm>) is already exiting. Skip killing the task`",
    ),
    Signature(
        "oom_no_killable",
        "oom_kill",
        "supporting",
        _re(r"Out of memory and no killable processes\.\.\."),
        "mm/oom_kill.c:1174",
        "`Out of memory and no killable processes...` (then a panic unless memcg)",
    ),
    # --- fault livelock -----------------------------------------------------
    Signature(
        "fault_oom_huh",
        "fault_livelock",
        "supporting",
        _re(r"Huh VM_FAULT_OOM leaked out to the #PF handler\. Retrying PF"),
        "mm/oom_kill.c:1207",
        "`Huh VM_FAULT_OOM leaked out to the #PF handler. Retrying PF` (rate-limited 10 per 5 s)",
    ),
    Signature(
        "fault_oom_suppressed",
        "fault_livelock",
        "supporting",
        _re(r"pagefault_out_of_memory: (?P<count>\d+) callbacks suppressed"),
        "lib/ratelimit.c:57",
        "`pagefault_out_of_memory: <n> callbacks suppressed` (the Huh lines not printed)",
    ),
    # --- sigbus -------------------------------------------------------------
    Signature(
        "fatal_sigbus",
        "sigbus",
        "report",
        _re(rf"(?:(?P<prefix>{TEXT}?): )?potentially unexpected fatal signal 7\."),
        "kernel/signal.c:1268 (needs print-fatal-signals=1)",
        "`potentially unexpected fatal signal 7.` (+ the `CPU: PID: Comm:` line of show_regs)",
        TASK_CONTEXT,
    ),
    Signature(
        "arm64_unhandled_exception",
        "sigbus",
        "supporting",
        _re(rf"(?P<comm>{COMM})\[(?P<pid>\d+)\]: unhandled exception: (?P<what>.*)"),
        "arch/arm64/kernel/traps.c:255; arch/arm64/mm/fault.c:747",
        "`<comm>[<pid>]: unhandled exception: ... level 3 translation fault` (SIGBUS or "
        "SIGSEGV; needs debug.exception-trace=1)",
    ),
    Signature(
        "fatal_signal_other",
        None,
        "info",
        _re(rf"(?:{TEXT}?: )?potentially unexpected fatal signal (?P<signo>\d+)\."),
        "kernel/signal.c:1268",
        "`potentially unexpected fatal signal <n>.` for a signal other than 7",
        REGS_CONTEXT,
    ),
    Signature(
        "x86_segfault",
        None,
        "info",
        _re(rf"(?P<comm>{COMM}?)\[(?P<pid>\d+)\]: segfault at (?P<address>[0-9a-f]+)"),
        "arch/x86/mm/fault.c:771",
        "`<comm>[<pid>]: segfault at <addr> ...` (SIGSEGV only, never SIGBUS)",
    ),
    # --- informational ------------------------------------------------------
    Signature(
        "cma_alloc_failed",
        None,
        "info",
        _re(
            rf"cma: cma_alloc: (?P<area>{TEXT}?): alloc failed, req-size: (?P<pages>\d+) pages, "
            r"ret: (?P<ret>-?\d+)"
        ),
        "mm/cma.c:503-504",
        "`cma: cma_alloc: <area>: alloc failed, req-size: <n> pages, ret: <err>`",
    ),
    Signature(
        "cma_reserved",
        None,
        "info",
        _re(r"cma: Reserved (?P<mib>\d+) MiB at (?P<base>\S+)"),
        "mm/cma.c:370",
        "`cma: Reserved <n> MiB at <addr>`",
    ),
    Signature(
        "cma_reserve_failed",
        None,
        "info",
        _re(r"cma: Failed to reserve (?P<mib>\d+) MiB"),
        "mm/cma.c:377",
        "`cma: Failed to reserve <n> MiB`",
    ),
    Signature(
        "page_allocation_failure",
        None,
        "info",
        _re(
            rf"(?P<comm>{COMM}?): page allocation failure: order:(?P<order>\d+), "
            r"mode:(?P<gfp_mask>0x[0-9a-f]+)"
        ),
        "mm/page_alloc.c:4424, :5401",
        "`<comm>: page allocation failure: order:<n>, mode:<mask>(<flags>), nodemask=...`",
    ),
    Signature(
        "secretmem_banner",
        None,
        "info",
        _re(r"secretmem: lab variant (?P<attrs>.*\S)?"),
        "mm/secretmem.c (lab patch, secretmem_lab_init)",
        "`secretmem: lab variant pool=<p> fallback=<0|1> reserve=<0|1> fault=<oom|sigbus> "
        "charge=<page|chunk> v16lit=<0|1> enabled=<0|1>`",
    ),
    Signature(
        "lab_era",
        None,
        "info",
        _re(r"lab era: (?P<era>\S+) oom semantics\s*$"),
        "mm/oom_kill.c (lab patch series era-5.11, lab_oom_era_banner)",
        "`lab era: <5.11|6.1> oom semantics`: the second banner line, read as the banner's `era=`",
    ),
    Signature(
        "secretmem_reserved",
        None,
        "info",
        _re(r"secretmem: reserved (?P<mib>\d+) MiB CMA"),
        "mm/secretmem.c (lab patch)",
        "`secretmem: reserved <n> MiB CMA`",
    ),
    Signature(
        "secretmem_cma_failed",
        None,
        "info",
        _re(r"secretmem: CMA reservation failed: (?P<err>-?\d+)"),
        "mm/secretmem.c (lab patch)",
        "`secretmem: CMA reservation failed: <err>`",
    ),
    Signature(
        "secretmem_refill_failed",
        None,
        "info",
        _re(r"secretmem: refill failed: (?P<err>-?\d+)"),
        "mm/secretmem.c (lab patch)",
        "`secretmem: refill failed: <err>` (rate-limited)",
    ),
    Signature(
        "secretmem_reservation_failed",
        None,
        "info",
        _re(r"secretmem: reservation of (?P<pages>\d+) pages failed: (?P<err>-?\d+)"),
        "mm/secretmem.c (lab patch)",
        "`secretmem: reservation of <n> pages failed: <err>` (RESERVE variants)",
    ),
    Signature(
        "secretmem_leak",
        None,
        "info",
        _re(r"secretmem: leaking (?P<what>.*)"),
        "mm/secretmem.c (lab patch, secretmem_chunk_release)",
        "`secretmem: leaking [busy ]chunk at pfn <pfn>...` (the pool kept a chunk out of "
        "service on purpose)",
    ),
    Signature(
        "callbacks_suppressed",
        None,
        "info",
        _re(r"(?P<function>\w{1,128}): (?P<count>\d+) callbacks suppressed"),
        "lib/ratelimit.c:57",
        "`<function>: <n> callbacks suppressed` for any other rate-limited message",
    ),
    Signature(
        "qemu_message",
        "infra_error",
        "supporting",
        _re(r"qemu-system-(?P<arch>[\w-]+): (?P<message>.+)"),
        "QEMU's own stderr, which shares the console pty",
        "`qemu-system-<arch>: <message>` (decides only when the kernel printed nothing)",
        kernel=False,
    ),
    # --- userspace and the orderly end -------------------------------------
    Signature(
        "init_started",
        None,
        "marker",
        _re(r"Run (?P<init>\S+) as init process"),
        "init/main.c:1396",
        "`Run <path> as init process` (the kernel hands over to userspace)",
    ),
    Signature(
        "lab_ready",
        None,
        "marker",
        _re(r"LABREADY (?P<boot_id>\S+)"),
        "images/init (the lab's ready marker)",
        "`LABREADY <boot id>`",
        kernel=False,
    ),
    Signature(
        "lab_testcase",
        None,
        "marker",
        _re(r"lab: testcase (?P<testcase>\S+) (?P<phase>start|end)"),
        "lab/guest/agent.py (_kmsg, via /dev/kmsg)",
        "`lab: testcase <name> start|end` (the agent's markers in the kernel log)",
    ),
    Signature(
        "lab_agent_exit",
        None,
        "marker",
        _re(r"LABAGENT-EXIT (?P<status>-?\d+)"),
        "images/init (after the agent exits)",
        "`LABAGENT-EXIT <status>`",
        kernel=False,
    ),
    Signature(
        "reboot_restart",
        None,
        "end",
        _re(r"reboot: Restarting system(?: with command '(?P<command>.*)')?"),
        "kernel/reboot.c:273, :275",
        "`reboot: Restarting system[ with command '<cmd>']`",
    ),
    Signature(
        "reboot_machine_restart",
        None,
        "end",
        _re(r"reboot: machine restart"),
        "arch/x86/kernel/reboot.c:719",
        "`reboot: machine restart` (x86)",
    ),
    Signature(
        "reboot_power_down",
        None,
        "end",
        _re(r"reboot: Power down"),
        "kernel/reboot.c:685",
        "`reboot: Power down`",
    ),
    Signature(
        "reboot_halted",
        None,
        "end",
        _re(r"reboot: System halted"),
        "kernel/reboot.c:299",
        "`reboot: System halted`",
    ),
)

BY_NAME: dict[str, Signature] = {s.name: s for s in SIGNATURES}
