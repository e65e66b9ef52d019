"""Untrusted values from a run directory (cleaned, capped, escaped); limits and colours."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from lab import cache
from lab.errors import escape_unsafe
from lab.outcome import Outcome

REPORTS = ("report.html", "summary.md", "junit.xml")
CELL_FILES = (
    "console.log",
    "console.timed.log",
    "result.jsonl",
    "evidence.json",
    "qemu.argv",
    "cell.json",
)
MAX_FRAGMENT = 256 * 1024  # bytes of fragment.config embedded per kernel
MAX_EXCERPT = 40  # console lines shown around the evidence of one run cell
EXCERPT_CONTEXT = 2  # lines either side of an evidence line in the excerpt
MAX_LINE = 500  # characters of one console line in an excerpt
MAX_CONSOLE = 256 << 20  # bytes of a console.log read for excerpts
LIST_LIMIT = 20  # cells listed per category in the terminal summary
MD_WIDTH = 76  # summary.md: aimed-at line width (mail clients wrap at ~78)

OTHER_COLOUR = ("#c9b28f", "#000")  # a class this lab version does not know
NOT_RUN_COLOUR = ("#f0f0f0", "#777")

# summary.md grid markers, suffixed to the short class name.
MARK_UNEXPECTED, MARK_UNSTABLE, MARK_XARCH = "*", "~", "!"
MD_NOT_RUN, MD_NOT_PLANNED = "-", "."

_T = TypeVar("_T")

# --- untrusted values -----------------------------------------------------------------


def _clean(value: object, limit: int = 0) -> str:
    """A string safe for HTML text, XML and terminals: control characters (but tab and
    newline) as \\xNN escapes, non-strings as JSON, optionally capped."""
    if value is None:
        text = ""
    elif isinstance(value, str):
        text = value
    elif isinstance(value, bool | int | float):
        text = json.dumps(value)
    else:
        text = json.dumps(value, sort_keys=True, default=str)
    text = escape_unsafe(text)
    if limit and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def _line(value: object, limit: int = 0) -> str:
    """One line of text: newlines and tabs become spaces."""
    return _clean(value, limit).replace("\n", " ").replace("\t", " ")


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _token(value: str) -> str:
    """A CSS class / id fragment from a (possibly hostile) name."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", value)[:64] or "_"


def _anchor(kind: str, name: str) -> str:
    # Sanitising alone could map two names to one id; the digest keeps ids unique
    # and stable between renders of the same run.
    return f"{kind}-{_token(name)}-{cache.digest(name)[:8]}"


def _short(outcome: str) -> str:
    known = Outcome.of(outcome)
    return known.short if known else outcome


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f} s"
    minutes, secs = divmod(round(value), 60)
    if minutes < 120:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _split_id(run_cell_id: str) -> tuple[str, str, str, int]:
    """(arch, variant, test case, repeat) from "arch/variant/testcase[#N]"."""
    base, _, rep = run_cell_id.partition("#")
    repeat = int(rep) if rep.isdigit() else 1
    arch, _, rest = base.partition("/")
    variant, _, testcase = rest.rpartition("/")
    return arch, variant or rest, testcase, repeat
