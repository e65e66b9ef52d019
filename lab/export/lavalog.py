"""Reading a LAVA job log: the console, the agent's framed records, LAVA's verdict. Pure.

A log is lava-run's stderr or a lava-server job log as downloaded: one YAML flow mapping
per line (`{"dt": ..., "lvl": ..., "msg": ...}`, a server's file prefixes `- `). Console
lines are `lvl: target` (and `feedback` once the test action ended); LAVA wrote them with
`"` escaped as `\\"` and CR removed (lava_dispatcher/shell.py), which is undone here. The
job's verdict is the last `results` record with `definition: lava, case: job`; a log
without one was cut short.

The log is untrusted: bounded in bytes and lines, every record checked for its shape.
"""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

MAX_LOG = 64 << 20  # bytes of one job log
MAX_LINES = 1_000_000
MAX_LINE = 1 << 20  # LAVA itself replaces a longer record by "<line way too long ...>"
MAX_RECORDS = 10_000  # framed records kept (the classifier looks at no more)
BOOT_ID = re.compile(r"\b[0-9a-f]{16}\b")
FRAME = re.compile(r"(LABREC|LABREP) (\d{1,6}) ([0-9a-f]{8}) (\{.*\})\s*$")
END = re.compile(r"LABREC-END (\d{1,6})\s*$")
READY = re.compile(r"LABREADY (\S+)")
# LAVA's action names (2023.01) whose timeout means the guest did not get ready in time.
BOOT_ACTIONS = (
    "boot-image-retry",
    "boot-qemu-image",
    "execute-qemu",
    "auto-login-action",
    "login-action",
)
TEST_ACTIONS = ("lava-test-monitor-retry", "lava-test-monitor")

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class LogError(ValueError):
    """The file is not a usable LAVA job log; the message says why in one line."""


@dataclass(frozen=True)
class LavaLog:
    console: tuple[str, ...]  # the guest's console lines, as the guest printed them
    results: tuple[Mapping[str, Any], ...]  # LAVA's `results` records, in order
    errors: tuple[str, ...]  # LAVA's `error` and `exception` messages (first lines)
    job: Mapping[str, Any]  # the job's verdict: result, error_type, error_msg
    messages: tuple[str, ...]  # every other string message (dispatcher's info/debug)
    duration: float | None  # seconds from the first to the last record

    @property
    def complete(self) -> bool:
        """LAVA finished the job (result pass or fail, no error)."""
        return not self.job.get("error_type")

    def failed_actions(self) -> list[tuple[str, str]]:
        """(action name, LAVA's reason) of each action that failed, in order."""
        out = []
        for r in self.results:
            if r.get("definition") == "lava" and r.get("result") == "fail" and r.get("case"):
                extra = r.get("extra")
                why = extra.get("fail", "") if isinstance(extra, dict) else ""
                out.append((str(r["case"]), str(why)))
        return out

    def boot_ids(self) -> set[str]:
        """16-hex-digit words anywhere in the log: the exported cell's boot id among them."""
        found: set[str] = set()
        for text in (*self.messages, *self.console):
            found.update(BOOT_ID.findall(text))
        return found


def _record(body: str) -> Any:
    """One log line's record, or None. Most lines are JSON as well as YAML; the rest (YAML
    escapes such as \\e) go to the YAML loader, which must not meet an alias: expanding
    nested aliases is exponential (a "billion laughs" log)."""
    try:
        return json.loads(body)
    except RecursionError:
        return None
    except ValueError:
        pass
    try:
        if any(isinstance(e, yaml.AliasEvent) for e in yaml.parse(body, Loader=_Loader)):
            return None
        return yaml.load(body, Loader=_Loader)
    except (yaml.YAMLError, RecursionError):
        return None


def _unescape(text: str) -> str:
    return text.replace('\\"', '"')


def _timestamp(value: Any) -> float | None:
    import datetime

    if not isinstance(value, str):
        return None
    try:
        return datetime.datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def parse(raw: bytes) -> LavaLog:
    """Parse a job log. Raises LogError: not a LAVA log, truncated, too large."""
    if len(raw) > MAX_LOG:
        raise LogError(f"larger than {MAX_LOG} bytes")
    text = raw.decode("utf-8", errors="replace")
    lines = text.splitlines()
    if len(lines) > MAX_LINES:
        raise LogError(f"more than {MAX_LINES} lines")
    if not any(line.strip() for line in lines):
        raise LogError("empty")
    console: list[str] = []
    results: list[Mapping[str, Any]] = []
    errors: list[str] = []
    messages: list[str] = []
    inputs: list[str] = []
    job: Mapping[str, Any] | None = None
    first: float | None = None
    last: float | None = None
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    for i, (n, line) in enumerate(numbered):
        if len(line) > MAX_LINE:
            raise LogError(f"line {n}: longer than {MAX_LINE} characters")
        rec = _record(line[2:] if line.startswith("- ") else line)
        if not isinstance(rec, dict) or not isinstance(rec.get("lvl"), str) or "msg" not in rec:
            if i == len(numbered) - 1 and i > 0:
                raise LogError(f"line {n}: cut off mid-record (truncated?)")
            raise LogError(f"line {n}: not a LAVA log record ({{dt, lvl, msg}} per line)")
        when = _timestamp(rec.get("dt"))
        if when is not None:
            first = when if first is None else first
            last = when
        lvl, msg = rec["lvl"], rec["msg"]
        if lvl in ("target", "feedback") and isinstance(msg, str):
            line_text = _unescape(msg)
            # LAVA's own input (the `poweroff` it types at the end) echoes back.
            if inputs and line_text.strip() == inputs[-1]:
                continue
            if lvl == "feedback" and console and console[-1] == line_text:
                continue  # finalize reads the same line as target and feedback
            console.append(line_text)
        elif lvl == "input" and isinstance(msg, str):
            inputs.append(msg.strip())
        elif lvl == "results" and isinstance(msg, dict):
            results.append(msg)
            if msg.get("definition") == "lava" and msg.get("case") == "job":
                job = msg
        elif lvl in ("error", "exception") and isinstance(msg, str):
            errors.append(msg.splitlines()[0] if msg else "")
        elif isinstance(msg, str):
            messages.append(msg)
    if job is None:
        raise LogError("no job result (the log was cut short, or the job is still running)")
    duration = last - first if first is not None and last is not None else None
    return LavaLog(tuple(console), tuple(results), tuple(errors), job, tuple(messages), duration)


@dataclass(frozen=True)
class Extracted:
    """The console split into what the local runner would have: console and records."""

    console: str  # without the framed record lines
    records: tuple[bytes, ...]  # the JSON payloads, in sequence order
    problems: tuple[str, ...]  # records lost or damaged on the console
    ended: bool  # the agent printed LABREC-END (it finished and replayed everything)


def extract(lines: Sequence[str]) -> Extracted:
    """Take the agent's records out of the console (first intact copy of each sequence
    number: live or replayed); the rest is the console as the local runner keeps it."""
    kept: list[str] = []
    payloads: dict[int, bytes] = {}
    damaged: set[int] = set()
    count: int | None = None
    for line in lines:
        m = FRAME.search(line)
        if m is not None:
            seq, crc, payload = int(m.group(2)), int(m.group(3), 16), m.group(4).encode()
            if binascii.crc32(payload) == crc:
                if seq not in payloads and len(payloads) < MAX_RECORDS:
                    payloads[seq] = payload
            else:
                damaged.add(seq)
            prefix = line[: m.start()]
            if prefix.strip():
                kept.append(prefix)  # kernel output the record line interrupted
            continue
        e = END.search(line)
        if e is not None:
            count = int(e.group(1))
            prefix = line[: e.start()]
            if prefix.strip():
                kept.append(prefix)
            continue
        kept.append(line)
    problems: list[str] = []
    expected = range(count) if count is not None else range(max(payloads, default=-1) + 1)
    lost = [n for n in expected if n not in payloads]
    if lost:
        why = "its checksum failed on every copy" if set(lost) <= damaged else "missing"
        shown = ", ".join(map(str, lost[:10])) + (" ..." if len(lost) > 10 else "")
        problems.append(f"console: {len(lost)} agent record(s) lost ({why}): seq {shown}")
    records = tuple(payloads[n] for n in sorted(payloads))
    return Extracted(
        "\n".join(kept) + ("\n" if kept else ""), records, tuple(problems), count is not None
    )


def ready_ids(lines: Iterable[str]) -> list[str]:
    """Boot ids of the guest's ready markers on the console."""
    return [m.group(1) for line in lines if (m := READY.search(line))]
