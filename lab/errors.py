"""Error types. Both print as one line at the CLI; tracebacks are for bugs only."""


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


# C0 and C1 controls, DEL, and the bidi/format controls that reorder what a terminal or
# a CI log shows (Trojan-Source style), each mapped to its \xNN / \uNNNN escape.
_CONTROLS = [*range(0x20), *range(0x7F, 0xA0), 0x200E, 0x200F, *range(0x202A, 0x202F)]
_CONTROLS += range(0x2066, 0x206A)
_ESCAPE = {c: (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _CONTROLS}
_ESCAPE_KEEP_LINES = {c: e for c, e in _ESCAPE.items() if chr(c) not in "\t\n"}


def printable(text: str, limit: int = 0, one_line: bool = False) -> str:
    """Text from elsewhere (a lab host's stderr, a guest) made safe for a terminal or a
    CI log: control characters escaped, so an ESC sequence cannot drive the reader's
    terminal; tab and newline are kept unless `one_line`."""
    text = text.translate(_ESCAPE if one_line else _ESCAPE_KEEP_LINES)
    if limit and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text
