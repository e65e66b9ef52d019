"""Console text -> lines with kernel prefixes stripped, and the signature scan over them."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from lab.classify.model import MAX_MATCH, MAX_STRING, Hit, Line, _clean
from lab.classify.signatures import INT_FIELDS, SIGNATURES
from lab.errors import escape_unsafe

# --- normalisation ------------------------------------------------------------

_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[()*+][0-~]|[@-~])")
_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# C0 (but tab), DEL and C1 controls, and the bidi controls that reorder what a reader
# sees (Trojan Source): embeddings/overrides, isolates, LRM/RLM and the Arabic mark.
_TOKEN = re.compile(
    r"<(?P<level>\d{1,3})>|\[\s*(?P<stamp>\d{1,12}\.\d{1,9})\]|\[\s*(?P<caller>[TC]\d{1,10})\]"
)
_INNER = re.compile(r"\[\s*(\d{1,12}\.\d{6})\]\s?")


def shown(text: str) -> str:
    """A console line as evidence shows it: control characters as `\\xNN` escapes and
    bidi controls as `\\uNNNN`, so that a guest can neither drive the terminal of
    whoever reads the evidence nor reorder what they see."""
    return escape_unsafe(text, keep="\t")


def _prefix(message: str) -> tuple[list[tuple[str, str]], int]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while len(tokens) < 6:
        m = _TOKEN.match(message, pos)
        if not m:
            break
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
        if message.startswith(" ", pos):
            pos += 1
    return tokens, pos


def normalise(console: str) -> tuple[Line, ...]:
    """Split a raw console log into `Line`s.

    Accepted format: any text; CR characters are dropped; terminal escape
    sequences and other control characters are removed from `message`. A line
    may start with, in this order and each optional: the lab's host stamp
    `[  12.345678] ` (console.timed.log), a `<4>` syslog level, the printk stamp
    `[    1.234567]`, a `[    T1]`/`[ C0]` caller id. When any line carries two
    leading stamps the log is a timed log and the first stamp of every line is the
    host's; otherwise a single stamp is the kernel's.
    """
    raw_lines = console.replace("\r", "").split("\n")
    if raw_lines and raw_lines[-1] == "":
        raw_lines.pop()
    parsed = []
    timed = False
    for text in raw_lines:
        # Only the start of a line is read: kernel messages are short, and one endless
        # guest line must cost no more than this.
        clean = text[:MAX_MATCH]
        if "\x1b" in clean or _CTRL.search(clean):
            clean = _CTRL.sub("", _ANSI.sub("", clean))
        tokens, pos = _prefix(clean)
        if sum(k == "stamp" for k, _ in tokens) >= 2 and tokens[0][0] == "stamp":
            timed = True
        parsed.append((text, clean, tokens, pos))
    out = []
    for no, (text, clean, tokens, pos) in enumerate(parsed, 1):
        stamps = [float(v) for k, v in tokens if k == "stamp"]
        levels = [int(v) for k, v in tokens if k == "level"]
        host: float | None = None
        ktime: float | None = None
        if timed and tokens and tokens[0][0] == "stamp":
            host = stamps[0]
            ktime = stamps[1] if len(stamps) > 1 else None
        elif stamps:
            ktime = stamps[-1]
        message = clean[pos:]
        inner = inner_ktime = None
        if "[" in message[1:]:
            m = _INNER.search(message, 1)
            if m:
                inner, inner_ktime = message[m.end() :], float(m.group(1))
        out.append(
            Line(no, text, message, ktime, host, levels[0] if levels else None, inner, inner_ktime)
        )
    return tuple(out)


def _strip_groups(pattern: str) -> str:
    return re.sub(r"\(\?P<\w+>", "(?:", pattern)


# One alternation of every signature: most lines match nothing, and one match()
# tells so much faster than trying each entry.
_ANY = re.compile("|".join(f"(?:{_strip_groups(s.pattern.pattern)})" for s in SIGNATURES))


def _extract(m: re.Match[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in m.groupdict().items():
        if value is None:
            continue
        if key in INT_FIELDS:
            try:
                out[key] = int(value)
                continue
            except ValueError:
                pass
        out[key] = _clean(value, MAX_STRING)
    return out


def scan(lines: Sequence[Line]) -> list[Hit]:
    """Every line that matches a signature, in line order (one signature per line).

    A kernel line echoed later by userspace (`dmesg | grep` in a foreign harness)
    has the same printk stamp and message as the original; the echo is skipped so
    that counts are not inflated.
    """
    hits = []
    seen: set[tuple[float, str]] = set()
    for index, line in enumerate(lines):
        candidates = [(line.message, line.ktime, False)]
        if line.inner is not None:
            candidates.append((line.inner, line.inner_ktime, True))
        for message, ktime, inner in candidates:
            if not message or not _ANY.match(message):
                continue
            hit = _match_line(lines, index, message, ktime, inner)
            if hit is None:
                continue
            if ktime is not None:
                if (ktime, message) in seen:
                    break
                seen.add((ktime, message))
            hits.append(hit)
            break
    return hits


def _match_line(
    lines: Sequence[Line], index: int, message: str, ktime: float | None, inner: bool
) -> Hit | None:
    for sig in SIGNATURES:
        m = sig.pattern.match(message)
        if not m:
            continue
        values = _extract(m)
        ctx = sig.context
        if ctx is not None and ctx.scan:
            wanted = list(ctx.fields)
            for j in range(index + 1, min(len(lines), index + 1 + ctx.scan)):
                for pat in list(wanted):
                    mm = pat.search(lines[j].message)
                    if mm:
                        wanted.remove(pat)
                        for k, v in _extract(mm).items():
                            values.setdefault(k, v)
                if not wanted:
                    break
        return Hit(sig, index, values, ktime, inner)
    return None
