"""Error types. Both print as one line at the CLI; tracebacks are for bugs only."""

import re


class LabError(Exception):
    """A problem printed as one line at the CLI (exit status 2). Raise one of the two
    kinds below; catch this one where either kind ends the same way (a cell becomes
    an infra_error, a command exits 2)."""


class UserError(LabError):
    """The input is wrong and the user can fix it: a bad lab.toml, test case, patch,
    template, option or results directory, a missing host tool. The message names the
    file, key or value and what would be valid."""


class InfraError(LabError):
    """The lab or the host failed, not the input: a tool that worked before failed, a
    download or an extraction broke, a lab host was lost."""


# C0 and C1 controls, DEL, the bidi/format controls that reorder what a terminal, a CI log
# or a browser shows (Trojan-Source style), surrogates and non-characters: every place that
# shows text from elsewhere (evidence, reports, host output) escapes this one set.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff\ufffe\uffff]"
)


def escape_unsafe(text: str, keep: str = "\t\n") -> str:
    """`text` with each unsafe character (but those in `keep`) as its `\\xNN`/`\\uNNNN`
    escape."""

    def one(m: re.Match[str]) -> str:
        c = m.group()
        if c in keep:
            return c
        return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"

    return _UNSAFE.sub(one, text)


def printable(text: str, limit: int = 0, one_line: bool = False) -> str:
    """Text from elsewhere (a lab host's stderr, a guest) made safe for a terminal or a
    CI log: control characters escaped, so an ESC sequence cannot drive the reader's
    terminal; tab and newline are kept unless `one_line`."""
    text = escape_unsafe(text, keep="" if one_line else "\t\n")
    if limit and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text
