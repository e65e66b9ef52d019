"""Console text -> lines with kernel prefixes stripped, and the signature scan over them."""

from __future__ import annotations

import itertools
import re

try:  # the regex parser's own view of a pattern: where a match can start
    from re import _constants as _sre_constants  # type: ignore[attr-defined]
    from re import _parser as _sre_parser  # type: ignore[attr-defined]
except ImportError:  # Python < 3.11
    import sre_constants as _sre_constants
    import sre_parse as _sre_parser
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

from lab.classify.model import (
    MAX_MATCH,
    MAX_SEEN,
    MAX_STRING,
    MAX_TEXT,
    TITLE_LINES,
    Hit,
    Line,
    _clean,
)
from lab.classify.signatures import INT_FIELDS, SIGNATURES
from lab.errors import escape_unsafe

# --- normalisation ------------------------------------------------------------

_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[()*+][0-~]|[@-~])")
_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# C0 (but tab), DEL and C1 controls, and the bidi controls that reorder what a reader
# sees (Trojan Source): embeddings/overrides, isolates, LRM/RLM and the Arabic mark.
_TOKEN = re.compile(
    r"<(?P<level>\d{1,3})>"
    r"|\[\s*(?P<stamp>\d{1,12}\.\d{1,9})\]"
    r"|\[\s*(?P<caller>[TC]\d{1,10})\]"
    # Foreign logs as people paste them: a /dev/kmsg record (`4,622,406528882,-;`, the
    # time in microseconds), `dmesg -T` wall-clock stamps, a syslog or journal prefix
    # (`Apr 15 13:58:03.028 host kernel: `, localised month names, ISO dates), a bare
    # `kernel: `, a vendor's `[pid:0,cpu0,swapper/0]` and a stamp whose `[` was cut off.
    r"|(?P<kmsg>\d{1,3},\d{1,20},(?P<usec>\d{1,20}),[^;\s]{0,8};)"
    r"|(?P<wall>\[(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\])"
    r"|(?P<syslog>(?:\w{1,12}\.? {1,2}\d{1,2} \d\d:\d\d:\d\d(?:\.\d{1,9})?"
    r"|\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d[\d.,:+-]{0,20}) \S{1,64} kernel:)"
    r"|(?P<kernel>kernel:)"
    r"|(?P<vendor>\[pid:\d{1,10},cpu\d{1,5},[^\]\s]{1,64}\])"
    r"|(?P<cut>\d{1,12}\.\d{6})\]"
)
# A kernel message whose stamp follows other output on the same line (interleaved), with
# the caller id that may follow the stamp.
_INNER = re.compile(r"\[\s*(\d{1,12}\.\d{6})\](?:\[\s*[TC]\d{1,10}\])?\s?")


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
        if not m and not tokens:  # a quoted or indented paste: spaces before the first token
            start = len(message) - len(message.lstrip(" \t"))
            m = _TOKEN.match(message, start) if start else None
        if not m:
            break
        kind = m.lastgroup or ""
        if kind == "usec":  # lastgroup is the innermost group that closed last
            kind = "kmsg"
        if kind == "kmsg":
            tokens.append(("stamp", str(int(m.group("usec")) / 1e6)))
        elif kind == "cut":
            tokens.append(("stamp", m.group("cut")))
        else:
            tokens.append((kind, m.group(kind)))
        pos = m.end()
        if message.startswith(" ", pos):
            pos += 1
    return tokens, pos


# Characters a prefix may start with that no plain message would: a shortcut only.
_PREFIX_START = frozenset("[< \t0123456789")


def _raw_lines(console: str) -> Iterator[str]:
    """The lines of `console` without CR, one at a time (no copy of the whole log)."""
    pos, end = 0, len(console)
    while pos < end:
        nl = console.find("\n", pos)
        if nl < 0:
            nl = end
        text = console[pos:nl]
        yield text.replace("\r", "") if "\r" in text else text
        pos = nl + 1


# A line whose prefix may hold two stamps, the first in front (a timed log): a stamp
# followed by another token. Only these lines are parsed in the first pass, and lines
# with control characters (whose prefix shows only once they are removed).
_TIMED_CANDIDATE = re.compile(
    r"^[ \t]*\[[ \t]*\d{1,12}\.\d{1,9}\] ?(?:<\d|\[[ \t]*\d|\[[A-Z][a-z]{2} |\[pid:|\d{1,12}[.,]|"
    r"kernel:|\w{1,12}\.? {1,2}\d{1,2} \d\d:)"
)
# The same after a newline: a pattern that starts with a literal is searched fastest.
_TIMED_AFTER_NL = re.compile("\n" + _TIMED_CANDIDATE.pattern[1:])
_CTRL_ANY = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _is_timed(console: str) -> bool:
    """Does any line carry two leading stamps, the first one in front (a timed log)?"""
    first = [0] if _TIMED_CANDIDATE.match(console) else []
    starts = itertools.chain(first, (m.start() + 1 for m in _TIMED_AFTER_NL.finditer(console)))
    return any(_timed_line(_line_at(console, start)) for start in starts) or any(
        _timed_line(_line_at(console, start)) for start in _ctrl_lines(console)
    )


def _ctrl_lines(console: str) -> Iterator[int]:
    """The start of each line holding a control character, once per line."""
    pos = 0
    while (m := _CTRL_ANY.search(console, pos)) is not None:
        start = console.rfind("\n", pos, m.start()) + 1 or pos
        yield start
        nl = console.find("\n", m.start())
        if nl < 0:
            return
        pos = nl + 1


def _line_at(console: str, start: int) -> str:
    nl = console.find("\n", start, start + MAX_MATCH * 2)
    return console[start : nl if nl >= 0 else start + MAX_MATCH * 2]


def _timed_line(text: str) -> bool:
    tokens, _ = _prefix(_clean_start(text.replace("\r", "")))
    return sum(k == "stamp" for k, _ in tokens) >= 2 and tokens[0][0] == "stamp"


def _clean_start(text: str) -> str:
    # Only the start of a line is read: kernel messages are short, and one endless
    # guest line must cost no more than this.
    clean = text[:MAX_MATCH] if len(text) > MAX_MATCH else text
    if _CTRL.search(clean):
        clean = _CTRL.sub("", _ANSI.sub("", clean))
    return clean


# The common line: one printk stamp and a message that no other prefix token can start
# (the lookahead fails wherever any `_TOKEN` alternative could match, and the possessive
# ` ?+` keeps it from backtracking around the space, so that a line it accepts parses as
# `_prefix` would parse it).
_STAMP_ONLY = re.compile(
    r"\[\s*(\d{1,12}\.\d{1,9})\] ?+(?!<|\[|\d|kernel:|\w{1,12}\.? {1,2}\d{1,2} \d\d:\d\d:\d\d)"
)


def _line(no: int, text: str, timed: bool) -> Line:
    clean = _clean_start(text)
    if not timed:
        m = _STAMP_ONLY.match(clean)
        if m is not None:  # fast path: most kernel lines
            return _finish(no, text, clean[m.end() :], float(m.group(1)), None, None)
    if clean[:1] not in _PREFIX_START and not _TOKEN.match(clean):
        return _finish(no, text, clean, None, None, None)  # no prefix (userspace, unstamped)
    tokens, pos = _prefix(clean)
    stamps = [float(v) for k, v in tokens if k == "stamp"]
    host: float | None = None
    ktime: float | None = None
    if timed and tokens and tokens[0][0] == "stamp":
        host = stamps[0]
        ktime = stamps[1] if len(stamps) > 1 else None
    elif stamps:
        ktime = stamps[-1]
    level = next((int(v) for k, v in tokens if k == "level"), None)
    return _finish(no, text, clean[pos:], ktime, host, level)


def _finish(
    no: int, text: str, message: str, ktime: float | None, host: float | None, level: int | None
) -> Line:
    inner = inner_ktime = None
    if message.find("[", 1) > 0:
        m = _INNER.search(message, 1)
        if m:
            inner, inner_ktime = message[m.end() :], float(m.group(1))
    # Evidence shows at most MAX_TEXT characters of a line: keep no more.
    return Line(no, text[: MAX_TEXT + 1], message, ktime, host, level, inner, inner_ktime)


LINE_CAP = 1 << 16  # characters of one line kept from a console given in pieces


def _piece_lines(pieces: Iterable[str]) -> Iterator[str]:
    """The lines (CR removed, without LF) of a text given in pieces, as `_raw_lines`
    gives them, but of a line longer than LINE_CAP characters only its start (classify
    reads MAX_MATCH of it), so that one endless line costs no memory."""
    partial: list[str] = []
    size = 0
    for piece in pieces:
        pos = 0
        while True:
            nl = piece.find("\n", pos)
            part = piece[pos:] if nl < 0 else piece[pos:nl]
            if "\r" in part:
                part = part.replace("\r", "")
            if size < LINE_CAP:
                part = part[: LINE_CAP - size]
                partial.append(part)
                size += len(part)
            if nl < 0:
                break
            yield partial[0] if len(partial) == 1 else "".join(partial)
            partial, size = [], 0
            pos = nl + 1
    if size:  # the last line, without a newline after it
        yield "".join(partial)


def _pieces_timed(pieces: Iterable[str]) -> bool:
    """`_is_timed` over a text given in pieces: each piece is searched with the line
    that the previous one left unfinished (its start, at most 2 * MAX_MATCH)."""
    carry, skipping = "", False
    for piece in pieces:
        if skipping:  # the rest of an overlong line: its start is already in carry
            nl = piece.find("\n")
            if nl < 0:
                continue
            piece, skipping = piece[nl:], False
        buf = carry + piece
        if _is_timed(buf):
            return True
        last = buf.rfind("\n")
        tail = buf[last + 1 :] if last >= 0 else buf
        if len(tail) > 2 * MAX_MATCH:
            tail, skipping = tail[: 2 * MAX_MATCH], True
        carry = tail
    return False


# A console: its text, or a function that returns the text in pieces anew each time it
# is called, so that a log on disk is never held whole (`lines`).
Console = str | Callable[[], Iterable[str]]


def lines(console: Console) -> Iterator[Line]:
    """The `Line`s of a console, one at a time: memory does not grow with the log.

    `console` is the text, or a function that returns the text in pieces (any size,
    split anywhere) anew each time it is called: it is read twice, first to tell a timed
    log (see `normalise`), and never held whole."""
    if isinstance(console, str):
        timed = _is_timed(console)
        raw: Iterable[str] = _raw_lines(console)
    else:
        timed = _pieces_timed(console())
        raw = _piece_lines(console())
    if timed:
        for no, text in enumerate(raw, 1):
            yield _line(no, text, timed)
        return
    # The common case inlined (a million lines per 50 MB): a line of at most MAX_MATCH
    # characters, no control characters, one printk stamp or none; else `_line`.
    stamp_only, ctrl, token, inner = _STAMP_ONLY.match, _CTRL.search, _TOKEN.match, _INNER
    cut = MAX_TEXT + 1
    for no, text in enumerate(raw, 1):
        if len(text) > MAX_MATCH or ctrl(text):
            yield _line(no, text, timed)
            continue
        m = stamp_only(text)
        if m is not None:
            message, ktime = text[m.end() :], float(m.group(1))
        elif text[:1] not in _PREFIX_START and not token(text):
            message, ktime = text, None
        else:
            yield _line(no, text, timed)
            continue
        if message.find("[", 1) > 0 and (mm := inner.search(message, 1)) is not None:
            yield Line(
                no, text[:cut], message, ktime, None, None, message[mm.end() :], float(mm.group(1))
            )
        else:
            yield Line(no, text[:cut], message, ktime, None, None, None, None)


def normalise(console: str) -> tuple[Line, ...]:
    """Split a raw console log into `Line`s.

    Accepted format: any text; CR characters are dropped; terminal escape
    sequences and other control characters are removed from `message`. A line
    may start with, in this order and each optional: the lab's host stamp
    `[  12.345678] ` (console.timed.log), a `<4>` syslog level, the printk stamp
    `[    1.234567]`, a `[    T1]`/`[ C0]` caller id. When any line carries two
    leading stamps the log is a timed log and the first stamp of every line is the
    host's; otherwise a single stamp is the kernel's. Foreign prefixes are stripped
    too (see `_TOKEN`): /dev/kmsg records, `dmesg -T`, syslog and journal prefixes.
    `Line.text` keeps at most MAX_TEXT + 1 characters (what evidence can show).
    """
    return tuple(lines(console))


def _strip_groups(pattern: str) -> str:
    return re.sub(r"\(\?P<\w+>", "(?:", pattern)


def _first_chars(pattern: str) -> frozenset[str] | None:
    """The characters a match of `pattern` can start with, or None when any may (or the
    pattern is too clever to tell)."""
    return _first_of(_sre_parser.parse(pattern))


def _first_of(items: Any) -> frozenset[str] | None:
    out: set[str] = set()
    for op, av in items:
        first = _first_op(op, av)
        if first is None:
            return None
        out |= first - {""}
        if "" not in first:
            return frozenset(out)
    return frozenset(out | {""})


def _first_op(op: Any, av: Any) -> frozenset[str] | None:
    c = _sre_constants
    if op is c.LITERAL:
        return frozenset({chr(av)})
    if op is c.SUBPATTERN:
        return _first_of(av[-1])
    if op is c.BRANCH:
        out: set[str] = set()
        for branch in av[1]:
            first = _first_of(branch)
            if first is None:
                return None
            out |= first
        return frozenset(out)
    if op in (c.MAX_REPEAT, c.MIN_REPEAT):
        first = _first_of(av[2])
        if first is None:
            return None
        return first | {""} if av[0] == 0 else first
    if op is c.IN:
        chars: set[str] = set()
        for o, a in av:
            if o is c.LITERAL:
                chars.add(chr(a))
            elif o is c.RANGE and a[1] - a[0] < 128:
                chars |= {chr(x) for x in range(a[0], a[1] + 1)}
            elif o is c.CATEGORY and a is c.CATEGORY_DIGIT:
                chars |= set("0123456789")
            else:
                return None
        return frozenset(chars)
    if op is c.AT:
        return frozenset({""})
    return None


def _alternation(indices: list[int]) -> re.Pattern[str]:
    parts = [f"(?P<s{i}>{_strip_groups(SIGNATURES[i].pattern.pattern)})" for i in indices]
    return re.compile("|".join(parts) or "(?!)")


def _required_literal(pattern: str) -> str:
    """The longest run of characters every match of `pattern` contains (top level)."""
    best = run = ""
    for op, av in _sre_parser.parse(pattern):
        if op is _sre_constants.LITERAL:
            run += chr(av)
            best = max(best, run, key=len)
        else:
            run = ""
    return best


# Per first character of a message, one alternation of the signatures that can match a
# message starting with it, each alternative a named group in table order: most lines
# match nothing, and one match() of a few alternatives tells so fastest. Alternation is
# ordered, so the group that matched is the first entry that matches, as the table
# promises; that entry's own pattern then extracts the fields. The few signatures that
# may start anywhere (`<comm> invoked oom-killer`) are tried only on a line holding the
# literal text each of them requires, and the earlier entry of the two candidates wins.
_FIRST = [_first_chars(sig.pattern.pattern) for sig in SIGNATURES]
_ANY_START = [i for i, first in enumerate(_FIRST) if first is None or "" in first]
_BY_CHAR: dict[str, re.Pattern[str]] = {
    ch: _alternation([i for i, first in enumerate(_FIRST) if first and ch in first])
    for ch in sorted({ch for first in _FIRST if first for ch in first if ch})
}
_OTHER = _alternation(_ANY_START)
_LITERALS = [_required_literal(SIGNATURES[i].pattern.pattern) for i in _ANY_START]
# Without a required literal of some any-start signature, every line must try them all.
_ANY_HINT = (
    re.compile("|".join(re.escape(x) for x in _LITERALS)) if all(_LITERALS) else re.compile("")
)
_NO_MATCH = re.compile("(?!)")


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


def _order(m: re.Match[str]) -> int:
    """The table index of the signature whose alternative matched."""
    return int((m.lastgroup or "s0")[1:])


class _Pending:
    """A hit still reading the lines after it: its context, its fields, its title lines."""

    __slots__ = ("context", "hit", "scan", "wanted", "window")

    def __init__(self, hit: Hit, window: bool) -> None:
        ctx = hit.sig.context
        self.hit = hit
        self.context = ctx.lines if ctx is not None else 0
        self.scan = ctx.scan if ctx is not None and ctx.fields else 0
        self.wanted = list(ctx.fields) if ctx is not None else []
        self.window = TITLE_LINES if window else 0

    def feed(self, line: Line) -> bool:
        """Take the next line; False when nothing more is wanted."""
        hit, ctx = self.hit, self.hit.sig.context
        if self.context > 0:
            hit.after.append(line)
            self.context -= 1
            if ctx is not None and ctx.until is not None and ctx.until.match(line.message):
                self.context = 0
        if self.scan > 0:
            self.scan -= 1
            for pat in list(self.wanted):
                mm = pat.search(line.message)
                if mm:
                    self.wanted.remove(pat)
                    for k, v in _extract(mm).items():
                        hit.fields.setdefault(k, v)
            if not self.wanted:
                self.scan = 0
        if self.window > 0:
            self.window -= 1
            hit.window.append(line.message[:WINDOW_CHARS].strip())
        return self.context > 0 or self.scan > 0 or self.window > 0


WINDOW_CHARS = 300  # of a line kept for the title: a frame or a RIP line is shorter


class Scanner:
    """Matches lines against the signature table one at a time.

    `feed` returns the line's hit (one signature per line), or None. A hit passed to
    `follow` then reads the lines after it as they come: its report context, the
    fields its signature looks for there, and (with `window`) the lines its title may
    come from. A kernel line echoed later by userspace (`dmesg | grep` in a foreign
    harness) has the same printk stamp and message as the original; the echo is skipped
    so that counts are not inflated (the first MAX_SEEN stamped hits are remembered).
    """

    def __init__(self) -> None:
        self.seen: set[int] = set()  # hashes of (stamp, message): a small int each
        self.pending: list[_Pending] = []

    def feed(self, index: int, line: Line) -> Hit | None:
        if self.pending:
            self.pending = [p for p in self.pending if p.feed(line)]
        hit = self._match(index, line, line.message.lstrip(), line.ktime, False)
        if hit is None and line.inner is not None:
            hit = self._match(index, line, line.inner.lstrip(), line.inner_ktime, True)
        return hit or None  # False: an echo, whose inner text is not tried either

    def _match(
        self, index: int, line: Line, message: str, ktime: float | None, inner: bool
    ) -> Hit | Literal[False] | None:
        if not message:
            return None
        m = _BY_CHAR.get(message[0], _NO_MATCH).match(message)
        if _ANY_HINT.search(message) is not None:
            other = _OTHER.match(message)
            if other is not None and (m is None or _order(other) < _order(m)):
                m = other
        if m is None:
            return None
        sig = SIGNATURES[_order(m)]
        own = sig.pattern.match(message)
        if own is None:  # cannot happen: the alternative is this very pattern
            return None
        if ktime is not None:
            key = hash((ktime, message))
            if key in self.seen:
                return False
            if len(self.seen) < MAX_SEEN:
                self.seen.add(key)
        return Hit(sig, index, _extract(own), ktime, inner, line)

    def follow(self, hit: Hit, window: bool = False) -> None:
        pending = _Pending(hit, window)
        if pending.context or pending.scan or pending.window:
            self.pending.append(pending)


def scan(lines: Iterable[Line]) -> list[Hit]:
    """Every line that matches a signature, in line order (one signature per line)."""
    scanner = Scanner()
    hits = []
    for index, line in enumerate(lines):
        hit = scanner.feed(index, line)
        if hit is not None:
            scanner.follow(hit)
            hits.append(hit)
    return hits
