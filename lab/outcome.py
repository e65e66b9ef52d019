"""The lab's vocabulary for results: outcome classes, verdicts, build statuses.

Each is a StrEnum, so it is its string value everywhere a string is expected: in
cell.json and evidence.json (the bytes on disk are the plain names), in f-strings and
in comparisons with strings read back from disk. Everything known about one value
(a class's colour and short name, a verdict's precedence) is an attribute of it, so a
new outcome is one edit here (plus its rules in classify and docs/outcomes.md).
"""

from __future__ import annotations

import enum
from typing import Literal

# Which of the lab's deadlines expired (the lab then killed QEMU): the boot deadline
# (no ready marker in time) or the test deadline (no `done` record in time).
Deadline = Literal["boot", "test"]


class Outcome(enum.StrEnum):
    """What a cell's console and records show: the classifier's product.

    Declaration order is the presentation order (legends, the `valid:` lists of
    error messages)."""

    # value, (background, text) colour, short name for narrow plain-text grids
    PASS = "pass", ("#9be39b", "#000"), ""
    FAIL = "fail", ("#ffa07a", "#000"), ""
    SIGBUS = "sigbus", ("#ffd84d", "#000"), ""
    OOM_KILL = "oom_kill", ("#f5a3d0", "#000"), "oom"
    FAULT_LIVELOCK = "fault_livelock", ("#b69cff", "#000"), "livelk"
    # `refused` is a class a test case may add.
    REFUSED = "refused", ("#8fe0d0", "#000"), ""
    OOPS = "oops", ("#ff6b6b", "#000"), ""
    BUG = "bug", ("#d62828", "#fff"), ""
    WARN = "warn", ("#fff1a8", "#000"), ""
    PANIC = "panic", ("#7b0000", "#fff"), ""
    HANG = "hang", ("#80c8f0", "#000"), ""
    BOOT_FAILURE = "boot_failure", ("#5c6670", "#fff"), "noboot"
    INFRA_ERROR = "infra_error", ("#d0d0d0", "#000"), "infra"

    # A fixed colour per class, so a grid reads the same in every report. Failure-ish
    # classes are warm, kernel-integrity ones red, the lab's own trouble grey.
    colour: tuple[str, str]
    _short: str

    def __new__(cls, value: str, colour: tuple[str, str], short: str) -> Outcome:
        member = str.__new__(cls, value)
        member._value_ = value
        member.colour = colour
        member._short = short
        return member

    @property
    def short(self) -> str:
        """The name in narrow plain-text grids (summary.md): the class name unless long."""
        return self._short or self.value

    @classmethod
    def of(cls, name: object) -> Outcome | None:
        """The class named `name`, None for a name this lab version does not know
        (results written by another version, or by hand; any JSON value)."""
        return next((o for o in cls if o.value == name), None)


CLASSES: tuple[str, ...] = tuple(Outcome)


class Verdict(enum.StrEnum):
    """An observed outcome against the test case's expectation."""

    EXPECTED = "expected", 0
    UNEXPECTED = "unexpected", 2
    INFRA = "infra", 1  # the lab could not tell: neither as nor against expectation

    # Several verdicts (repetitions of one cell) read as the one of highest
    # precedence: one unexpected run makes the slot unexpected.
    precedence: int

    def __new__(cls, value: str, precedence: int) -> Verdict:
        member = str.__new__(cls, value)
        member._value_ = value
        member.precedence = precedence
        return member

    @classmethod
    def of(cls, name: object) -> Verdict | None:
        """The verdict named `name` (any JSON value read from disk), else None."""
        return next((v for v in cls if v.value == name), None)

    @property
    def exit_code(self) -> int:
        """The exit status of a command that ran just this cell (README: exit codes)."""
        return {Verdict.EXPECTED: 0, Verdict.UNEXPECTED: 1}.get(self, 2)

    @classmethod
    def worst(cls, verdicts: set[str] | frozenset[str]) -> Verdict | None:
        """The verdict of highest precedence among `verdicts` (None: there are none)."""
        known = [v for v in cls if v in verdicts]
        return max(known, key=lambda v: v.precedence, default=None)

    @classmethod
    def for_outcome(cls, observed: str, expected: tuple[str, ...]) -> Verdict:
        """infra_error is never the kernel's verdict; an undeclared expectation makes
        every outcome unexpected (the test case must say what it expects)."""
        if observed == Outcome.INFRA_ERROR:
            return cls.INFRA
        return cls.EXPECTED if observed in expected else cls.UNEXPECTED


class BuildStatus(enum.StrEnum):
    """How building one kernel ended. A failed build is a result about the kernel
    (its config or its code), not an error of the lab: it is data, not an exception."""

    BUILT = "built"
    CACHED = "cached"
    BUILD_FAILED = "build_failed"  # make exited non-zero

    @property
    def ok(self) -> bool:
        return self in (BuildStatus.BUILT, BuildStatus.CACHED)
