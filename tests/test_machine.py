"""The console state machine on recorded real consoles, replayed by a stand-in process.

Real QEMU boots are in test_boot_real.py; these check ready/panic/hang handling and
the result channel quickly and deterministically.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from lab import config
from lab.vm import channel, qemu
from lab.vm.machine import BootError, Machine

DATA = Path(__file__).parent / "data"


def _launch(repo: Path, tmp_path: Path) -> qemu.Launch:
    cfg = config.load(repo / "lab.toml")
    arch = cfg.arch("x86_64")
    fake = dataclasses.replace(arch.qemu, binary=str(DATA / "fake_qemu.py"))
    arch = dataclasses.replace(arch, qemu=fake)
    return qemu.Launch(
        arch,
        "tcg",
        tmp_path / "bzImage",
        tmp_path / "initrd",
        "console=ttyS0",
        tmp_path / "result.jsonl",
        512,
        2,
    )


def test_ready_then_results(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_REPLAY", str(DATA / "consoles" / "x86_64-exec-ok.raw"))
    records = [
        {"type": "ready"},
        {"type": "output", "stream": "stdout", "data": "x86_64\n"},
        {"type": "exit", "status": 3},
        {"type": "done"},
    ]
    monkeypatch.setenv("LAB_REPLAY_RESULTS", "".join(json.dumps(r) + "\n" for r in records))
    # The boot id of the recorded console: only this boot's marker counts.
    with Machine(_launch(repo, tmp_path), tmp_path, "947a504757972843", 10, 5) as m:
        assert m.wait_ready() > 0
        seen: list[dict[str, object]] = []
        assert m.follow(lambda r: r["type"] == "done", 10, seen.append) == "record"
        assert [r["type"] for r in seen] == ["ready", "output", "exit", "done"]
        assert m.wait_exit(10)
    assert m.exit_status == 0
    log = (tmp_path / "console.log").read_bytes()
    # The pty adds carriage returns; the text is the same line for line.
    want = (DATA / "consoles" / "x86_64-exec-ok.raw").read_bytes()
    assert log.replace(b"\r", b"") == want.replace(b"\r", b"")
    timed = (tmp_path / "console.timed.log").read_text().splitlines()
    assert timed[0].startswith("[") and "Linux version" in timed[0]
    assert (tmp_path / "qemu.argv").read_text().splitlines()[1:3] == ["-M", "microvm,acpi=off"]


def test_panic_during_boot_is_reported_at_once(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAB_REPLAY", str(DATA / "consoles" / "x86_64-boot-panic.raw"))
    monkeypatch.setenv("LAB_REPLAY_HANG", "1")  # even if the guest lingered, no deadline wait
    with (
        Machine(_launch(repo, tmp_path), tmp_path, "b", 30, 5) as m,
        pytest.raises(BootError) as exc,
    ):
        m.wait_ready()
    assert exc.value.kind == "panic"
    assert "Kernel panic - not syncing: VFS: Unable to mount root fs" in str(exc.value)
    assert any("Call Trace" in line for line in exc.value.lines)
    assert m.timings().total < 10
    assert not m.alive


def test_no_marker_is_a_hang_after_the_deadline(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "hang.raw"
    raw = (DATA / "consoles" / "x86_64-exec-ok.raw").read_bytes()
    log.write_bytes(raw[: raw.index(b"LABREADY")])
    monkeypatch.setenv("LAB_REPLAY", str(log))
    monkeypatch.setenv("LAB_REPLAY_HANG", "1")
    m = Machine(_launch(repo, tmp_path), tmp_path / "w", "b", 2, 1)
    with m, pytest.raises(BootError) as exc:
        m.wait_ready()
    assert exc.value.kind == "hang" and "no ready marker within 2s" in str(exc.value)
    assert "Run /init as init process" in exc.value.lines[-1]
    assert m.killed and m.child is None


def test_missing_qemu_binary_names_the_package(repo: Path, tmp_path: Path) -> None:
    launch = _launch(repo, tmp_path)
    arch = dataclasses.replace(
        launch.arch,
        qemu=dataclasses.replace(
            launch.arch.qemu, binary="qemu-system-nosuch", package="qemu-system-nosuch-pkg"
        ),
    )
    with pytest.raises(
        Exception,
        match=r"qemu-system-nosuch not found \(needed to boot x86_64\); install with: "
        "sudo apt-get install -y --no-install-recommends qemu-system-nosuch-pkg",
    ):
        Machine(dataclasses.replace(launch, arch=arch), tmp_path, "b", 1, 1).start()


def test_argv_is_pure_and_complete(repo: Path, tmp_path: Path) -> None:
    cfg = config.load(repo / "lab.toml")
    arm = cfg.arch("arm64")
    launch = qemu.Launch(
        arm, "tcg", Path("/k/Image.gz"), Path("/i"), "console=ttyAMA0", Path("/r"), 256, 1
    )
    argv = launch.argv()
    assert argv[:5] == ["qemu-system-aarch64", "-M", "virt", "-accel", "tcg"]
    assert argv[5:7] == ["-cpu", "cortex-a57"] and "-no-reboot" in argv
    assert "virtserialport,chardev=result,name=lab.result" in argv
    assert argv[argv.index("-append") + 1] == "console=ttyAMA0"
    assert qemu.kernel_cmdline(arm, "", "a=1  b=2") == "console=ttyAMA0 panic=-1 a=1 b=2"


def test_channel_is_bounded_and_strict() -> None:
    r = channel.Reader()
    got = r.feed(b'{"type":"a"}\n{"type"')
    assert [x["type"] for x in got] == ["a"]
    assert [x["type"] for x in r.feed(b':"b"}\nnot json\n[1]\n{"no":1}\n')] == ["b"]
    assert len(r.problems) == 3
    big = channel.Reader()
    big.feed(b"x" * (channel.MAX_LINE + 10))
    assert big.problems and "exceeded" in big.problems[0]
