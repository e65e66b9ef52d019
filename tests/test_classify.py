"""The outcome classifier: the recorded corpus, each precedence rule, and untrusted input.

The corpus (tests/data/corpus/*.log) is data: each file's header says what the
classifier must conclude, so adding a log is enough to test it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lab.classify import (
    CLASSES,
    MAX_EVIDENCE,
    RULES,
    Classification,
    RunFacts,
    classify,
    normalise,
    shown,
)
from lab.classify.signatures import BY_NAME, ROLES, SIGNATURES
from lab.errors import LabError

DATA = Path(__file__).parent / "data"
CORPUS = DATA / "corpus"
DOCS = Path(__file__).parent.parent / "docs" / "outcomes.md"


# --- the corpus -------------------------------------------------------------------


@dataclass
class Case:
    name: str
    console: str
    outcome: str = ""
    rule: str | None = None
    notes: list[str] = field(default_factory=list)
    facts: RunFacts | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    evidence: list[str] = field(default_factory=list)
    matched: list[str] = field(default_factory=list)


def load_case(path: Path) -> Case:
    """Header lines `KEY: value`, a blank line, then the raw log byte for byte."""
    head, sep, body = path.read_bytes().partition(b"\n\n")
    assert sep, f"{path.name}: no blank line after the header"
    case = Case(path.stem, body.decode("utf-8", errors="replace"))
    for line in head.decode().splitlines():
        key, colon, value = line.partition(": ")
        assert colon, f"{path.name}: header line {line!r} is not 'KEY: value'"
        if key == "OUTCOME":
            case.outcome = value
        elif key == "RULE":
            case.rule = value
        elif key == "NOTE":
            case.notes.append(value)
        elif key == "FACTS":
            case.facts = RunFacts.from_mapping(json.loads(value))
        elif key == "FIELD":
            name, eq, raw = value.partition("=")
            assert eq, f"{path.name}: FIELD {value!r} is not key=json"
            case.fields[name] = json.loads(raw)
        elif key == "EVIDENCE":
            case.evidence.append(value)
        elif key == "MATCHED":
            case.matched.append(value)
        else:
            raise AssertionError(f"{path.name}: unknown header {key!r}")
    assert case.outcome in CLASSES, f"{path.name}: OUTCOME {case.outcome!r} is not a class"
    assert case.notes, f"{path.name}: say where the log comes from in a NOTE"
    return case


CORPUS_FILES = sorted(CORPUS.glob("*.log"))


def test_corpus_is_there() -> None:
    assert len(CORPUS_FILES) >= 20
    outcomes = {load_case(p).outcome for p in CORPUS_FILES}
    assert {"pass", "fault_livelock", "oom_kill", "panic", "boot_failure", "sigbus"} <= outcomes


@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.stem for p in CORPUS_FILES])
def test_corpus(path: Path) -> None:
    case = load_case(path)
    c = classify(case.console, case.facts)
    assert c.outcome == case.outcome, f"{c.detail} (rule {c.rule})"
    if case.rule is not None:
        assert c.rule == case.rule
    for key, want in case.fields.items():
        assert key in c.fields, f"no field {key!r}; fields: {c.fields}"
        assert json.loads(json.dumps(c.fields[key])) == want, key
    texts = [e.text for e in c.evidence]
    for want in case.evidence:
        assert any(want in t for t in texts), f"no evidence line contains {want!r}: {texts}"
    for name in case.matched:
        assert name in c.matched
    _check_shape(c, case.console)


def _check_shape(c: Classification, console: str) -> None:
    """Evidence lines are real lines of the log, with their numbers and stamps."""
    lines = console.replace("\r", "").split("\n")
    assert 0 < len(c.evidence) <= MAX_EVIDENCE
    for e in c.evidence:
        if e.line_no:
            assert shown(lines[e.line_no - 1]).startswith(e.text.rstrip("…"))
        else:
            assert e.signature.startswith(("agent:", "lab:"))
    out = json.loads(json.dumps(c.to_json()))
    assert out["outcome"] == c.outcome
    assert all({"line_no", "text"} <= set(e) for e in out["evidence"])


# --- normalisation ----------------------------------------------------------------


def test_kernel_stamp_and_line_numbers() -> None:
    lines = normalise("first\r\r\n[    1.234567] Run /init as init process\r\n\nlast")
    assert [(x.line_no, x.message) for x in lines] == [
        (1, "first"),
        (2, "Run /init as init process"),
        (3, ""),
        (4, "last"),
    ]
    assert lines[1].ktime == 1.234567
    assert lines[1].text == "[    1.234567] Run /init as init process"
    assert lines[0].ktime is None


def test_timed_log_host_stamp_in_front_of_the_kernel_stamp() -> None:
    lines = normalise(
        "[   0.712131] [    0.500743] Run /init as init process\n"
        "[   0.805243] LABREADY 26d52646447300cd\n"
        "[   2.535908] [    2.324351] reboot: Restarting system\n"
    )
    assert [x.ktime for x in lines] == [0.500743, None, 2.324351]
    assert [x.host_time for x in lines] == [0.712131, 0.805243, 2.535908]
    assert lines[1].message == "LABREADY 26d52646447300cd"
    c = classify("\n".join(x.text for x in lines))
    assert c.outcome == "pass"
    assert {e.ktime for e in c.evidence if e.signature == "reboot_restart"} == {2.324351}


def test_syslog_level_caller_id_and_escapes() -> None:
    lines = normalise(
        "<4>[    3.000001] Huh VM_FAULT_OOM leaked out to the #PF handler. Retrying PF\n"
        "\x1bc\x1b[?7l\x1b[2J[    0.000000] Linux version 6.1.192\n"
        "<6>reboot: Power down\n"
        "[    0.015038]   Normal   empty\n"
        "[    9.500000][  T123] oom_reaper: reaped process 7 (x), now anon-rss:0kB\n"
    )
    assert lines[0].level == 4 and lines[0].ktime == 3.000001
    assert lines[0].message.startswith("Huh VM_FAULT_OOM")
    assert lines[1].message == "Linux version 6.1.192" and lines[1].ktime == 0.0
    assert lines[2].message == "reboot: Power down" and lines[2].level == 6
    assert lines[3].message == "  Normal   empty"  # indentation is part of the message
    assert lines[4].ktime == 9.5
    assert lines[4].message.startswith("oom_reaper: reaped process 7")
    # A timed log: the host stamp, then the level, the printk stamp and the caller id.
    timed = normalise(
        "[  10.100000] <6>[    9.500000][  T123] oom_reaper: reaped process 7 (x), now\n"
        "[  10.200000] userspace output\n"
    )
    assert (timed[0].host_time, timed[0].ktime, timed[0].level) == (10.1, 9.5, 6)
    assert timed[0].message.startswith("oom_reaper: reaped process 7")
    assert (timed[1].host_time, timed[1].ktime) == (10.2, None)


def test_evidence_shows_control_characters_escaped() -> None:
    log = BOOT + "\x1b]0;owned\x07\x1b[2J[    2.0] potentially unexpected fatal signal 7.\n"
    c = classify(log)
    assert c.outcome == "sigbus"
    assert c.evidence[0].line_no == 2
    assert c.evidence[0].text == (
        "\\x1b]0;owned\\x07\\x1b[2J[    2.0] potentially unexpected fatal signal 7."
    )


def test_echoed_kernel_lines_count_once() -> None:
    huh = "[    6.539831] Huh VM_FAULT_OOM leaked out to the #PF handler. Retrying PF"
    log = f"{huh}\nuserspace says:\n      1 {huh}\nBANNER: {huh}\n"
    c = classify(log, RunFacts(ready=True, deadline="test"))
    assert c.outcome == "fault_livelock"
    assert c.fields["huh_lines"] == 1


def test_kernel_line_interleaved_with_userspace_output() -> None:
    log = BOOT + "SMOKE PA[    2.000000] potentially unexpected fatal signal 7.\n"
    c = classify(log)
    assert c.outcome == "sigbus"
    assert c.evidence[0].ktime == 2.0


# --- the signature table ------------------------------------------------------------

# One real-format example line per signature (the message after the printk stamp).
EXAMPLES: dict[str, str] = {
    "panic_on_oom": "Kernel panic - not syncing: Out of memory: system-wide panic_on_oom is "
    "enabled",
    "oom_deadlock_panic": "Kernel panic - not syncing: System is deadlocked on memory",
    "kernel_panic": "Kernel panic - not syncing: Fatal exception",
    "x86_page_fault_oops": "BUG: unable to handle page fault for address: ffff888012345000",
    "x86_null_deref_oops": "BUG: kernel NULL pointer dereference, address: 0000000000000008",
    "arm64_paging_oops": "Unable to handle kernel paging request at virtual address "
    "ffff000012345000",
    "general_protection_fault": "general protection fault, probably for non-canonical address "
    "0xdffffc0000000001: 0000 [#1] PREEMPT SMP KASAN",
    "x86_oops": "Oops: 0002 [#1] PREEMPT SMP NOPTI",
    "arm64_internal_error": "Internal error: Oops: 0000000096000047 [#1] PREEMPT SMP",
    "x86_invalid_opcode": "invalid opcode: 0000 [#1] PREEMPT SMP NOPTI",
    "kernel_bug_at": "kernel BUG at lib/genalloc.c:255!",
    "bad_page_state": "BUG: Bad page state in process smtest  pfn:1bc00",
    "bad_page_state_suppressed": "BUG: Bad page state: 3 messages suppressed",
    "soft_lockup": "BUG: soft lockup - CPU#0 stuck for 22s! [smtest:123]",
    "kasan_report": "BUG: KASAN: use-after-free in secretmem_fault+0x1f/0x200",
    "kernel_bug_other": "BUG: spinlock bad magic on CPU#0, smtest/123",
    "hung_task": "INFO: task smtest:123 blocked for more than 120 seconds.",
    "rcu_stall": "rcu: INFO: rcu_preempt self-detected stall on CPU",
    "page_dumped": "page dumped because: VM_BUG_ON_FOLIO(folio_test_lru(folio))",
    "pages_still_in_use": "512 pages are still in use!",
    "kernel_warning": "WARNING: CPU: 1 PID: 212 at mm/secretmem.c:480 secretmem_fault+0x1a/0x90",
    "kernel_warning_other": "WARNING: kernel stack frame pointer at 000000001 in smtest:1 has "
    "bad value 0000000000000000",
    "stack_protector_panic": "Kernel panic - not syncing: stack-protector: Kernel stack is "
    "corrupted in: udp4_lib_lookup2+0x7ea/0x7f0",
    "x86_page_fault_old": "BUG: unable to handle kernel paging request at ffffffffffffffff",
    "stack_guard_page": "BUG: TASK stack guard page was hit at ffffc90000017ff8 (stack is "
    "ffffc90000018000..ffffc90000020000)",
    "divide_error": "Oops: divide error: 0000 [#1] PREEMPT SMP NOPTI",
    "usercopy_abort": "usercopy: Kernel memory exposure attempt detected from vmalloc (offset "
    "975108, size 249596)!",
    "bad_page_map": "BUG: Bad page map in process smtest  pte:800000012345f067 pmd:12345067",
    "hard_lockup": "NMI watchdog: Watchdog detected hard LOCKUP on cpu 79",
    "kmsan_report": "BUG: KMSAN: uninit-value in virtqueue_add+0x20e2/0x60f0",
    "kcsan_report": "BUG: KCSAN: data-race in exit_signals / prepare_signal",
    "kfence_report": "BUG: KFENCE: use-after-free write in down_write+0x15/0x40",
    "workqueue_lockup": "BUG: workqueue lockup - pool cpus=0 node=0 flags=0x0 nice=0 stuck "
    "for 56s!",
    "scheduling_while_atomic": "BUG: scheduling while atomic: smtest/123/0x00000002",
    "sleeping_in_atomic": "BUG: sleeping function called from invalid context at "
    "kernel/locking/mutex.c:586",
    "ubsan_report": "UBSAN: array-index-out-of-bounds in lib/lstring.c:152:13",
    "ubsan_detail": "index 17 is out of range for type 'char [1]'",
    "refcount_warning": "refcount_t: underflow; use-after-free.",
    "odebug_warning": "ODEBUG: free active (active state 0) object type: timer_list hint: "
    "delayed_work_timer_fn+0x0/0x90",
    "usercopy_warning": "Bad or missing usercopy whitelist? Kernel memory exposure attempt "
    "detected from SLUB object 'simplefs_cache' (offset 4, size 4)!",
    "lockdep_deadlock": "WARNING: possible circular locking dependency detected",
    "lockdep_inconsistent": "WARNING: inconsistent lock state",
    "lockdep_other": "WARNING: suspicious RCU usage",
    "kernel_warning_new": "WARNING: fs/iomap/buffered-io.c:289 at ifs_free+0x344/0x400, CPU#0: "
    "kswapd0/69",
    "oom_kill_choice": "Memory cgroup out of memory: Kill process 24572 (java) score 0 or "
    "sacrifice child",
    "oom_invoked": "python3 invoked oom-killer: gfp_mask=0x100dc2(GFP_HIGHUSER|__GFP_ZERO), "
    "order=0, oom_score_adj=0",
    "oom_summary": "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,"
    "mems_allowed=0,global_oom,task_memcg=/,task=python3,pid=412,uid=0",
    "oom_killed_process": "Out of memory: Killed process 412 (python3) total-vm:10kB, "
    "anon-rss:1kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0",
    "memcg_oom_killed_process": "Memory cgroup out of memory: Killed process 29 (dd) "
    "total-vm:67792kB, anon-rss:32620kB",
    "oom_reaped": "oom_reaper: reaped process 412 (python3), now anon-rss:0kB, file-rss:0kB, "
    "shmem-rss:0kB",
    "oom_reap_failed": "oom_reaper: unable to reap pid:412 (python3)",
    "oom_victim_exiting": "Out of memory: OOM victim 412 (python3) is already exiting. Skip "
    "killing the task",
    "oom_no_killable": "Out of memory and no killable processes...",
    "fault_oom_huh": "Huh VM_FAULT_OOM leaked out to the #PF handler. Retrying PF",
    "fault_oom_suppressed": "pagefault_out_of_memory: 2044219 callbacks suppressed",
    "fatal_sigbus": "potentially unexpected fatal signal 7.",
    "arm64_unhandled_exception": "smtest[212]: unhandled exception: DABT (lower EL), ESR "
    "0x0000000092000007, level 3 translation fault in smtest[400000+1000]",
    "fatal_signal_other": "potentially unexpected fatal signal 11.",
    "x86_segfault": "smtest[212]: segfault at 0 ip 0000000000401000 sp 00007ffd error 4",
    "cma_alloc_failed": "cma: cma_alloc: secretmem: alloc failed, req-size: 512 pages, ret: -12",
    "cma_reserved": "cma: Reserved 64 MiB at 0x000000001bc00000",
    "cma_reserve_failed": "cma: Failed to reserve 64 MiB",
    "page_allocation_failure": "smtest: page allocation failure: order:9, "
    "mode:0x140cc2(GFP_HIGHUSER|__GFP_COMP), nodemask=(null)",
    "secretmem_banner": "secretmem: lab variant pool=cma fallback=0 reserve=0 fault=oom "
    "charge=page v16lit=0 enabled=1",
    "lab_era": "lab era: 5.11 oom semantics",
    "secretmem_reserved": "secretmem: reserved 64 MiB CMA",
    "secretmem_cma_failed": "secretmem: CMA reservation failed: -12",
    "secretmem_refill_failed": "secretmem: refill failed: -12",
    "secretmem_reservation_failed": "secretmem: reservation of 512 pages failed: -12",
    "secretmem_leak": "secretmem: leaking busy chunk at pfn 0x1bc00",
    "callbacks_suppressed": "cma_alloc: 2043169 callbacks suppressed",
    "qemu_message": "qemu-system-x86_64: -kernel /nonexistent: No such file or directory",
    "init_started": "Run /init as init process",
    "lab_ready": "LABREADY 947a504757972843",
    "lab_testcase": "lab: testcase depletion start",
    "lab_agent_exit": "LABAGENT-EXIT 0",
    "reboot_restart": "reboot: Restarting system",
    "reboot_machine_restart": "reboot: machine restart",
    "reboot_power_down": "reboot: Power down",
    "reboot_halted": "reboot: System halted",
}


def test_every_signature_has_an_example() -> None:
    assert set(EXAMPLES) == set(BY_NAME)


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_signature_matches_its_example(name: str) -> None:
    c = classify(f"[   12.000100] {EXAMPLES[name]}\n")
    assert c.matched == (name,), f"{EXAMPLES[name]!r} matched {c.matched}"


def test_signature_table_is_well_formed() -> None:
    names = [s.name for s in SIGNATURES]
    assert len(names) == len(set(names))
    for s in SIGNATURES:
        assert re.fullmatch(r"[a-z0-9_]+", s.name)
        assert s.role in ROLES
        assert s.outcome is None or s.outcome in CLASSES
        assert (s.outcome is None) == (s.role in ("info", "end", "marker")), s.name
        assert s.source and s.words


def test_fields_are_extracted() -> None:
    c = classify(
        "[ 1.0] python3 invoked oom-killer: gfp_mask=0x100dc2(GFP_HIGHUSER|__GFP_ZERO), "
        "order=0, oom_score_adj=0\n"
        "[ 1.0] CPU: 1 PID: 212 Comm: python3 Not tainted 6.1.192 #1\n"
        "[ 1.1] oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,"
        "global_oom,task_memcg=/,task=python3,pid=212,uid=1000\n"
        "[ 1.1] Out of memory: Killed process 212 (python3) total-vm:10kB, anon-rss:1kB\n"
        "[ 1.2] oom_reaper: reaped process 212 (python3), now anon-rss:0kB\n"
    )
    assert c.outcome == "oom_kill"
    assert c.fields["gfp_mask"] == "0x100dc2"
    assert c.fields["gfp_flags"] == "GFP_HIGHUSER|__GFP_ZERO"
    assert c.fields["order"] == 0
    assert c.fields["invoker_pid"] == 212
    assert c.fields["victim_role"] == "the task that invoked the OOM killer"
    assert c.fields["constraint"] == "CONSTRAINT_NONE"
    assert [e.signature for e in c.evidence] == [
        "oom_invoked",
        "oom_summary",
        "oom_killed_process",
        "oom_reaped",
    ]


# --- precedence: one synthetic case per rule ------------------------------------------

LINUX = "[    0.000000] Linux version 6.1.192 (lab@lab) #1 SMP\n"
BOOT = "[    0.600000] Run /init as init process\n"
READY = BOOT + "LABREADY 1234abcd\n"
END = "[    9.000000] reboot: Power down\n"
BANNER = (
    "[    0.400000] secretmem: lab variant pool=cma fallback=0 reserve=0 fault=oom "
    "charge=page v16lit=0 enabled=1\n"
)
HUH = "[    3.000000] Huh VM_FAULT_OOM leaked out to the #PF handler. Retrying PF\n"
KILL = (
    "[    4.000000] python3 invoked oom-killer: gfp_mask=0x100dc2(GFP_HIGHUSER|__GFP_ZERO), "
    "order=0, oom_score_adj=0\n"
    "[    4.000001] CPU: 0 PID: 99 Comm: python3 Not tainted 6.1.192 #1\n"
    "[    4.100000] Out of memory: Killed process 412 (bigapp) total-vm:100kB, anon-rss:90kB\n"
)
# The harness (pid 38, oom_score_adj -1000) allocates with nothing killable left.
HARNESS_SPAWN = {
    "type": "spawn",
    "testcase": "depletion",
    "name": "testcase:depletion",
    "role": "harness",
    "pid": 38,
    "oom_score_adj": -1000,
    "t": 0.0,
}
HARNESS_OOM = (
    "[    4.000000] python3 invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|"
    "__GFP_COMP), order=0, oom_score_adj=-1000\n"
    "[    4.000001] CPU: 1 PID: 38 Comm: python3 Not tainted 6.1.192 #1\n"
    "[    4.100000] Out of memory: Killed process 38 (python3) total-vm:100kB, anon-rss:90kB\n"
)
DEADLOCK = (
    "[    4.200000] Out of memory and no killable processes...\n"
    "[    4.200001] Kernel panic - not syncing: System is deadlocked on memory\n"
)
WARN = (
    "[    5.000000] ------------[ cut here ]------------\n"
    "[    5.000001] WARNING: CPU: 0 PID: 212 at mm/secretmem.c:480 secretmem_fault+0x1a/0x90\n"
    "[    5.000002] Modules linked in:\n"
    "[    5.000003] ---[ end trace 0000000000000000 ]---\n"
)
OOPS = (
    "[    6.000000] BUG: unable to handle page fault for address: ffff888012345000\n"
    "[    6.000001] #PF: supervisor write access in kernel mode\n"
    "[    6.000002] #PF: error_code(0x0002) - not-present page\n"
    "[    6.000003] Oops: 0002 [#1] PREEMPT SMP NOPTI\n"
    "[    6.000004] CPU: 1 PID: 212 Comm: python3 Not tainted 6.1.192 #1\n"
    "[    6.000005] ---[ end trace 0000000000000000 ]---\n"
)
BUG = (
    "[    7.000000] BUG: Bad page state in process python3  pfn:1bc00\n"
    "[    7.000001] page dumped because: page still charged to cgroup\n"
)
OOPS_USER = (
    "[    7.000000] BUG: kernel NULL pointer dereference, address: 0000000000000008\n"
    "[    7.000001] #PF: supervisor read access in kernel mode\n"
    "[    7.000002] Oops: 0000 [#1] PREEMPT SMP NOPTI\n"
    "[    7.000003] CPU: 1 PID: 4321 Comm: syz-executor6 Not tainted 6.1.192 #1\n"
)
PANIC = (
    "[    8.000000] Kernel panic - not syncing: Fatal exception\n"
    "[    8.000001] Kernel Offset: disabled\n"
)


def task(name: str, pid: int, status: str, signal: str | None = None, **kw: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "type": "task",
        "testcase": "depletion",
        "name": name,
        "pid": pid,
        "comm": "python3",
        "status": status,
        "signal": signal,
        "si_code": None,
        "exit_code": None,
        "seconds": 30.0,
    }
    rec.update(kw)
    return rec


def result(
    verdict: str, observed: str | None = None, message: str = "ok", **kw: Any
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "type": "result",
        "testcase": "depletion",
        "verdict": verdict,
        "observed": observed,
        "message": message,
        "data": {},
    }
    rec.update(kw)
    return rec


def facts(*records: dict[str, Any], **kw: Any) -> RunFacts:
    kw.setdefault("ready", True)
    kw.setdefault("qemu_exit", 0)
    return RunFacts(records=(*records, {"type": "done"}), **kw)


EXPECT_CMA = {"pool": "cma", "fault": "oom"}

# (rule id, console, facts, expected class)
RULE_CASES: list[tuple[str, str, RunFacts | None, str]] = [
    (
        "banner-mismatch",
        BANNER + READY + PANIC,
        facts(result("pass"), expected_banner={"pool": "pmd"}),
        "infra_error",
    ),
    (
        "banner-mismatch",
        READY + END,
        facts(result("pass"), expected_banner=EXPECT_CMA),
        "infra_error",
    ),
    # A foreign log needs positive evidence that userspace never ran: the boot in the log
    # and no userspace before the panic, a boot-only panic reason, a boot-path trace.
    ("panic-before-userspace", LINUX + BANNER + PANIC, None, "boot_failure"),
    (
        "panic-before-userspace",
        "[    0.9] Kernel panic - not syncing: No working init found.  Try passing init=\n",
        None,
        "boot_failure",
    ),
    (
        "panic-before-userspace",
        BANNER + PANIC + "[    8.000002] Call Trace:\n[    8.000003]  start_kernel+0xd8a/0xd90\n",
        None,
        "boot_failure",
    ),
    # ... and without any (a log that starts mid-run) a panic is a panic.
    ("panic", BANNER + PANIC, None, "panic"),
    # A user task named by the report says userspace ran, even with the boot in the log.
    ("panic", LINUX + OOPS_USER + PANIC, None, "panic"),
    (
        "panic-before-userspace",
        BANNER + PANIC,
        RunFacts(expected_banner=EXPECT_CMA),
        "boot_failure",
    ),
    (
        "harness-oom-panic",
        READY + HARNESS_OOM + DEADLOCK,
        facts(HARNESS_SPAWN, {"type": "ready", "boot_id": "x", "agent_pid": 36}),
        "infra_error",
    ),
    ("panic", READY + "hello from userspace\n" + OOPS + PANIC, None, "panic"),
    # the same panic with the OOM killer invoked by a task of the scenario: the kernel's
    ("panic", READY + KILL + DEADLOCK, facts(HARNESS_SPAWN), "panic"),
    ("panic", BOOT + "INIT START\n" + KILL + PANIC, None, "panic"),
    ("bug", READY + WARN + OOPS + BUG + KILL + END, facts(result("pass")), "bug"),
    ("oops", READY + WARN + OOPS + KILL + END, facts(result("pass")), "oops"),
    ("warn", READY + HUH + KILL + WARN + END, facts(result("pass")), "warn"),
    (
        "harness-death",
        READY + END,
        facts(
            HARNESS_SPAWN,
            task("testcase:depletion", 38, "signaled", "SIGKILL", role="harness"),
            result("error", message="test case process (harness) killed by SIGKILL"),
        ),
        "infra_error",
    ),
    # a record from before roles: the harness is the task named testcase:NAME
    (
        "harness-death",
        READY + HARNESS_OOM + END,
        facts(task("testcase:depletion", 38, "signaled", "SIGKILL"), result("error")),
        "infra_error",
    ),
    (
        "precondition-failed",
        READY + HUH + KILL + END,
        facts(
            {
                "type": "precondition",
                "testcase": "depletion",
                "check": "attacker_alive",
                "ok": False,
                "message": "the attacker holds its files",
                "data": {"files": 3},
            },
            result("error", message="precondition failed", precondition="attacker_alive"),
        ),
        "infra_error",
    ),
    (
        "oom-kill",
        READY + HUH + KILL + END,
        facts(task("victim", 212, "timeout"), result("fail", message="x")),
        "oom_kill",
    ),
    (
        "fault-livelock",
        READY + HUH,
        facts(task("victim", 212, "timeout"), result("pass")),
        "fault_livelock",
    ),
    ("fault-livelock", READY + HUH, RunFacts(ready=True, deadline="test"), "fault_livelock"),
    (
        "fault-livelock",
        BOOT + HUH + "[    8.0] pagefault_out_of_memory: 9 callbacks suppressed\n" + END,
        None,
        "fault_livelock",
    ),
    ("fault-livelock", BOOT + "userspace\n" + HUH, None, "fault_livelock"),
    ("deadline", BOOT, RunFacts(ready=False, deadline="boot"), "hang"),
    (
        "deadline",
        READY + "[ 3.0] lab: testcase depletion start\n",
        RunFacts(ready=True, deadline="test", records=({"type": "error", "message": "x"},)),
        "hang",
    ),
    (
        "qemu-failed",
        "qemu-system-x86_64: -kernel bzImage: No such file or directory\n",
        RunFacts(ready=False, qemu_exit=1),
        "infra_error",
    ),
    # QEMU died of a signal the lab did not send (the soak test's killer): no verdict
    # on the kernel, whether it came before the ready marker or mid-test.
    (
        "qemu-signaled",
        BOOT + "[    1.0] something\n",
        RunFacts(ready=False, qemu_exit=137),
        "infra_error",
    ),
    (
        "qemu-signaled",
        READY + "[    2.0] lab: testcase depletion start\n",
        RunFacts(ready=True, qemu_exit=137, records=(task("victim", 212, "signaled", "SIGBUS"),)),
        "infra_error",
    ),
    (
        "no-userspace",
        BOOT + "[    1.0] something\n",
        RunFacts(ready=False, qemu_exit=0),
        "boot_failure",
    ),
    (
        "agent-error",
        READY + END,
        facts({"type": "error", "message": "unknown test case"}),
        "infra_error",
    ),
    (
        "protocol-problems",
        READY + END,
        facts(result("pass"), problems=("not JSON: b'{'",)),
        "infra_error",
    ),
    (
        "protocol-problems",
        READY + END,
        facts({"type": "task", "name": 5}, result("pass")),
        "infra_error",
    ),
    (
        "test-raised",
        READY + END,
        facts(result("error", message="OSError: [Errno 38] Function not implemented")),
        "fail",
    ),
    ("task-timeout", READY + END, facts(task("victim", 212, "timeout"), result("pass")), "hang"),
    (
        "task-timeout",
        READY + END,
        facts(result("error", message="test case overran its timeout of 60s", timeout=True)),
        "hang",
    ),
    (
        "sigbus",
        READY + END,
        facts(task("victim", 212, "signaled", "SIGBUS", si_code="BUS_ADRERR"), result("fail")),
        "sigbus",
    ),
    # the test case's word for SIGBUS, backed by the task that died of it on purpose
    (
        "sigbus",
        READY + END,
        facts(
            task("filler", 212, "signaled", "SIGBUS", expected_signal="SIGBUS"),
            result("pass", observed="sigbus"),
        ),
        "sigbus",
    ),
    (
        "sigbus",
        BOOT + "[    2.0] potentially unexpected fatal signal 7.\n"
        "[    2.0] CPU: 0 PID: 212 Comm: smtest Not tainted 6.1.192 #1\n" + END,
        None,
        "sigbus",
    ),
    ("test-failed", READY + END, facts(result("fail", message="victim not killed")), "fail"),
    ("test-observed", READY + END, facts(result("pass", observed="refused")), "refused"),
    (
        "test-observed",
        READY + HUH + END,
        facts(
            {
                "type": "spawn",
                "testcase": "depletion",
                "name": "victim",
                "role": "victim",
                "pid": 212,
                "t": 0.5,
            },
            task("victim", 212, "exited", exit_code=0),
            result(
                "pass",
                observed="fault_livelock",
                about={"name": "victim", "pid": 212, "role": "victim"},
            ),
        ),
        "fault_livelock",
    ),
    # a kernel class named with no kernel line behind it
    (
        "claim-unsupported",
        READY + END,
        facts(result("pass", observed="fault_livelock")),
        "infra_error",
    ),
    ("claim-unsupported", READY + END, facts(result("pass", observed="sigbus")), "infra_error"),
    ("test-passed", READY + HUH + END, facts(result("pass", observed="pass")), "pass"),
    (
        "no-result",
        READY + END,
        facts({"type": "ready", "boot_id": "x", "uptime": 1.0}),
        "infra_error",
    ),
    (
        "orderly-end",
        BANNER + READY + "[    2.0] cma: cma_alloc: secretmem: alloc failed, "
        "req-size: 512 pages, ret: -12\n" + HUH + END + "\n",
        None,
        "pass",
    ),
    ("log-stopped", BOOT + "userspace line\n", None, "hang"),
    ("log-stopped", "", None, "hang"),
    ("log-stopped", END + "[   10.0] Linux version 6.1.192\n", None, "hang"),
]


def test_every_rule_has_a_case() -> None:
    assert {r.id for r in RULES} == {case[0] for case in RULE_CASES}


@pytest.mark.parametrize(
    ("rule", "console", "run", "outcome"),
    RULE_CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(RULE_CASES)],
)
def test_rule(rule: str, console: str, run: RunFacts | None, outcome: str) -> None:
    c = classify(console, run)
    assert (c.rule, c.outcome) == (rule, outcome), c.detail
    assert c.rule_text == next(r.text for r in RULES if r.id == rule)
    assert c.evidence, "every class comes with evidence"
    assert c.outcome in CLASSES


def test_panic_detail_names_the_oops_and_its_trace() -> None:
    c = classify(READY + "hello\n" + OOPS + PANIC)
    assert c.fields["reason"] == "Fatal exception"
    assert c.fields["cause_signature"] == "x86_page_fault_oops"
    assert "after oops: BUG: unable to handle page fault" in c.detail
    sigs = [e.signature for e in c.evidence]
    assert "kernel_panic" in sigs and "x86_page_fault_oops" in sigs
    assert "context:x86_page_fault_oops" in sigs


def test_panic_mid_test_names_the_test_case() -> None:
    log = READY + "[    2.0] lab: testcase depletion start\n" + PANIC
    c = classify(log, facts())
    assert (c.outcome, c.fields["testcase"]) == ("panic", "depletion")
    assert "during test case depletion" in c.detail


def test_boot_failure_panic_evidence() -> None:
    c = classify((DATA / "consoles" / "x86_64-boot-panic.raw").read_bytes().decode())
    assert c.outcome == "boot_failure"
    first = c.evidence[0]
    assert first.line_no == 116 and first.ktime == 1.167804  # CR CR LF: one line
    assert first.text.endswith("VFS: Unable to mount root fs on unknown-block(0,0)")


def test_test_case_process_killed_by_sigbus_is_a_harness_death_not_a_raise() -> None:
    # What the agent sends when the test case's own process dies of a signal. The harness
    # is never the victim (issue 12): its SIGBUS is the lab failing, not the outcome.
    records = (
        task("testcase:depletion", 300, "signaled", "SIGBUS"),
        result("error", message="test case process killed by SIGBUS"),
    )
    c = classify(READY + END, facts(*records))
    assert (c.outcome, c.rule) == ("infra_error", "harness-death")
    assert (c.fields["harness_pid"], c.fields["signal"]) == (300, "SIGBUS")
    c = classify(READY + END, facts(result("error", message="ValueError: bad")))
    assert (c.outcome, c.fields["raised"]) == ("fail", True)
    assert c.evidence[0].text == "agent: result depletion: error: ValueError: bad"


def test_oom_victim_that_is_a_test_task() -> None:
    c = classify(
        READY + KILL + END, facts(task("attacker", 412, "signaled", "SIGKILL"), result("pass"))
    )
    assert c.fields["victim_is_culprit"] is True
    assert c.fields["victim_role"] == "test task 'attacker'"
    assert any(e.signature == "agent:task" for e in c.evidence)


def test_oom_bystander_detail() -> None:
    c = classify(
        READY + KILL + END, facts(task("victim", 212, "exited", exit_code=0), result("pass"))
    )
    assert c.fields["victim_role"] == "bystander"
    assert c.detail == (
        "oom_kill: killed 412 (bigapp) — a bystander, not the task that invoked the OOM "
        "killer (python3, pid 99)"
    )


def test_livelock_evidence_and_counts() -> None:
    huh = "".join(
        f"[    3.{i:06d}] Huh VM_FAULT_OOM leaked out to the #PF handler. Retrying PF\n"
        for i in range(12)
    )
    log = (
        READY
        + huh
        + "[    8.000000] pagefault_out_of_memory: 40 callbacks suppressed\n"
        + "[   13.000000] pagefault_out_of_memory: 60 callbacks suppressed\n"
    )
    c = classify(log, facts(task("victim", 212, "timeout", "SIGKILL"), result("pass")))
    assert c.outcome == "fault_livelock"
    assert c.fields["suppressed"] == [40, 60] and c.fields["suppressed_total"] == 100
    assert c.fields["huh_lines"] == 12
    sigs = [e.signature for e in c.evidence]
    assert sigs.count("fault_oom_huh") == 3 and sigs.count("fault_oom_suppressed") == 2
    assert c.evidence[-1].text == (
        "agent: depletion: task victim pid 212 (python3) timeout SIGKILL after 30.0s"
    )
    assert "no OOM kill" in c.detail


def test_huh_that_healed_is_not_a_livelock() -> None:
    # V16_LITERAL C0: an occasional Huh line, the retry succeeds, the test passes.
    c = classify(READY + HUH + END, facts(result("pass")))
    assert c.outcome == "pass"
    assert "fault_oom_huh" in c.matched


def test_deadline_hang_shows_the_tail() -> None:
    log = READY + "".join(f"line {i}\n" for i in range(30))
    c = classify(log, RunFacts(ready=True, deadline="test"))
    assert c.outcome == "hang" and c.fields["phase"] == "test"
    tail = [e.text for e in c.evidence if e.signature == "tail"]
    assert tail == [f"line {i}" for i in range(20, 30)]
    assert any(e.signature == "lab:deadline" for e in c.evidence)


def test_banner_absent_before_userspace_is_left_to_the_boot_rules() -> None:
    c = classify(BOOT, RunFacts(ready=False, qemu_exit=0, expected_banner=EXPECT_CMA))
    assert c.outcome == "boot_failure" and c.rule == "no-userspace"


ERA_511 = "[    0.900000] lab era: 5.11 oom semantics\n"
ERA_61 = "[    0.900000] lab era: 6.1 oom semantics\n"


def test_era_line_joins_the_banner_check() -> None:
    """Issue 10: the era is a second banner line; a cell asking for era 5.11 whose
    kernel says 6.1 (or says nothing) ran on the wrong kernel."""
    want = {**EXPECT_CMA, "era": "5.11"}
    ok = classify(BANNER + ERA_511 + READY + END, facts(result("pass"), expected_banner=want))
    assert ok.outcome == "pass"
    wrong = classify(BANNER + ERA_61 + READY + END, facts(result("pass"), expected_banner=want))
    assert wrong.outcome == "infra_error"
    assert wrong.rule == "banner-mismatch"
    assert "era=6.1 (expected 5.11)" in wrong.detail
    missing = classify(BANNER + READY + END, facts(result("pass"), expected_banner=want))
    assert missing.outcome == "infra_error"
    assert "era=None (expected 5.11)" in missing.detail
    # A cell that does not ask for an era ignores the line.
    plain = classify(
        BANNER + ERA_511 + READY + END, facts(result("pass"), expected_banner=EXPECT_CMA)
    )
    assert plain.outcome == "pass"


def test_era_line_not_yet_printed_when_qemu_died_is_not_a_wrong_kernel() -> None:
    """CI (soak): QEMU SIGKILLed between the secretmem banner and the era line; the
    console is cut short, not the wrong kernel: the boot rules (qemu-signaled) say why."""
    want = {**EXPECT_CMA, "era": "6.1"}
    c = classify(BANNER, RunFacts(ready=False, qemu_exit=137, expected_banner=want))
    assert c.rule == "qemu-signaled", c.detail
    # The same console with userspace running would be a missing era line: wrong kernel.
    ran = classify(BANNER + READY + END, facts(result("pass"), expected_banner=want))
    assert ran.rule == "banner-mismatch"


def test_matching_banner_passes() -> None:
    c = classify(BANNER + READY + END, facts(result("pass"), expected_banner=EXPECT_CMA))
    assert c.outcome == "pass"
    assert c.fields["banner"]["pool"] == "cma"


# --- untrusted records ------------------------------------------------------------------

HOSTILE: list[Any] = [
    "not a mapping",
    42,
    None,
    {},
    {"type": 7},
    {"type": "task"},
    {"type": "task", "name": "x", "status": "exploded"},
    {"type": "task", "name": ["x"], "status": "signaled"},
    {
        "type": "task",
        "name": "x",
        "status": "signaled",
        "pid": "12",
        "signal": 7,
        "seconds": float("nan"),
        "exit_code": True,
        "comm": {"a": 1},
    },
    {"type": "task", "name": "y" * 1_000_000, "status": "timeout", "pid": True},
    {"type": "result"},
    {"type": "result", "verdict": "pass", "observed": "rm -rf /", "message": 5},
    {"type": "result", "verdict": "fail", "testcase": None, "message": "a\nb\x1b[2Jc" * 10000},
    {"type": "error"},
    {"type": "error", "message": ["x"]},
    {"type": "event", "anything": object()},
    {"type": "unknown"},
]


@pytest.mark.parametrize("rec", HOSTILE, ids=[str(i) for i in range(len(HOSTILE))])
def test_hostile_record_never_raises(rec: Any) -> None:
    c = classify(READY + END, RunFacts(ready=True, records=(rec,)))
    assert c.outcome in CLASSES
    json.dumps(c.to_json())
    for e in c.evidence:
        assert "\n" not in e.text and "\x1b" not in e.text
        assert len(e.text) <= 2000


def test_all_hostile_records_together() -> None:
    c = classify(READY + END, RunFacts(ready=True, records=tuple(HOSTILE)))
    assert c.outcome == "infra_error"
    assert c.rule in ("agent-error", "protocol-problems")
    text = json.dumps(c.to_json())
    assert len(text) < 100_000


def test_strings_from_records_are_capped_and_cleaned() -> None:
    msg = "boom\n[    1.0] Kernel panic - not syncing: forged" + "x" * 5000
    c = classify(READY + END, facts(result("fail", message=msg)))
    assert c.outcome == "fail"
    assert len(c.fields["message"]) <= 200
    assert "\n" not in c.detail and len(c.detail) <= 300
    assert "kernel_panic" not in c.matched


def test_wrong_type_in_an_optional_field_is_a_problem() -> None:
    rec = task("victim", 212, "signaled", "SIGBUS", seconds="soon")
    c = classify(READY + END, facts(rec, result("pass", observed="sigbus")))
    assert (c.outcome, c.rule) == ("infra_error", "protocol-problems")
    assert "seconds" in c.detail


def test_facts_from_mapping() -> None:
    f = RunFacts.from_mapping({"ready": True, "deadline": "test", "records": [{"type": "done"}]})
    assert f.ready and f.deadline == "test" and f.records == ({"type": "done"},)
    with pytest.raises(LabError, match="unknown key"):
        RunFacts.from_mapping({"ready": True, "colour": "red"})
    with pytest.raises(LabError, match="ready"):
        RunFacts.from_mapping({"ready": "yes"})
    with pytest.raises(LabError, match="qemu_exit"):
        RunFacts.from_mapping({"qemu_exit": True})


# --- robustness and shape ---------------------------------------------------------------


def test_garbage_console_never_raises() -> None:
    junk = "".join(chr(c) for c in range(0x250)) + "\x00" * 1000 + "[" * 500 + "<" * 500
    for console in ("", "\n\n\n", junk, junk * 20, "[ 1.0]" * 10000, "x" * 2_000_000):
        c = classify(console)
        assert c.outcome in CLASSES
        json.dumps(c.to_json())
        assert all(len(e.text) <= 2000 for e in c.evidence)


def test_many_matches_are_bounded() -> None:
    log = READY + HUH * 50_000
    c = classify(log, RunFacts(ready=True, deadline="test"))
    assert c.outcome == "fault_livelock" and c.fields["huh_lines"] == 1
    log = READY + "".join(
        f"[ {i}.000001] Huh VM_FAULT_OOM leaked out to the #PF handler. Retrying PF\n"
        for i in range(20_000)
    )
    c = classify(log, RunFacts(ready=True, deadline="test"))
    assert c.fields["huh_lines"] == 20_000
    assert len(c.evidence) <= MAX_EVIDENCE


def test_json_shape() -> None:
    c = classify(READY + KILL + END, facts(result("pass")))
    out = c.to_json()
    want = {"outcome", "title", "detail", "rule", "rule_text", "evidence", "matched", "fields"}
    assert set(out) == want
    assert out["outcome"] == "oom_kill"
    assert out["evidence"][0] == {
        "line_no": 3,
        "text": "[    4.000000] python3 invoked oom-killer: gfp_mask=0x100dc2(GFP_HIGHUSER|"
        "__GFP_ZERO), order=0, oom_score_adj=0",
        "ktime": 4.0,
        "signature": "oom_invoked",
    }
    assert out["matched"] == [
        "init_started",
        "lab_ready",
        "oom_invoked",
        "oom_killed_process",
        "reboot_power_down",
    ]
    assert json.loads(json.dumps(out)) == out


def test_classes_are_stable() -> None:
    assert CLASSES == (
        "pass",
        "fail",
        "sigbus",
        "oom_kill",
        "fault_livelock",
        "refused",
        "oops",
        "bug",
        "warn",
        "panic",
        "hang",
        "boot_failure",
        "infra_error",
    )


def test_docs_list_every_signature_rule_and_class() -> None:
    doc = DOCS.read_text()
    for s in SIGNATURES:
        words = s.words.replace("|", "\\|")
        row = f"| `{s.name}` | {s.outcome or '—'} | {s.role} | {words} | {s.source} |"
        assert row in doc, f"docs/outcomes.md lacks (or has a stale) row:\n{row}"
    for r in RULES:
        assert f"`{r.id}`" in doc, f"docs/outcomes.md does not describe rule {r.id}"
    for cls in CLASSES:
        assert f"| `{cls}` |" in doc, f"docs/outcomes.md does not describe class {cls}"


def test_intended_signal_is_not_the_outcome() -> None:
    """A task that dies of the signal its test provoked on purpose (expected_signal) does
    not make the cell `sigbus`; the test case's own observation decides."""
    records = (
        {"type": "ready", "boot_id": "b", "uptime": 1.0},
        {
            "type": "task",
            "testcase": "api",
            "name": "beyond-eof",
            "pid": 40,
            "comm": "python3",
            "status": "signaled",
            "signal": "SIGBUS",
            "si_code": None,
            "exit_code": None,
            "seconds": 0.1,
            "expected_signal": "SIGBUS",
        },
        {
            "type": "result",
            "testcase": "api",
            "verdict": "pass",
            "observed": "pass",
            "message": "",
            "data": {},
        },
        {"type": "done"},
    )
    facts = RunFacts(ready=True, records=records)
    console = (
        "LABREADY b\n[    3.085413] potentially unexpected fatal signal 7.\n"
        "[    3.086026] CPU: 0 PID: 40 Comm: python3 Not tainted 6.1.192 #1\n"
        "[    4.0] reboot: Restarting system\n"
    )
    assert classify(console, facts).outcome == "pass"
    other = console.replace("PID: 40", "PID: 41")  # some other task died of SIGBUS
    assert classify(other, facts).outcome == "sigbus"


def test_refused_is_a_test_observation() -> None:
    records = (
        {"type": "ready", "boot_id": "b", "uptime": 1.0},
        {
            "type": "result",
            "testcase": "depletion",
            "verdict": "pass",
            "observed": "refused",
            "message": "",
            "data": {},
        },
        {"type": "done"},
    )
    result = classify("LABREADY b\n", RunFacts(ready=True, records=records))
    assert result.outcome == "refused" and result.rule == "test-observed"


@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.stem for p in CORPUS_FILES])
def test_corpus_through_lab_classify_json(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lab classify --json` gives each corpus file its class: a bare console log for
    foreign logs, a cell directory (console.log, result.jsonl, cell.json) when the
    lab's records are part of the case."""
    from lab import cli

    case = load_case(path)
    _, _, body = path.read_bytes().partition(b"\n\n")
    if case.facts is None:
        target = tmp_path / "console.log"
        target.write_bytes(body)
    else:
        target = tmp_path / "cell"
        target.mkdir()
        (target / "console.log").write_bytes(body)
        (target / "result.jsonl").write_text(
            "".join(json.dumps(dict(r)) + "\n" for r in case.facts.records)
        )
        (target / "cell.json").write_text(
            json.dumps(
                {
                    "ready": case.facts.ready,
                    "deadline": case.facts.deadline,
                    "qemu_exit": case.facts.qemu_exit,
                    "banner": dict(case.facts.expected_banner)
                    if case.facts.expected_banner
                    else None,
                }
            )
        )
    assert cli.main(["classify", "--json", str(target)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["outcome"] == case.outcome
    assert all({"line_no", "text"} <= set(e) for e in out["evidence"])
