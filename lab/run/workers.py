"""Where cells run: the Worker protocol, this machine's LocalWorker, and what stops or loses
a worker (Stop, HostDown). SSH lab hosts implement Worker in lab.hosts.ssh; the run stage
never needs to know which is which."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lab import cache, proc
from lab.config import LabConfig
from lab.errors import InfraError
from lab.results import CellResult
from lab.run import matrix
from lab.run.execute import execute_here
from lab.run.job import Inputs


class Stop:
    """Set when the run must stop (Ctrl-C, SIGTERM): no new cell starts."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()


class HostDown(InfraError):
    """A lab host stopped answering (or could not take the cell): run it elsewhere.

    `ran` is False when the cell never reached the host (it was already known to be
    gone), so the attempt does not count against the cell's single retry."""

    def __init__(self, host: str, message: str, ran: bool = True) -> None:
        super().__init__(f"lab host {host}: {message}")
        self.host = host
        self.reason = message
        self.ran = ran


class Worker(Protocol):
    """Somewhere cells run: this machine, or one SSH lab host (lab.hosts.ssh.RemoteWorker)."""

    @property
    def name(self) -> str:
        """The worker's name: local, or the lab host's name."""
        ...

    @property
    def slots(self) -> int:
        """Cells it runs at once."""
        ...

    def serves(self, arch: str) -> bool: ...

    def run(
        self,
        p: matrix.Planned,
        inputs: Inputs,
        directory: Path,
        requeued_from: tuple[str, ...],
    ) -> CellResult:
        """Run the cell; its directory is complete when this returns. Raises HostDown
        when the host is lost, LabError when the cell cannot run (an infra result)."""
        ...

    def lost(self) -> str:
        """Why the worker is gone ("" while it is usable)."""
        ...

    def abort(self) -> None:
        """Stop in-flight cells now (Ctrl-C, SIGTERM)."""
        ...

    def close(self) -> None:
        """Release what the worker holds (connections) once the run has ended."""
        ...

    def summary(self) -> dict[str, Any]:
        """What run.json adds about the worker when the run ends (its `hosts` entry)."""
        ...


@dataclass(frozen=True)
class LocalWorker:
    """This machine: prepare and execute in-process (the behaviour before lab hosts)."""

    cfg: LabConfig
    slots: int
    name: str = "local"

    def serves(self, arch: str) -> bool:
        return True

    def run(
        self,
        p: matrix.Planned,
        inputs: Inputs,
        directory: Path,
        requeued_from: tuple[str, ...],
    ) -> CellResult:
        res = execute_here(self.cfg, p.cell, inputs, directory, run_cell_id=p.id, repeat=p.repeat)
        if requeued_from:
            # cell.json is written last; rewriting it (atomically) keeps the cell complete.
            data = cache.read_json(directory / "cell.json")
            cache.write_json(
                directory / "cell.json", {**data, "requeued_from": list(requeued_from)}
            )
        return res

    def lost(self) -> str:
        return ""

    def abort(self) -> None:
        proc.kill_all()

    def close(self) -> None:
        pass  # nothing held between cells

    def summary(self) -> dict[str, Any]:
        return {}  # run.json has no entry for this machine's slots
