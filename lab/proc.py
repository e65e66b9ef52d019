"""Child processes that never outlive the lab.

Every long-running child (make, QEMU) gets its own session, so a terminal's
Ctrl-C does not reach it behind the lab's back and the lab can end the whole
group (make's compilers, QEMU) at once. Live groups are registered; the CLI's
SIGTERM/SIGINT handling and an atexit hook kill whatever is left.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

_live: set[int] = set()
_lock = threading.Lock()


class Terminated(BaseException):
    """Raised in the main thread when the lab receives SIGTERM or SIGHUP."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"received {signal.Signals(signum).name}")
        self.signum = signum


def register(pgid: int) -> None:
    with _lock:
        _live.add(pgid)


def unregister(pgid: int) -> None:
    with _lock:
        _live.discard(pgid)


def kill_group(pgid: int, grace: float = 2.0) -> None:
    """SIGTERM the group, then SIGKILL what is left after `grace` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        unregister(pgid)
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    unregister(pgid)


def kill_all() -> None:
    with _lock:
        groups = list(_live)
    for pgid in groups:
        kill_group(pgid, grace=1.0)


atexit.register(kill_all)


def _raise_terminated(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def install_signal_handlers() -> None:
    """Turn SIGTERM/SIGHUP into an exception so `finally` blocks clean up."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_terminated)


@contextlib.contextmanager
def group(proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> Iterator[None]:
    """Register a process started with start_new_session=True; kill its group on exit."""
    register(proc.pid)
    try:
        yield
    finally:
        if proc.poll() is None:
            kill_group(proc.pid)
        else:
            # The leader is gone; stragglers of its group may not be.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            unregister(proc.pid)
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)


def run_streaming(
    argv: Sequence[str],
    on_line: Callable[[str], None],
    log: IO[str],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> int:
    """Run argv in its own session, feeding each output line to on_line and log."""
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    with group(proc):
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            on_line(line.rstrip("\n"))
        return proc.wait()
