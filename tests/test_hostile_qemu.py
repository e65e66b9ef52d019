"""A QEMU that dies of a signal the lab did not send (killed from outside, or crashed
on an assertion) tells nothing about the kernel under test: its cell is an infra_error
whose evidence names the signal, never a boot_failure or a class taken from partial
records. Found by the soak test (tests/test_soak_real.py)."""

from __future__ import annotations

from lab.classify import RunFacts, classify

BOOT = "[    0.600000] Run /init as init process\n"
READY = BOOT + "LABREADY 1234abcd\n"


def test_qemu_killed_before_the_ready_marker_is_infra_not_boot_failure() -> None:
    c = classify(BOOT + "[    0.7] serial8250: ttyS0 at I/O 0x3f8\n", RunFacts(qemu_exit=137))
    assert (c.outcome, c.rule) == ("infra_error", "qemu-signaled"), c.detail
    assert "SIGKILL" in c.detail and "137" in c.detail
    assert any("SIGKILL" in e.text for e in c.evidence)


def test_qemu_killed_mid_test_names_the_signal() -> None:
    c = classify(READY, RunFacts(ready=True, qemu_exit=137, records=()))
    assert (c.outcome, c.rule) == ("infra_error", "qemu-signaled"), c.detail
    assert "SIGKILL" in c.detail


def test_qemu_abort_is_infra() -> None:
    c = classify(BOOT, RunFacts(qemu_exit=134))
    assert c.outcome == "infra_error" and "SIGABRT" in c.detail


def test_after_done_the_result_stands() -> None:
    """Killed while powering off, after the agent's `done`: the test had finished."""
    records = (
        {"type": "result", "testcase": "quick", "verdict": "pass", "observed": "pass"},
        {"type": "done"},
    )
    c = classify(READY, RunFacts(ready=True, qemu_exit=137, records=records))
    assert c.outcome == "pass"


def test_the_lab_own_deadline_kill_stays_a_hang() -> None:
    c = classify(READY, RunFacts(ready=True, deadline="test", qemu_exit=137))
    assert c.outcome == "hang"


def test_kernel_evidence_still_wins() -> None:
    panic = "[    2.0] Kernel panic - not syncing: sysrq triggered crash\n"
    c = classify(READY + panic, RunFacts(ready=True, qemu_exit=137))
    assert c.outcome == "panic"
