"""The host side of the result channel: untrusted guest output as bounded data.

The guest writes JSON lines to a virtio port that QEMU stores in a file. This
parser never evaluates anything: each line must be a JSON object with a string
`type`, no longer than MAX_LINE bytes and nested at most MAX_DEPTH levels; at most
MAX_TOTAL bytes are read. What does not fit is counted as a protocol problem, not
trusted, and `feed` never raises for anything the guest sends. Memory is bounded
too: the first MAX_RECORDS records (at most MAX_KEPT_BYTES of lines) are kept, plus
the first record of each later type (at most MAX_KINDS, each small), so that the
records that end a run (`exit`, `done`) are still found after a flood; the rest are
counted in `dropped`/`dropped_bytes`. Pure.
"""

from __future__ import annotations

import json
from typing import Any, BinaryIO

MAX_LINE = 1 << 20
MAX_TOTAL = 64 << 20
MAX_PROBLEMS = 20
MAX_DEPTH = 32  # nesting of arrays/objects in one record (the record itself is 1)
MAX_RECORDS = 10_000  # records kept; the classifier reads no more than this either
MAX_KEPT_BYTES = 16 << 20  # bytes of lines behind the kept records
MAX_KINDS = 32  # records kept past the limits: the first of each new type...
MAX_KIND_BYTES = 4096  # ...when its line is this short
CHUNK = 1 << 20  # bytes handed to feed() at once by readers of a file


class Reader:
    """Incremental JSON-lines reader with limits."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.total = 0  # bytes read
        self.kept_bytes = 0  # bytes of the lines behind `records`
        self.dropped = 0  # well-formed records not kept (limits)
        self.dropped_bytes = 0
        self._problems: list[str] = []
        self._kinds: set[str] = set()
        self._extra = 0
        self._partial = b""
        self._skipping = False  # inside an oversized line: ignore up to the next newline
        self._truncated = False

    @property
    def problems(self) -> list[str]:
        """Protocol problems in arrival order; dropped records as one last line."""
        if not self.dropped:
            return list(self._problems)
        return [
            *self._problems,
            f"{self.dropped} records ({self.dropped_bytes} bytes) beyond the first "
            f"{MAX_RECORDS} records or {MAX_KEPT_BYTES} bytes were counted, not kept",
        ]

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add bytes; return the complete records they finished (kept or not)."""
        if self._truncated:
            return []
        room = MAX_TOTAL - self.total
        if len(data) > room:
            data = data[:room]
            self._truncated = True
            self._problem(f"result channel exceeded {MAX_TOTAL} bytes; the rest was ignored")
        self.total += len(data)
        if self._skipping:
            # The rest of an oversized line is not a record, however it looks.
            cut = data.find(b"\n")
            if cut < 0:
                return []
            data = data[cut + 1 :]
            self._skipping = False
        *lines, partial = (self._partial + data).split(b"\n")
        if len(partial) > MAX_LINE:
            self._problem(f"a result line exceeded {MAX_LINE} bytes; dropped")
            partial = b""
            self._skipping = True
        self._partial = partial
        new = []
        for line in lines:
            rec = self._parse(line)
            if rec is not None:
                new.append(rec)
                self._keep(rec, len(line))
        return new

    def _keep(self, rec: dict[str, Any], size: int) -> None:
        kind = rec["type"]
        if len(self.records) < MAX_RECORDS and self.kept_bytes + size <= MAX_KEPT_BYTES:
            pass
        elif kind not in self._kinds and self._extra < MAX_KINDS and size <= MAX_KIND_BYTES:
            self._extra += 1
        else:
            self.dropped += 1
            self.dropped_bytes += size
            return
        self.records.append(rec)
        self.kept_bytes += size
        self._kinds.add(kind)

    def _parse(self, line: bytes) -> dict[str, Any] | None:
        if not line.strip():
            return None
        if len(line) > MAX_LINE:
            self._problem(f"a result line exceeded {MAX_LINE} bytes; dropped")
            return None
        try:
            # The agent writes UTF-8 (ASCII, in fact); the decoder straight away, since
            # json.loads would also guess UTF-16/32 and costs a third more per record.
            value = _DECODER.decode(line.decode())
        except RecursionError:  # nesting deeper than the C parser's stack allows
            value = _TOO_DEEP
        except ValueError:
            self._problem(f"not JSON: {line[:80]!r}")
            return None
        if value is _TOO_DEEP or (
            line.count(b"[") + line.count(b"{") > MAX_DEPTH and _too_deep(value)
        ):
            self._problem(f"a result line nests deeper than {MAX_DEPTH} levels: {line[:80]!r}")
            return None
        if not isinstance(value, dict) or not isinstance(value.get("type"), str):
            self._problem(f"not a record with a string 'type': {line[:80]!r}")
            return None
        return value

    def _problem(self, text: str) -> None:
        if len(self._problems) < MAX_PROBLEMS:
            self._problems.append(text)

    def feed_file(self, f: BinaryIO) -> None:
        """Feed a whole file in chunks (never more than one chunk's records at once)."""
        while self.total < MAX_TOTAL and (data := f.read(CHUNK)):
            self.feed(data)

    def first(self, kind: str) -> dict[str, Any] | None:
        return next((r for r in self.records if r["type"] == kind), None)


_TOO_DEEP = object()
_DECODER = json.JSONDecoder()


def _too_deep(value: Any) -> bool:
    """Whether containers nest deeper than MAX_DEPTH (iterative: no recursion to exhaust)."""
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False
