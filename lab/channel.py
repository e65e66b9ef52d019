"""The host side of the result channel: untrusted guest output as bounded data.

The guest writes JSON lines to a virtio port that QEMU stores in a file. This
parser never evaluates anything: each line must be a JSON object with a string
`type`, no longer than MAX_LINE bytes; at most MAX_TOTAL bytes are read. What
does not fit is counted as a protocol problem, not trusted. Pure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MAX_LINE = 1 << 20
MAX_TOTAL = 64 << 20
MAX_PROBLEMS = 20


@dataclass
class Reader:
    """Incremental JSON-lines reader with limits."""

    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    total: int = 0
    _partial: bytes = b""
    _truncated: bool = False

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add bytes; return the complete records they finished."""
        if self._truncated:
            return []
        room = MAX_TOTAL - self.total
        if len(data) > room:
            data = data[:room]
            self._truncated = True
            self._problem(f"result channel exceeded {MAX_TOTAL} bytes; the rest was ignored")
        self.total += len(data)
        buf = self._partial + data
        *lines, self._partial = buf.split(b"\n")
        if len(self._partial) > MAX_LINE:
            self._problem(f"a result line exceeded {MAX_LINE} bytes; dropped")
            self._partial = b""
        new = []
        for line in lines:
            rec = self._parse(line)
            if rec is not None:
                new.append(rec)
        self.records.extend(new)
        return new

    def _parse(self, line: bytes) -> dict[str, Any] | None:
        if not line.strip():
            return None
        if len(line) > MAX_LINE:
            self._problem(f"a result line exceeded {MAX_LINE} bytes; dropped")
            return None
        try:
            value = json.loads(line)
        except ValueError:
            self._problem(f"not JSON: {line[:80]!r}")
            return None
        if not isinstance(value, dict) or not isinstance(value.get("type"), str):
            self._problem(f"not a record with a string 'type': {line[:80]!r}")
            return None
        return value

    def _problem(self, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)

    def first(self, kind: str) -> dict[str, Any] | None:
        return next((r for r in self.records if r["type"] == kind), None)
