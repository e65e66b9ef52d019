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

import codecs
import contextlib
import os
import re
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import pexpect

from lab import prereqs, proc
from lab.errors import InfraError, LabError
from lab.vm import channel
from lab.vm.qemu import Launch

# Any ready marker; only the one with this boot's id counts (see Machine.wait_ready).
READY = re.compile(rb"LABREADY (\S+)\s")
# Whole lines only (up to the line end): matched on a partial read, the reason after
# "not syncing:" could be cut off ("Kernel panic - not syncing:" with nothing after).
PANIC = re.compile(rb"Kernel panic - not syncing[^\r\n]*\r*\n")
TROUBLE = re.compile(
    rb"(?:BUG: [^\r\n]*|Oops[:\s][^\r\n]*|Unable to handle kernel[^\r\n]*|"
    rb"general protection fault[^\r\n]*|WARNING: CPU: [^\r\n]*|kernel BUG at [^\r\n]*)\r*\n"
)
SETTLE = 1.0  # seconds of extra console collected after a boot-time oops


BootKind = Literal["panic", "oops", "hang", "exited"]
Followed = Literal["record", "exited", "timeout"]  # how Machine.follow returned


class BootError(LabError):
    """The guest did not reach its ready marker. `kind`: panic, oops, hang, exited."""

    def __init__(self, kind: BootKind, message: str, lines: list[str]) -> None:
        super().__init__(message)
        self.kind = kind
        self.lines = lines


TAIL_LINES = 200  # console lines kept in memory for messages (the files keep all)
TAIL_CHARS = 4096  # characters of one such line kept in memory
# Bytes of console kept on disk. The runner reads the whole console.log to classify it,
# and a guest can print without end: like the result channel, the console is bounded.
# A real cell prints kilobytes to a few MiB.
MAX_CONSOLE = 64 << 20


class ConsoleLog:
    """pexpect's logfile_read: raw bytes to one file, host-timestamped lines to another.

    Linear in the output and bounded in memory whatever the guest prints (one endless
    line included): each byte is written once, as it arrives, and only the last
    TAIL_LINES lines (each capped at TAIL_CHARS) stay in memory, for boot-failure
    messages. The classifier reads console.log from disk, which holds every byte up to
    MAX_CONSOLE; what comes after is counted in `dropped`, and close() ends both files
    with a line that says so. A line of console.timed.log carries the host time at
    which its first byte came.
    """

    def __init__(self, raw_path: Path, timed_path: Path, started: float) -> None:
        self.raw_path = raw_path
        self.timed_path = timed_path
        self.started = started
        self.lines: deque[str] = deque(maxlen=TAIL_LINES)  # decoded, without line ends
        self._raw = open(raw_path, "ab")  # noqa: SIM115 - closed in close()
        self._timed = open(timed_path, "a")  # noqa: SIM115
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._open = False  # a line has started and not ended
        self._cr = b""  # CRs at the end of what came so far: dropped if the line ends
        self._current: list[str] = []  # the start of the open line, up to TAIL_CHARS
        self._current_len = 0
        self.written = 0  # bytes in console.log
        self.dropped = 0  # bytes beyond MAX_CONSOLE, not written

    def write(self, data: bytes) -> None:
        room = MAX_CONSOLE - self.written
        if room > 0:
            self._raw.write(data[:room])
            self.written += min(room, len(data))
        self.dropped += len(data) - max(0, min(room, len(data)))
        stamp = time.monotonic() - self.started
        start = 0
        while start < len(data):
            end = data.find(b"\n", start)
            self._piece(data[start:] if end < 0 else data[start:end], stamp)
            if end < 0:
                break
            self._end_line()
            start = end + 1

    def _piece(self, piece: bytes, stamp: float) -> None:
        if not self._open:
            self._timed_write(f"[{stamp:11.6f}] ")
            self._open = True
        piece = self._cr + piece
        body = piece.rstrip(b"\r")
        self._cr = piece[len(body) :]
        self._text(self._decoder.decode(body))

    def _timed_write(self, text: str) -> None:
        if not self.dropped:  # the timed copy stops where console.log stops
            self._timed.write(text)

    def _text(self, text: str) -> None:
        self._timed_write(text)
        room = TAIL_CHARS - self._current_len
        if room > 0 and text:
            self._current.append(text[:room])
            self._current_len += min(room, len(text))

    def _end_line(self) -> None:
        if not self._open:  # an empty line
            self._piece(b"", time.monotonic() - self.started)
        self._text(self._decoder.decode(b"", final=True))
        self._timed_write("\n")
        self.lines.append("".join(self._current))
        self._open, self._cr, self._current, self._current_len = False, b"", [], 0

    def flush(self) -> None:
        self._raw.flush()
        self._timed.flush()

    def close(self) -> None:
        if self._open:
            self._end_line()
        if self.dropped:
            note = f"lab: console capped at {MAX_CONSOLE} bytes; {self.dropped} more were dropped"
            self._raw.write(f"\n{note}\n".encode())
            self._timed.write(f"\n{note}\n")
        self._raw.close()
        self._timed.close()

    def tail(self, n: int = 15) -> list[str]:
        current = "".join(self._current)
        extra = [current] if self._open and current.strip() else []
        return (list(self.lines) + extra)[-n:]


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
        self.foreign_ready: list[str] = []  # ids of ready markers not this boot's

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
        self._drain_results()
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
        # A plain read, not expect(): nothing is matched after boot, and expect() keeps
        # (and copies on every timeout) all output since its last match, which for a
        # guest that floods the console is all of it. The ConsoleLog sees every byte.
        try:
            self.child.read_nonblocking(65536, timeout)
        except pexpect.TIMEOUT:
            pass
        except pexpect.EOF:
            self.ended_at = time.monotonic()
            return False
        return True

    def wait_ready(self) -> float:
        """Seconds to the ready marker; BootError for a panic, oops, exit or hang."""
        assert self.child is not None and self.console is not None
        deadline = self.started + self.ready_timeout
        # The marker must carry this boot's id, a fresh random token that only this
        # guest's overlay holds. A marker with another id (the kernel echoing a command
        # line, a test printing one, a stale image) is not this guest's init saying it
        # is ready: it is ignored, the wait goes on, and a hang names it. Ignored rather
        # than an error, so that text a guest prints cannot end a boot early either way.
        ready = re.compile(rb"LABREADY " + re.escape(self.boot_id.encode()) + rb"\s")
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                foreign = (
                    f"; ignored ready marker(s) with another boot id: {self.foreign_ready}"
                    if self.foreign_ready
                    else ""
                )
                raise BootError(
                    "hang",
                    f"no ready marker within {self.ready_timeout:.0f}s (boot hang); "
                    f"last console line: {self._last_line()!r}{foreign}",
                    self.console.tail(),
                )
            idx = self.child.expect(
                [ready, PANIC, TROUBLE, pexpect.EOF, pexpect.TIMEOUT, READY],
                timeout=min(remaining, 1.0),
            )
            if idx == 0:
                self.ready_at = time.monotonic() - self.started
                return self.ready_at
            if idx == 5:
                if len(self.foreign_ready) < 5:
                    self.foreign_ready.append(
                        self.child.match.group(1)[:64].decode(errors="replace")
                    )
                continue
            if idx == 4:
                # expect() keeps all output since its last match and copies it on each
                # timeout; the ConsoleLog has it, and the search window is kept apart.
                self.child._before = self.child.buffer_type()
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

    def _read_results(self) -> Iterator[dict[str, Any]]:
        """The records that arrived since the last call, read one chunk at a time so
        that a flood is never held at once. A caller may stop early: what it did not
        consume is read by the next call."""
        while self.results.total < channel.MAX_TOTAL:
            try:
                with open(self.launch.result_file, "rb") as f:
                    f.seek(self._result_pos)
                    data = f.read(channel.CHUNK)
            except FileNotFoundError:
                return
            if not data:
                return
            self._result_pos += len(data)
            new = self.results.feed(data)
            now = time.monotonic() - self.started
            if self.ended_at is not None:  # read after QEMU ended: it arrived by then
                now = min(now, self.ended_at - self.started)
            if new and self.first_result_at is None:
                self.first_result_at = now
            for rec in new:
                self.arrivals.setdefault(rec["type"], now)
            yield from new

    def _drain_results(self) -> None:
        for _rec in self._read_results():
            pass

    def follow(
        self,
        until: Callable[[dict[str, Any]], bool],
        timeout: float,
        on_record: Callable[[dict[str, Any]], None] = lambda _r: None,
    ) -> Followed:
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
        self._drain_results()
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
