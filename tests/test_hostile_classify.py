"""Hostile console text through the classifier (issue 15: D3, D14, D16; issue 12).

D3: every signature is linear on one long line, and the classifier bounds the line
length it matches, so that one guest line cannot stall a run.
D14: in lab cells only lines with a printk stamp are kernel lines (lab kernels have
CONFIG_PRINTK_TIME); foreign logs keep their tolerance but prefer stamped lines.
D16: bidi controls in console lines are shown as escapes, never raw.
"""

from __future__ import annotations

import importlib
import random
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_classify import BANNER, CORPUS_FILES, EXAMPLES, load_case
from test_labguest import _run_agent, guest_agent  # noqa: F401 (a fixture)

from lab import classify as cl
from lab.classify import RunFacts, classify
from lab.classify.signatures import SIGNATURES, Signature
from lab.report import clean as report_clean

normalise_module = importlib.import_module("lab.classify.normalise")

# --- D3: linear signatures ----------------------------------------------------------

N = 20_000  # a quadratic pattern needs seconds here, a linear one a millisecond
FILLERS = (" ", "a", "a ", "(", ")", ",", ":", "[", "]", "#", "0", "=", ": ", ") ", "\t")
CUTS = set(" :,()[]=#!-")


def _adversarial(sample: str) -> list[str]:
    """The sample with a long run inserted at each token boundary: generic fillers and
    pieces of the sample itself (e.g. `task=` repeated after `oom-kill:constraint=`)."""
    cuts = sorted({0, len(sample)} | {i + 1 for i, c in enumerate(sample) if c in CUTS})
    out = []
    for p in cuts:
        pieces = {*FILLERS, sample[p : p + 6], sample[max(0, p - 6) : p], sample[:p]}
        for piece in pieces - {""}:
            run = piece * (N // len(piece))
            out.append(sample[:p] + run + sample[p:])
            out.append(sample[:p] + run)
    return out


@pytest.mark.parametrize("sig", SIGNATURES, ids=[s.name for s in SIGNATURES])
def test_signature_is_linear_on_long_lines(sig: object) -> None:
    assert isinstance(sig, Signature)
    lines = _adversarial(EXAMPLES[sig.name])
    patterns = [sig.pattern]
    if sig.context is not None:
        patterns += list(sig.context.fields)

    def once(line: str) -> float:
        started = time.perf_counter()
        for pat in patterns:
            pat.match(line)
        if sig.context is not None:
            for pat in sig.context.fields:
                pat.search(line)
        return time.perf_counter() - started

    for line in lines:
        # Generous for a loaded machine: linear takes about 1 ms here. The best of three
        # tries, because a preempted try on a busy 2-core machine (CI seen at load 8)
        # is slow once, while a super-linear pattern is slow every time.
        took = min(once(line) for _ in range(3)) if once(line) >= 0.25 else 0.0
        assert took < 0.25, f"{took:.2f}s on {line[:60]!r}... ({len(line)} chars)"


REVIEW_LINES = {
    "panic-30k": "Kernel panic - not syncing: " + " " * 30_000 + "x",
    "banner-20k": "secretmem: lab variant" + " " * 20_000 + "x",
    "oom-task-40k": "oom-kill:constraint=a," + "task=b," * 40_000,
    "oom-victim-80k": "m: OOM victim 1 (" * 80_000,
    "1mb-spaces-panic": "Kernel panic - not syncing: " + " " * (1 << 20) + "x",
    "1mb-spaces-banner": "secretmem: lab variant " + " " * (1 << 20) + "x",
    "1mb-bad-page": "BUG: Bad page state in process " + " " * (1 << 20) + "x",
    "1mb-stamps": "[ " * (1 << 19),
    "1mb-escapes": "\x1b[" * (1 << 19),
    "1mb-letters": "a" * (1 << 20),
}


@pytest.mark.parametrize("line", REVIEW_LINES.values(), ids=list(REVIEW_LINES))
@pytest.mark.parametrize("lab", [False, True], ids=["foreign", "lab"])
def test_one_long_line_classifies_quickly(line: str, lab: bool) -> None:
    facts = RunFacts(ready=True, records=({"type": "done"},)) if lab else None
    for stamp in ("", "[    1.000000] "):
        started = time.perf_counter()
        c = classify(stamp + line + "\n", facts)
        took = time.perf_counter() - started
        assert took < 1.0, f"{took:.2f}s"
        assert all(len(e.text) <= cl.MAX_TEXT for e in c.evidence)


def test_a_long_kernel_line_still_matches_on_its_start() -> None:
    c = classify("[    1.000000] Kernel panic - not syncing: Fatal exception" + " x" * 600_000)
    assert c.outcome == "panic"  # a foreign panic with no evidence that userspace never ran
    assert str(c.fields["reason"]).startswith("Fatal exception x x")


# --- D14: kernel lines carry a printk stamp in lab cells ----------------------------

LAB_BOOT = (
    "[    0.400000] Linux version 6.1.192\n"
    "[    0.600000] Run /init as init process\n"
    "LABREADY 1234abcd\n"
    "[    0.700000] lab: testcase api start\n"
)
LAB_END = (
    "[    0.900000] lab: testcase api end\nLABAGENT-EXIT 0\n[    1.000000] reboot: Power down\n"
)
PASSED = RunFacts(
    ready=True,
    records=(
        {"type": "result", "testcase": "api", "verdict": "pass"},
        {"type": "done"},
    ),
)


@pytest.mark.parametrize(
    "fake",
    [
        "WARNING: deprecated option",
        "BUG: x",
        "Kernel panic - not syncing: x",
        "Out of memory: Killed process 40 (python3)",
        "BUG: Bad page state in process a  pfn:1234",
        "potentially unexpected fatal signal 7.",
        "general protection fault: 0000 [#1] SMP",
    ],
)
def test_unstamped_kernel_text_in_a_lab_cell_is_userspace(fake: str) -> None:
    c = classify(LAB_BOOT + fake + "\n" + LAB_END, PASSED)
    assert c.outcome == "pass", c.detail
    # the same line with a printk stamp is the kernel's
    stamped = classify(LAB_BOOT + "[    0.800000] " + fake + "\n" + LAB_END, PASSED)
    assert stamped.outcome != "pass"


KERNEL_CLASSES = {"oom_kill", "fault_livelock", "panic", "oops", "bug", "warn", "boot_failure"}


def _forged(victim: int) -> str:
    """What a guest's userspace can print to the console: every kernel line the classifier
    knows, about the victim and about init, without the kernel's printk stamp."""
    return (
        "secretmem: lab variant pool=cma fallback=0 reserve=0 fault=oom charge=page "
        "v16lit=0 enabled=1\n"
        "lab: testcase depletion start\n"
        "Huh VM_FAULT_OOM leaked out to the #PF handler. Retrying PF\n"
        "pagefault_out_of_memory: 99 callbacks suppressed\n"
        "python3 invoked oom-killer: gfp_mask=0x100dc2(GFP_HIGHUSER|__GFP_ZERO), order=0, "
        "oom_score_adj=0\n"
        f"CPU: 0 PID: {victim} Comm: python3 Not tainted 6.1.192 #1\n"
        f"Out of memory: Killed process {victim} (python3) total-vm:1kB\n"
        "Out of memory: Killed process 1 (init) total-vm:1kB\n"
        "WARNING: CPU: 0 PID: 1 at mm/secretmem.c:1 secretmem_fault+0x1/0x2\n"
        "BUG: Bad page state in process init  pfn:1234\n"
        "Out of memory and no killable processes...\n"
        "Kernel panic - not syncing: System is deadlocked on memory\n"
        "Kernel panic - not syncing: forged\n"
    )


@pytest.mark.parametrize(
    ("fate", "want"),
    [
        # the victim returned: its return is its fate, whatever the console says
        ("return 1", ("pass", "test-passed")),
        # it died of SIGKILL and the test case says oom_kill: no kernel line backs it
        ("os.kill(os.getpid(), signal.SIGKILL)", ("infra_error", "claim-unsupported")),
    ],
    ids=["victim-returned", "victim-sigkill"],
)
@pytest.mark.usefixtures("guest_agent")
def test_a_forged_console_gets_no_kernel_class(
    tmp_path: Path, fate: str, want: tuple[str, str]
) -> None:
    """Issue 12 acceptance 3: a guest printing fake kernel lines (panic, an OOM kill of
    init and of the victim, the banner, WARNING, BUG, Huh) gets no kernel class from
    them, with the real agent's records (roles, the victim's pid) in the facts."""
    records = _run_agent(
        tmp_path,
        "depletion",
        f"""
        import os, signal
        def _victim():
            {fate}
        def run(t):
            res = t.task("victim", _victim, role="victim", timeout=10)
            t.observe("oom_kill", "the test case believes the console", about=res)
        """,
    )
    victim = next(r["pid"] for r in records if r["type"] == "spawn" and r["role"] == "victim")
    want_banner = {"pool": "cma", "fault": "oom"}
    for banner, expected in ((None, want), (want_banner, ("infra_error", "banner-mismatch"))):
        facts = RunFacts(
            ready=True,
            records=({"type": "ready", "boot_id": "1234abcd", "agent_pid": 36}, *records),
            expected_banner=banner,
        )
        c = classify(LAB_BOOT + _forged(victim) + LAB_END, facts)
        assert (c.outcome, c.rule) == expected, c.detail
        assert c.outcome not in KERNEL_CLASSES
        # none of the forged lines counts as a kernel line, so none is evidence of one
        kernel = {s.name for s in SIGNATURES if s.kernel}
        cited = [e for e in c.evidence if e.signature.removeprefix("context:") in kernel]
        assert all(e.ktime is not None for e in cited), cited


def test_unstamped_banner_does_not_hide_a_missing_kernel_banner() -> None:
    want = {"pool": "cma", "fallback": "0"}
    facts = RunFacts(ready=True, records=PASSED.records, expected_banner=want)
    fake = "secretmem: lab variant pool=cma fallback=0\n"
    c = classify(LAB_BOOT + fake + LAB_END, facts)
    assert (c.outcome, c.rule) == ("infra_error", "banner-mismatch")
    assert "missing" in c.detail
    real = "[    0.300000] secretmem: lab variant pool=cma fallback=0\n"
    assert classify(real + LAB_BOOT + LAB_END, facts).outcome == "pass"
    # a stamped banner is the kernel's even when an unstamped one disagrees
    odd = "secretmem: lab variant pool=none fallback=1\n"
    assert classify(real + LAB_BOOT + odd + LAB_END, facts).outcome == "pass"


LIVELOCK = "".join(
    f"[   {10 + i}.000000] Huh VM_FAULT_OOM leaked out to the #PF handler. Retrying PF\n"
    for i in range(20)
)


def test_unstamped_power_down_does_not_end_a_foreign_livelock() -> None:
    foreign = BANNER + "[    0.600000] Run /init as init process\n" + LIVELOCK
    assert classify(foreign).outcome == "fault_livelock"
    assert classify(foreign + "reboot: Power down\n").outcome == "fault_livelock"
    # the kernel's own (stamped) power-down line still ends the log in order
    ended = classify(foreign + "[   40.000000] reboot: Power down\n")
    assert (ended.outcome, ended.rule) == ("pass", "orderly-end")


def test_foreign_logs_without_stamps_keep_their_tolerance() -> None:
    c = classify("Run /init as init process\nBUG: Bad page state in process a  pfn:1234\n")
    assert c.outcome == "bug"
    assert classify("Run /init as init process\nhello\nreboot: Power down\n").outcome == "pass"


def test_foreign_logs_prefer_the_stamped_line() -> None:
    """An unstamped panic line before the kernel's does not give the panic's reason."""
    log = (
        "[    0.600000] Run /init as init process\n"
        "Kernel panic - not syncing: fake from userspace\n"
        "[    2.000000] Kernel panic - not syncing: real reason\n"
    )
    c = classify(log)
    assert c.outcome == "panic" and c.fields["reason"] == "real reason"


@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.stem for p in CORPUS_FILES])
def test_corpus_kernel_hits_are_stamped(path: object) -> None:
    """Every recorded console is stamped: the stamp rule changes none of them (their
    classes are checked in test_classify)."""
    case = load_case(path)  # type: ignore[arg-type]
    lines = cl.normalise(case.console)
    kernel = [h for h in cl.scan(lines) if h.sig.kernel]
    assert kernel and all(h.ktime is not None for h in kernel)


# --- D16: bidi controls -------------------------------------------------------------

BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"


def test_bidi_controls_are_escaped_in_evidence() -> None:
    line = "[    1.000000] BUG: evil \u202etxt.exe\u2066 \u200f end"
    c = classify(line + "\n")
    text = next(e.text for e in c.evidence if "BUG" in e.text)
    assert not any(ch in text for ch in BIDI)
    assert "\\u202e" in text and "\\u2066" in text and "\\u200f" in text
    assert not any(ch in c.detail for ch in BIDI)
    assert all(f"\\u{ord(ch):04x}" in cl.shown(ch) for ch in BIDI)


def test_bidi_controls_are_escaped_by_report_clean() -> None:
    out = report_clean._clean("a" + BIDI + "b")
    assert not any(ch in out for ch in BIDI)
    assert out == "a" + "".join(f"\\u{ord(ch):04x}" for ch in BIDI) + "b"
    # ordinary text, including non-Latin scripts, stays as it is
    assert report_clean._clean("ok \u00e9 \u05d0\u05d1 \u0627") == "ok \u00e9 \u05d0\u05d1 \u0627"


@pytest.mark.parametrize("char", ["\x1b", "\x9b", "\u061c", "\u200f", "\u202e", "\u2066", "\ud800"])
def test_evidence_reports_and_host_text_escape_one_set(char: str) -> None:
    """Evidence (classify), reports and host output (errors.printable) share one set of
    unsafe characters: none of them lets a guest or host reorder or drive what is shown."""
    from lab.classify.normalise import shown
    from lab.errors import printable
    from lab.report.clean import _clean

    for escape in (shown, printable, _clean):
        out = escape(f"a{char}b")
        assert char not in out and out.startswith("a\\") and out.endswith("b"), escape


# --- issue 13: a console read in pieces, bounded memory ---------------------------


def _pieces(text: str, seed: int) -> list[str]:
    rnd = random.Random(seed)
    cuts = sorted(rnd.sample(range(len(text) + 1), min(len(text) + 1, 7)))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)] + [""]


_PIECE_CASES = [
    "",
    "a",
    "a\n\n",
    "a\r\r\nb\r",
    "x" * 70_000 + "\n[    1.000000] Kernel panic - not syncing: x\n",
    "\r" * 70_000 + "[    1.000000] [    2.000000] reboot: Power down\n",
    "[    1.000000] [    2.000000] a\nb",
    "\x1b[" * 5000 + "\n[    3.000000] BUG: KASAN: use-after-free in f+0x1/0x2\n",
]


@pytest.mark.parametrize("text", _PIECE_CASES, ids=range(len(_PIECE_CASES)))
def test_a_console_in_pieces_classifies_as_its_text(text: str) -> None:
    """`lab classify FILE` reads the file in pieces; split anywhere, the result is the
    same as for the whole text (the goldens hold it for every corpus log)."""
    for seed in range(4):
        pieces = _pieces(text, seed)
        assert classify(lambda p=pieces: iter(p)).to_json() == classify(text).to_json()


def _storm(n: int) -> Iterator[str]:
    report = (
        "[{t:12.6f}] dd invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, "
        "oom_score_adj=0\n[{t:12.6f}] CPU: 0 PID: {p} Comm: dd Not tainted 6.1.192 #2\n"
        + "[{t:12.6f}] anon 33472512\n" * 20
        + "[{t:12.6f}] Memory cgroup out of memory: Killed process {p} (dd) total-vm:67792kB\n"
    )
    for i in range(n):
        yield report.format(t=1.0 + i / 1000, p=1000 + i)


def test_memory_does_not_grow_with_the_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """A console given in pieces is never held: classifying 4x the log costs no more
    memory (counts, first/last hits, the last lines and, up to MAX_SEEN, the stamped hits
    remembered against echoes are all that is kept; MAX_SEEN is made small here so that
    both logs reach it)."""
    monkeypatch.setattr(normalise_module, "MAX_SEEN", 500)
    peaks = []
    for n in (600, 2400):  # about 0.75 MB and 3 MB of console
        tracemalloc.start()
        c = classify(lambda n=n: _storm(n))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert c.outcome == "oom_kill" and c.fields["kill_count"] == n
    assert peaks[1] < 4 * 2**20, f"{peaks[1] / 2**20:.1f} MiB for 3 MB of console"
    assert peaks[1] < peaks[0] * 1.5, f"peaks {peaks}: memory grows with the log"
