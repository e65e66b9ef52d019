"""One QEMU guest driven by pexpect over its serial console.

- QEMU runs in its own session (pexpect's pty fork); the lab kills the whole
  group on exit, error, Ctrl-C or SIGTERM, so no QEMU outlives the lab.
- The raw console is teed to `console.log` (bytes as received) and to
  `console.timed.log` (each line prefixed with host seconds since launch).
- Until the ready marker, a panic or oops/BUG is reported at once with its lines;
  no marker before the deadline is a boot hang.
- Structured results are read from the result-channel file, never the console.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import pexpect

from lab import channel, prereqs, proc
from lab.errors import InfraError, LabError
from lab.qemu import Launch

READY = re.compile(rb"LABREADY (\S+)")
PANIC = re.compile(rb"Kernel panic - not syncing[^\r\n]*")
TROUBLE = re.compile(
    rb"(?:BUG: [^\r\n]*|Oops[:\s][^\r\n]*|Unable to handle kernel[^\r\n]*|"
    rb"general protection fault[^\r\n]*|WARNING: CPU: [^\r\n]*|kernel BUG at [^\r\n]*)"
)
SETTLE = 1.0  # seconds of extra console collected after a boot-time oops


class BootError(LabError):
    """The guest did not reach its ready marker. `kind`: panic, oops, hang, exited."""

    def __init__(self, kind: str, message: str, lines: list[str]) -> None:
        super().__init__(message)
        self.kind = kind
        self.lines = lines


@dataclass
class ConsoleLog:
    """pexpect's logfile_read: raw bytes to one file, host-timestamped lines to another."""

    raw_path: Path
    timed_path: Path
    started: float
    lines: list[str] = field(default_factory=list)  # decoded, without line ends
    _partial: bytes = b""

    def __post_init__(self) -> None:
        self._raw = open(self.raw_path, "ab")  # noqa: SIM115 - closed in close()
        self._timed = open(self.timed_path, "a")  # noqa: SIM115

    def write(self, data: bytes) -> None:
        self._raw.write(data)
        buf = self._partial + data
        *done, self._partial = buf.split(b"\n")
        stamp = time.monotonic() - self.started
        for raw in done:
            text = raw.rstrip(b"\r").decode(errors="replace")
            self.lines.append(text)
            self._timed.write(f"[{stamp:11.6f}] {text}\n")

    def flush(self) -> None:
        self._raw.flush()
        self._timed.flush()

    def close(self) -> None:
        if self._partial:
            self.write(b"\n")
        self._raw.close()
        self._timed.close()

    def tail(self, n: int = 15) -> list[str]:
        extra = [self._partial.decode(errors="replace")] if self._partial.strip() else []
        return (self.lines + extra)[-n:]


@dataclass(frozen=True)
class Timings:
    ready: float | None  # seconds from launch to the ready marker
    first_result: float | None  # seconds to the first record after `ready`
    total: float  # seconds until QEMU exited (or was stopped)


class Machine:
    """Start with `with Machine(...) as m:`; QEMU is gone when the block ends."""

    def __init__(
        self,
        launch: Launch,
        workdir: Path,
        boot_id: str,
        ready_timeout: float,
        shutdown_timeout: float,
    ) -> None:
        self.launch = launch
        self.workdir = workdir
        self.boot_id = boot_id
        self.ready_timeout = ready_timeout
        self.shutdown_timeout = shutdown_timeout
        self.child: pexpect.spawn | None = None
        self.console: ConsoleLog | None = None
        self.results = channel.Reader()
        self._result_pos = 0
        self.started = 0.0
        self.ready_at: float | None = None
        self.first_result_at: float | None = None
        self.arrivals: dict[str, float] = {}  # record type -> seconds to its first arrival
        self.ended_at: float | None = None
        self.exit_status: int | None = None
        self.killed = False

    # --- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> Machine:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        arch = self.launch.arch
        prereqs.require((prereqs.qemu(arch), *prereqs.firmware(arch)), f"boot {arch.name}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.launch.result_file.write_bytes(b"")
        argv = self.launch.argv()
        (self.workdir / "qemu.argv").write_text("\n".join(argv) + "\n")
        self.started = time.monotonic()
        self.console = ConsoleLog(
            self.workdir / "console.log", self.workdir / "console.timed.log", self.started
        )
        self.child = pexpect.spawn(
            argv[0],
            argv[1:],
            timeout=None,
            maxread=65536,
            searchwindowsize=65536,
            env={**os.environ, "LC_ALL": "C"},
        )
        proc.register(self.child.pid)
        self.child.logfile_read = self.console

    @property
    def alive(self) -> bool:
        return self.child is not None and self.child.isalive()

    def stop(self) -> None:
        """Kill QEMU's process group if it still runs; close the logs."""
        child = self.child
        if child is None:
            return
        if child.isalive():
            self.killed = True
            proc.kill_group(child.pid, grace=1.0)
        else:
            proc.unregister(child.pid)
        self._reap()
        self._read_results()
        if self.console is not None:
            self.console.close()
        if self.ended_at is None:
            self.ended_at = time.monotonic()
        self.child = None

    def _reap(self) -> None:
        assert self.child is not None
        with contextlib.suppress(Exception):  # the process is gone either way
            self.child.close(force=True)
        status = self.child.exitstatus
        sig = self.child.signalstatus
        self.exit_status = status if status is not None else (128 + sig if sig else None)

    # --- console -----------------------------------------------------------------------

    def _pump(self, timeout: float) -> bool:
        """Read console output for up to `timeout` s; False once QEMU has exited."""
        assert self.child is not None
        idx = self.child.expect([pexpect.EOF, pexpect.TIMEOUT], timeout=timeout)
        # Nothing is matched on this buffer after boot; the ConsoleLog saw every byte.
        self.child.buffer = self.child.string_type()
        if idx == 0:
            self.ended_at = time.monotonic()
            return False
        return True

    def wait_ready(self) -> float:
        """Seconds to the ready marker; BootError for a panic, oops, exit or hang."""
        assert self.child is not None and self.console is not None
        deadline = self.started + self.ready_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BootError(
                    "hang",
                    f"no ready marker within {self.ready_timeout:.0f}s (boot hang); "
                    f"last console line: {self._last_line()!r}",
                    self.console.tail(),
                )
            idx = self.child.expect(
                [READY, PANIC, TROUBLE, pexpect.EOF, pexpect.TIMEOUT], timeout=min(remaining, 1.0)
            )
            if idx == 0:
                self.ready_at = time.monotonic() - self.started
                return self.ready_at
            if idx == 1:
                line = self.child.after.decode(errors="replace").strip()
                self._drain(SETTLE)
                raise BootError("panic", f"kernel panic during boot: {line}", self._around(line))
            if idx == 2:
                line = self.child.after.decode(errors="replace").strip()
                self._drain(SETTLE)
                raise BootError("oops", f"kernel oops during boot: {line}", self._around(line))
            if idx == 3:
                self.ended_at = time.monotonic()
                self._reap()
                self.child = None
                tail = self.console.tail()
                raise BootError(
                    "exited",
                    f"QEMU exited (status {self.exit_status}) before the guest was ready; "
                    f"last console line: {self._last_line()!r}",
                    tail,
                )

    def _drain(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while self.alive and time.monotonic() < end and self._pump(0.1):
            pass

    def _around(self, line: str) -> list[str]:
        assert self.console is not None
        lines = self.console.tail(60)
        for i, text in enumerate(lines):
            if line in text:
                return lines[max(0, i - 5) : i + 25]
        return lines[-30:]

    def _last_line(self) -> str:
        assert self.console is not None
        tail = [t for t in self.console.tail(5) if t.strip()]
        return tail[-1] if tail else ""

    # --- result channel ---------------------------------------------------------------

    def _read_results(self) -> list[dict[str, Any]]:
        try:
            with open(self.launch.result_file, "rb") as f:
                f.seek(self._result_pos)
                data = f.read(channel.MAX_TOTAL)
        except FileNotFoundError:
            return []
        self._result_pos += len(data)
        new = self.results.feed(data)
        now = time.monotonic() - self.started
        if self.ended_at is not None:  # read after QEMU ended: it arrived by then
            now = min(now, self.ended_at - self.started)
        if new and self.first_result_at is None:
            self.first_result_at = now
        for rec in new:
            self.arrivals.setdefault(rec["type"], now)
        return new

    def follow(
        self,
        until: Callable[[dict[str, Any]], bool],
        timeout: float,
        on_record: Callable[[dict[str, Any]], None] = lambda _r: None,
    ) -> str:
        """Pump the console and the result channel until a record satisfies `until`.

        Returns "record", "exited" (QEMU ended first) or "timeout".
        """
        deadline = time.monotonic() + timeout
        while True:
            for rec in self._read_results():
                on_record(rec)
                if until(rec):
                    return "record"
            if self.child is None or not self.alive:
                for rec in self._read_results():
                    on_record(rec)
                    if until(rec):
                        return "record"
                return "exited"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            if not self._pump(min(remaining, 0.1)):
                continue

    def wait_exit(self, timeout: float | None = None) -> bool:
        """Let the guest power off; True if QEMU exited on its own in time."""
        limit = self.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while self.child is not None and self.alive:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if not self._pump(min(remaining, 0.2)):
                break
        self._read_results()
        return True

    def timings(self) -> Timings:
        end = self.ended_at if self.ended_at is not None else time.monotonic()
        return Timings(self.ready_at, self.first_result_at, end - self.started)

    # --- interactive ------------------------------------------------------------------

    def interact(self, escape: str = "\x1d") -> None:
        """Hand the console to the user's terminal until `escape` (Ctrl-]) or power-off."""
        assert self.child is not None
        old = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the guest here
        try:
            self.child.interact(escape_character=escape)
        except OSError as exc:  # the guest powered off and the pty closed
            if self.alive:
                raise InfraError(f"console interaction failed: {exc}") from None
        finally:
            signal.signal(signal.SIGINT, old)
