"""The title of a kernel report, in the style CI bots use (`WARNING in func`,
`KASAN: use-after-free Read in func`, `kernel BUG in func`): what a reviewer greps the
mailing list for.

Each report signature carries a template (`Signature.title`) and the places its function
comes from, in order (`Signature.func`). The lines after a hit are kept as it streams by
(`Hit.window`, at most TITLE_LINES): the function is the RIP/pc of the report or the first
frame of its call trace that is not report machinery (dump_stack, the sanitizers' own
helpers, `__warn`, `refcount_warn_saturate`, ...), or, for a hung task, not a wait
primitive. When no usable function is found, ` in {func}` is dropped. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from lab.classify.model import Hit

# Report machinery: the frames between the bug and the report that names it. Whole names
# (after `.cold`/`.isra.0`/... suffixes are dropped), a trailing `*` is a prefix.
_MACHINERY = (
    "dump_stack*",
    "__dump_stack",
    "show_stack",
    "dump_backtrace",
    "show_trace_log_lvl",
    "print_address_description*",
    "print_report",
    "print_error_description",
    "print_trailer",
    "kasan_*",
    "__kasan_*",
    "kmsan_*",
    "__msan_*",
    "kcsan_*",
    "__kcsan_*",
    "__tsan_*",
    "kfence_*",
    "__kfence_*",
    "ubsan_*",
    "__ubsan_*",
    "handle_overflow",
    "__asan_*",
    "__hwasan_*",
    "check_memory_region*",
    "instrument_*",
    "__warn*",
    "warn_slowpath*",
    "report_bug",
    "handle_bug",
    "exc_invalid_op",
    "asm_exc_invalid_op",
    "invalid_op",
    "do_invalid_op",
    "do_error_trap",
    "do_trap",
    "bug_handler",
    "brk_handler",
    "call_break_hook",
    "do_debug_exception",
    "el1_dbg",
    "el1h_64_sync_handler",
    "el1h_64_sync",
    "el1_sync_handler",
    "el1_sync",
    "die",
    "__die*",
    "oops_end",
    "panic",
    "vpanic",
    "check_panic_on_warn",
    "refcount_warn_saturate",
    "ref_tracker_*",
    "refcount_*",
    "__refcount_*",
    "debug_print_object",
    "debug_object_*",
    "__debug_object_*",
    "debug_check_no_obj_freed",
    "__debug_check_no_obj_freed",
    "usercopy_abort",
    "usercopy_warn",
    "__check_object_size",
    "check_object_size",
    "__check_heap_object",
    "check_heap_object",
    "fortify_panic",
    "__fortify_panic",
    "__fortify_report",
    "__might_sleep",
    "___might_sleep",
    "__might_resched",
    "__might_fault",
    "might_fault",
    "__schedule_bug",
    "lockdep_*",
    "__lock_acquire",
    "lock_acquire",
    "lock_release",
    "__lock_release",
    "lock_is_held_type",
    "validate_chain",
    "check_noncircular",
    "check_prev_add",
    "check_prevs_add",
    "check_irq_usage",
    "check_deadlock",
    "mark_lock*",
    "mark_usage",
    "valid_state",
    "print_usage_bug",
    "print_circular_bug",
    "print_deadlock_bug",
    "debug_check_no_locks_freed",
    "__pfx_*",
    "__x86_indirect_thunk_*",
    "__x86_return_thunk",
    "srso_*",
    "memcpy",
    "memset",
    "memmove",
    "__memcpy",
    "__memset",
    "__memmove",
    "memcmp",
    "strlen",
    "strnlen",
    "strcpy",
    "strncpy",
    "strscpy",
    "strcmp",
    "strncmp",
)
# What a report's own line may name and still not be the function it is about.
_GENERIC = (
    *_MACHINERY[_MACHINERY.index("memcpy") :],
    "__asan_*",
    "__hwasan_*",
    "check_memory_region*",
)
# Hung tasks sit in a wait; the title names who waits.
_WAITS = (
    "schedule*",
    "__schedule",
    "io_schedule*",
    "context_switch",
    "__switch_to*",
    "__mutex_lock*",
    "mutex_lock*",
    "__down*",
    "down",
    "down_read*",
    "down_write*",
    "rwsem_down_*",
    "__rwsem_*",
    "wait_for_completion*",
    "__wait_for_common",
    "wait_for_common*",
    "do_wait_for_common",
    "rt_mutex*",
    "__rt_mutex*",
    "rt_spin_lock*",
    "folio_wait*",
    "__folio_lock*",
    "__lock_page*",
    "wait_on_page*",
    "bit_wait*",
    "__wait_on_bit*",
    "out_of_line_wait_on_bit*",
    "wait_on_bit*",
    "__wait_on_buffer",
    "percpu_rwsem_wait",
    "__percpu_down_read",
    "__flush_work",
    "flush_work",
    "__schedule_loop",
    "preempt_schedule*",
    "_raw_spin_lock*",
    "rt_spin_lock*",
    "might_sleep",
    "wait_on_page_bit*",
    "__filemap_fdatawait*",
    "filemap_fdatawait*",
)
# An RCU stall or a lockup is reported from a timer interrupt: its frames say nothing.
_INTERRUPT = (
    "rcu_*",
    "__rcu_*",
    "print_cpu_stall*",
    "check_cpu_stall",
    "update_process_times",
    "tick_*",
    "__tick_*",
    "hrtimer_*",
    "__hrtimer_*",
    "__sysvec_*",
    "sysvec_*",
    "asm_sysvec_*",
    "smp_apic_timer_interrupt*",
    "apic_timer_interrupt",
    "local_apic_timer_interrupt",
    "_sched_show_task",
    "irq_exit*",
    "__irq_exit_rcu",
    "watchdog_timer_fn",
    "nmi_*",
    "arch_trigger_cpumask_backtrace",
    "trigger_*",
    "sched_show_task",
    "show_regs",
)


def _matcher(names: Iterable[str]) -> re.Pattern[str]:
    parts = [re.escape(n[:-1]) + r"\w*" if n.endswith("*") else re.escape(n) for n in names]
    return re.compile("(?:" + "|".join(parts) + r")\Z")


_SKIP = _matcher(_MACHINERY)
_SKIP_FIELD = _matcher(_GENERIC)
_SKIP_HUNG = _matcher((*_MACHINERY, *_WAITS))
_SKIP_STALL = _matcher((*_MACHINERY, *_INTERRUPT, *_WAITS))

_ADDR = r"(?:\[<[0-9a-f]{1,16}>\] {1,2})"
_FN = r"(?P<func>[A-Za-z_][\w.$]{0,127})"
# A call-trace frame: `fn+0x1f/0x30 [mod]`, `[<ffffffff8123>] fn+0x..`, a decoded
# `fn (file.c:12)` or `fn file.c:12 [inline]`; `? fn` frames are unreliable and skipped.
_FRAME = re.compile(
    rf"{_ADDR}?(?P<unreliable>\? )?{_FN}(?:\+0x[0-9a-f]{{1,16}}(?:/0x[0-9a-f]{{1,16}})?|"
    r" \(\S{1,256}:\d{1,9}\)| \S{1,256}\.[chS]:\d{1,9})"
)
# Lines that may sit inside a call trace: markers, and the registers of an exception
# frame (`RIP: ...`, `RAX: ...`, `Code: ...`) that x86 prints in the middle of it.
_MARKER = re.compile(
    r"(?:Call [Tt]race:|</?(?:IRQ|TASK|NMI|SOFTIRQ|EOI)>|\?|Exception stack|"
    r"(?:R[A-Z0-9]{1,3}|[A-Z]S|CR\d|DR\d|Code|EFLAGS|ORIG_RAX): )"
)
# What starts the next part of a report after its first stack.
_STACK_END = re.compile(
    r"(?:Allocated by|Freed by|Last potentially|Second to last|The buggy address|Memory state|"
    r"---\[ end|={10}|Modules linked in|Kernel panic|Kernel Offset|Uninit was|Local variable|"
    r"(?:read|write)(?: \(marked\))? to 0x)"
)
MAX_GAP = 6  # lines of other output inside a trace before the trace is taken to be over
# ODEBUG checks objects on the free path: the function that freed is the one to name.
_FREES = (
    "kfree",
    "kvfree",
    "kfree_*",
    "kmem_cache_free",
    "slab_free*",
    "__slab_free",
    "free_pages*",
    "__free_pages*",
    "vfree",
    "__vunmap",
)
_SKIP_ODEBUG = _matcher((*_MACHINERY, *_FREES))
_RIP = re.compile(
    rf"(?:RIP: [0-9a-f]{{4}}:{_ADDR}?(?:{_ADDR})?|pc ?: {_ADDR}?|PC is at |IP: {_ADDR}?|"
    rf"EIP: (?:[0-9a-f]{{4}}:)?{_ADDR}?){_FN}(?:\+0x| \()"
)
_AT = re.compile(rf"(?:, |^)at: {_ADDR}?{_FN}(?:\+0x| \S)")
_HINT = re.compile(rf"hint: {_FN}\+0x")
_INFLIGHT = re.compile(r"in-flight: \d{1,10}:(?P<func>[A-Za-z_]\w{0,127})")

# The old UBSAN header names no kind; the line after it does.
_UBSAN_KINDS = (
    ("index", "array-index-out-of-bounds"),
    ("shift exponent", "shift-out-of-bounds"),
    ("signed integer overflow", "signed-integer-overflow"),
    ("load of value", "invalid-load"),
    ("division", "divide-by-zero"),
    ("member access within", "misaligned-access"),
    ("load of null", "null-ptr-deref"),
    ("store of null", "null-ptr-deref"),
    ("load of misaligned", "misaligned-access"),
    ("store of misaligned", "misaligned-access"),
)


def _name(func: str) -> str:
    """`name.cold.12` / `name.isra.0` -> `name`."""
    return func.split(".", 1)[0]


def _frames(window: Sequence[str], skip: re.Pattern[str]) -> str | None:
    """The first frame of the first call trace in `window` that is not in `skip`; an
    unreliable `? fn` frame only when the trace has nothing else (old kernels)."""
    started = False
    gap = 0
    unreliable: str | None = None
    for line in window:
        m = _FRAME.match(line)
        if m is None:
            if started and _STACK_END.match(line):
                break  # the first stack ended (KASAN's `Allocated by task` comes next)
            if started and line and not _MARKER.match(line):
                gap += 1  # other kernel output may interleave with a trace
                if gap > MAX_GAP:
                    break
            continue
        started, gap = True, 0
        name = _name(m.group("func"))
        if skip.match(name):
            continue
        if not m.group("unreliable"):
            return name
        unreliable = unreliable or name
    return unreliable


def frames(window: Sequence[str]) -> list[str]:
    """Every function of a frame line in `window` (reliable or not), in order."""
    return [_name(m.group("func")) for line in window if (m := _FRAME.match(line))]


def _first(window: Sequence[str], pattern: re.Pattern[str], skip: re.Pattern[str]) -> str | None:
    for line in window:
        m = pattern.search(line)
        if m:
            name = _name(m.group("func"))
            if not skip.match(name):
                return name
            return None  # the report's RIP is the machinery: the trace says more
    return None


def function(hit: Hit) -> str | None:
    """The function a report is about, from the places its signature names."""
    family = hit.sig.family
    skip = _SKIP_HUNG if family in ("hung_task", "atomic_sleep") else _SKIP
    if family in ("rcu_stall", "softlockup", "hardlockup"):
        skip = _SKIP_STALL
    if family == "odebug" or hit.fields.get("what") == "held lock freed":
        skip = _SKIP_ODEBUG
    for source in hit.sig.func:
        found: str | None = None
        if source == "field":
            value = hit.fields.get("func")
            # A WARN() may sit in a helper that warns for its caller (ref_tracker_free);
            # a sanitizer names the faulting function itself (even __lock_acquire).
            own = _SKIP if family == "warning" else _SKIP_FIELD
            if isinstance(value, str) and value and not own.match(_name(value)):
                found = _name(value)
        elif source == "comm":
            value = hit.fields.get("comm")
            found = value.strip() if isinstance(value, str) and value.strip() else None
        elif source == "rip":
            found = _first(hit.window, _RIP, skip)
        elif source == "trace":
            found = _frames(hit.window, skip)
        elif source == "at":
            found = _first(hit.window, _AT, _SKIP)
        elif source == "hint":
            found = _first([_msg(hit), *hit.window], _HINT, _SKIP)
        elif source == "inflight":
            found = _first(hit.window, _INFLIGHT, _SKIP)
        if found:
            return found
    return None


def _msg(hit: Hit) -> str:
    line = hit.line
    if line is None:
        return ""
    return (line.inner if hit.inner and line.inner is not None else line.message).strip()


def _ubsan_kind(hit: Hit) -> str:
    kind = str(hit.fields.get("kind", ""))
    if hit.sig.name == "ubsan_detail":
        detail = _msg(hit)
    elif kind.lower() == "undefined behaviour":
        detail = str(hit.fields.get("ubsan_detail", ""))
    else:
        return kind
    return next((k for start, k in _UBSAN_KINDS if detail.startswith(start)), "undefined-behaviour")


def _panic_reason(reason: str) -> str:
    """A panic reason without what varies between runs: `exitcode=`, the advice after
    the first sentence."""
    for cut in (" exitcode=", ".  ", " --- "):
        reason = reason.split(cut, 1)[0]
    return reason.rstrip(". ")


def title(hit: Hit) -> str | None:
    """The CI-bot style title of the report `hit` starts, or None for a signature
    without one."""
    template = hit.sig.title
    if template is None:
        return None
    values: dict[str, Any] = {k: str(v) for k, v in hit.fields.items()}
    if hit.sig.family == "ubsan":
        values["kind"] = _ubsan_kind(hit)
    if "reason" in values:
        values["reason"] = _panic_reason(values["reason"])
    if "what" in values and hit.sig.name == "arm64_paging_oops":
        values["what"] = values["what"].removesuffix(" at virtual address")
    if "what" in values and hit.sig.name == "stack_guard_page" and values["what"]:
        values["what"] = values["what"].strip() + " "
    func = function(hit)
    if func and hit.sig.name == "kcsan_report" and hit.fields.get("func2"):
        func = f"{func} / {_name(str(hit.fields['func2']))}"
    if func:
        values["func"] = func
    elif " in {func}" in template:
        template = template.replace(" in {func}", "")
    text = template.format_map(_Default(values))
    return " ".join(text.split())


class _Default(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return ""
