"""Progress of long work: a live line per task on a terminal, plain lines otherwise.

Everything goes to stderr, so stdout stays clean for results and --json.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import (
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from lab.errors import printable


class Task:
    """One unit of work (a build, a cell) whose phase and counter are shown."""

    def __init__(self, reporter: Reporter, label: str) -> None:
        self._reporter = reporter
        self.label = label
        self.phase_name = ""
        self.count = 0
        self.started = time.monotonic()
        self._last_plain = 0.0
        self._id: TaskID | None = None
        if reporter.live is not None:
            self._id = reporter.live.add_task(label, phase="", count="")

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def phase(self, name: str) -> None:
        self.phase_name = name
        if self._id is not None and self._reporter.live is not None:
            self._reporter.live.update(self._id, phase=name)
        else:
            self._reporter.line(f"[{self.label}] {name} ({self.elapsed:.0f}s)")

    def advance(self, what: str, n: int = 1) -> None:
        self.count += n
        if self._id is not None and self._reporter.live is not None:
            self._reporter.live.update(self._id, count=f"{self.count} {what}")
        elif time.monotonic() - self._last_plain >= 30:
            self._last_plain = time.monotonic()
            self._reporter.line(
                f"[{self.label}] {self.phase_name}: {self.count} {what} ({self.elapsed:.0f}s)"
            )

    def finish(self, message: str) -> None:
        if self._id is not None and self._reporter.live is not None:
            self._reporter.live.remove_task(self._id)
            self._id = None
        self._reporter.line(f"[{self.label}] {message}")


class Reporter:
    """Live display when stderr is a terminal; timestamp-free plain lines otherwise."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        use_live = self.stream.isatty() if live is None else live
        self.console = Console(file=self.stream, highlight=False, soft_wrap=True)
        self.live: Progress | None = None
        if use_live:
            self.live = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                TextColumn("{task.fields[phase]}"),
                TextColumn("{task.fields[count]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )

    def __enter__(self) -> Reporter:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.live is not None:
            self.live.stop()

    def task(self, label: str) -> Task:
        return Task(self, label)

    def line(self, text: str) -> None:
        # Lines carry text from guests and lab hosts; rich strips escapes only on a
        # terminal, and a CI log must not be driven by them either.
        text = printable(text)
        if self.live is not None:
            self.live.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)
