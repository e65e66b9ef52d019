"""Hostile console output through the Machine (issue 15: D10, D11).

D10: a guest that prints without newlines must cost linear time and bounded memory
in ConsoleLog; console.log keeps every byte and console.timed.log every line.
D11: only the ready marker with this boot's id makes the guest ready.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from lab import config
from lab.vm import machine, qemu
from lab.vm.machine import BootError, ConsoleLog, Machine

DATA = Path(__file__).parent / "data"
BOOT_ID = "947a504757972843"  # the LABREADY id in consoles/x86_64-exec-ok.raw
MIB = 1 << 20


def _log(tmp_path: Path) -> ConsoleLog:
    return ConsoleLog(tmp_path / "console.log", tmp_path / "console.timed.log", time.monotonic())


# --- D10 ------------------------------------------------------------------------------


def test_newline_less_console_is_linear_and_bounded(tmp_path: Path) -> None:
    log = _log(tmp_path)
    chunk = b"A" * 65536
    started = time.perf_counter()
    for _ in range(32 * 16):  # 32 MiB in pexpect-sized reads, no newline
        log.write(chunk)
    took = time.perf_counter() - started
    # Linear: ~0.1 s here. Before the fix each write re-joined the whole partial line
    # (about 10 s for 32 MiB). The bound is generous for a loaded machine.
    assert took < 4.0, f"{took:.1f}s for 32 MiB"
    held = sum(len(x) for x in log.lines) + sum(len(x) for x in log._current)
    assert held <= machine.TAIL_CHARS
    assert log.tail(1) == ["A" * machine.TAIL_CHARS]
    log.write(b"\r\nnext\n")
    log.close()
    assert (tmp_path / "console.log").stat().st_size == 32 * MIB + 7
    timed = (tmp_path / "console.timed.log").read_text().splitlines()
    assert len(timed) == 2
    assert timed[0].endswith("] " + "A" * (32 * MIB)) and timed[1].endswith("] next")


def test_many_lines_keep_only_a_bounded_tail(tmp_path: Path) -> None:
    log = _log(tmp_path)
    log.write(b"".join(b"line %d\n" % i for i in range(100_000)))
    log.write(b"x" * (machine.TAIL_CHARS * 4) + b"\n")
    assert len(log.lines) == machine.TAIL_LINES
    assert log.lines[-2] == "line 99999" and len(log.lines[-1]) == machine.TAIL_CHARS
    log.close()
    assert len((tmp_path / "console.timed.log").read_text().splitlines()) == 100_001


def test_timed_log_is_unchanged_for_split_writes(tmp_path: Path) -> None:
    """CR CR LF, a CR inside a line, a UTF-8 character and line ends split across
    writes give the same lines as one write."""
    text = "a\r\r\nb\rc\r\n\nd \u00e9\u20ac\ne\r".encode()
    whole = tmp_path / "whole"
    split = tmp_path / "split"
    whole.mkdir()
    split.mkdir()
    log = _log(whole)
    log.write(text)
    log.close()
    log = _log(split)
    for i in range(len(text)):
        log.write(text[i : i + 1])
    log.close()

    def lines(d: Path) -> list[str]:
        timed = (d / "console.timed.log").read_bytes().decode().split("\n")
        return [x.split("] ", 1)[1] for x in timed[:-1]]

    assert lines(whole) == lines(split) == ["a", "b\rc", "", "d \u00e9\u20ac", "e"]
    assert (split / "console.log").read_bytes() == text


# --- D11 ------------------------------------------------------------------------------


def fake_launch(repo: Path, tmp_path: Path) -> qemu.Launch:
    """x86_64 from lab.toml with tests/data/fake_qemu.py as QEMU (replays LAB_REPLAY)."""
    cfg = config.load(repo / "lab.toml")
    arch = cfg.arch("x86_64")
    arch = dataclasses.replace(
        arch, qemu=dataclasses.replace(arch.qemu, binary=str(DATA / "fake_qemu.py"))
    )
    return qemu.Launch(
        arch, "tcg", tmp_path / "k", tmp_path / "i", "console=ttyS0", tmp_path / "r.jsonl", 512, 2
    )


def _console(tmp_path: Path, *inserts: bytes) -> Path:
    raw = (DATA / "consoles" / "x86_64-exec-ok.raw").read_bytes()
    cut = raw.index(b"LABREADY")
    path = tmp_path / "console.raw"
    path.write_bytes(raw[:cut] + b"".join(inserts) + raw[cut:])
    return path


def test_ready_marker_with_another_boot_id_is_ignored(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAB_REPLAY", str(DATA / "consoles" / "x86_64-exec-ok.raw"))
    monkeypatch.setenv("LAB_REPLAY_HANG", "1")
    m = Machine(fake_launch(repo, tmp_path), tmp_path / "w", "expected-boot-id-not-this-one", 2, 1)
    with m, pytest.raises(BootError) as exc:
        m.wait_ready()
    assert exc.value.kind == "hang"
    assert f"another boot id: ['{BOOT_ID}']" in str(exc.value)
    assert m.ready_at is None


def test_only_this_boots_marker_counts_among_others(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Foreign markers before the real one (a cmdline echo, a longer id with ours as
    prefix) do not make the guest ready; the real one does."""
    console = _console(
        tmp_path,
        b"Kernel command line: console=ttyS0 LABREADY deadbeef\r\n",
        f"LABREADY {BOOT_ID}0\r\n".encode(),
    )
    monkeypatch.setenv("LAB_REPLAY", str(console))
    with Machine(fake_launch(repo, tmp_path), tmp_path / "w", BOOT_ID, 10, 1) as m:
        m.wait_ready()
        assert m.foreign_ready == ["deadbeef", f"{BOOT_ID}0"]
        before = (tmp_path / "w" / "console.log").read_bytes()
    assert f"LABREADY {BOOT_ID}\r".encode() in before


def test_console_files_are_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A guest that never stops printing fills neither the disk nor, later, the memory
    of the classifier that reads console.log: both files stop at MAX_CONSOLE and say
    how much was dropped; the in-memory tail keeps following the guest."""
    monkeypatch.setattr(machine, "MAX_CONSOLE", MIB)
    log = _log(tmp_path)
    for i in range(3 * 1024):
        log.write(b"line %06d " % i + b"x" * 1000 + b"\n")
    assert log.tail(1)[0].startswith("line 003071 ")
    dropped = log.dropped
    log.close()
    raw = (tmp_path / "console.log").read_bytes()
    assert dropped == 3 * 1024 * len(b"line 000000 " + b"x" * 1000 + b"\n") - MIB
    assert raw.endswith(
        f"\nlab: console capped at {MIB} bytes; {dropped} more were dropped\n".encode()
    )
    assert len(raw) < MIB + 100
    timed = (tmp_path / "console.timed.log").read_text()
    assert len(timed) < MIB + 30_000 and timed.endswith(f"{dropped} more were dropped\n")
