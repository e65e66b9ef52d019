"""Failure modes reported in review, as data: `[[failure_mode]]` in lab.toml. Pure.

Each entry pins a claim from a mailing-list thread (with its message id) to the
cells that test it and to the outcome classes that count as "reproduced". A run
then answers, per cell: reproduced, not reproduced (the system coped: `pass`), or a
different outcome (some other failure class; often the most interesting answer).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lab.config.tomlread import Table
from lab.errors import UserError

ANSWERS = ("reproduced", "not reproduced", "different outcome")


@dataclass(frozen=True)
class FailureMode:
    id: str
    message_id: str  # lore Message-Id of the claim
    who: str  # author and date
    claim: str  # the quoted claim
    testcase: str
    variants: tuple[str, ...]  # globs
    arches: tuple[str, ...]  # globs
    reproduced: tuple[str, ...]  # outcome classes that count as reproducing the claim
    note: str

    @property
    def lore_url(self) -> str:
        return f"https://lore.kernel.org/r/{self.message_id}"

    def selects(self, arch: str, variant: str, testcase: str, base: str = "") -> bool:
        """`base`: the variant's name in the 6.1 era (see `era_of`), so a ledger entry
        naming `C0` also selects its 5.11 twin `C0-5.11`."""
        return (
            testcase == self.testcase
            and any(fnmatch.fnmatchcase(n, v) for v in self.variants for n in {variant, base} if n)
            and any(fnmatch.fnmatchcase(arch, a) for a in self.arches)
        )


def variant_names(
    mode: FailureMode, variants: Sequence[tuple[str, Mapping[str, object]]]
) -> list[str]:
    """Names of the (name, params) variants the mode selects, in every era."""
    return [
        name
        for name, params in variants
        if any(
            fnmatch.fnmatchcase(n, v)
            for v in mode.variants
            for n in {name, era_of(name, params)[1]}
        )
    ]


def era_of(name: str, params: Mapping[str, object]) -> tuple[str, str]:
    """(era, base name) of a variant: a variant with an `era` parameter is named
    `<base>-<era>` outside the default era (lab.toml's name template); without the
    parameter the era is "" and the base is the name."""
    era = params.get("era")
    if era is None:
        return "", name
    era = str(era)
    suffix = f"-{era}"
    return era, name[: -len(suffix)] if name.endswith(suffix) else name


def summarise(answers: Sequence[str]) -> str:
    """One answer for the cells of one (claim, era, arch): theirs if they agree."""
    distinct = sorted(set(answers))
    if not distinct:
        return "not run"
    return distinct[0] if len(distinct) == 1 else "mixed"


def parse(raw: object, file: Path, classes: Sequence[str] = ()) -> list[FailureMode]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
        raise UserError(f"{file}: failure_mode must be an array of tables ([[failure_mode]])")
    out: list[FailureMode] = []
    for i, entry in enumerate(raw):
        t = Table(file, f"failure_mode[{i}]", dict(entry))
        fm = FailureMode(
            id=t.string("id"),
            message_id=t.string("message_id"),
            who=t.string("who", ""),
            claim=t.string("claim"),
            testcase=t.string("testcase"),
            variants=t.strings("variants"),
            arches=t.strings("arches", ("*",)),
            reproduced=t.strings("reproduced"),
            note=t.string("note", ""),
        )
        t.done()
        for c in fm.reproduced:
            if classes and c not in classes:
                t.fail_key("reproduced", f"unknown outcome {c!r}; valid: {', '.join(classes)}")
        if any(f.id == fm.id for f in out):
            t.fail_key("id", f"duplicate failure mode id {fm.id!r}")
        out.append(fm)
    return out


def find(modes: Sequence[FailureMode], ident: str, file: Path) -> FailureMode:
    for m in modes:
        if m.id == ident:
            return m
    raise UserError(
        f"{file}: unknown failure mode {ident!r}; valid: "
        f"{', '.join(m.id for m in modes) or '(none declared)'}"
    )


def answer(mode: FailureMode, observed: str) -> str:
    # infra_error: the experiment did not run (a failed precondition, a harness death, a
    # host lost): that answers nothing, least of all "the system did something else".
    if observed == "infra_error" and observed not in mode.reproduced:
        return "no answer"
    if observed in mode.reproduced:
        return "reproduced"
    if observed == "pass":
        return "not reproduced"
    return "different outcome"
