"""Expected outcomes as rules over variant attributes. Pure.

A rule reads `CONDITION -> OUTCOME`:

    pool=cma fallback=false reserve=false fault=oom -> fault_livelock
    fault=sigbus pool=cma|pmd -> sigbus
    arch=arm64 -> pass
    * -> pass

A condition is space-separated terms, all of which must hold: `key=value`,
`key=v1|v2` (any of), `key!=value`. Keys are the variant's parameters plus `arch`
and `variant`; booleans compare as `true`/`false`. The outcome is a class name, or
`a|b` when either is acceptable (a race the test cannot pin down). The first
matching rule wins, so a new variant gets expectations from the rules it matches
without editing every test case.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lab.errors import UserError

Scalar = str | int | bool | float


@dataclass(frozen=True)
class Term:
    key: str
    negate: bool
    values: tuple[str, ...]

    def holds(self, attrs: Mapping[str, str]) -> bool:
        if self.key not in attrs:
            return False
        hit = attrs[self.key] in self.values
        return not hit if self.negate else hit


@dataclass(frozen=True)
class Rule:
    text: str
    terms: tuple[Term, ...]  # empty: matches everything (`*`)
    outcomes: tuple[str, ...]

    def matches(self, attrs: Mapping[str, str]) -> bool:
        return all(t.holds(attrs) for t in self.terms)


def norm(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).lower()


def parse_rule(text: str, where: str, classes: Sequence[str] = ()) -> Rule:
    if "->" not in text:
        raise UserError(f"{where}: rule {text!r} has no '->' (write 'key=value ... -> outcome')")
    cond, _, outcome = text.rpartition("->")
    outcomes = tuple(o.strip() for o in outcome.split("|") if o.strip())
    if not outcomes:
        raise UserError(f"{where}: rule {text!r} names no outcome")
    for o in outcomes:
        if classes and o not in classes:
            raise UserError(
                f"{where}: rule {text!r}: unknown outcome {o!r}; valid: {', '.join(classes)}"
            )
    terms = []
    for word in cond.split():
        if word == "*":
            continue
        negate = "!=" in word
        key, sep, value = word.partition("!=" if negate else "=")
        if not sep or not key or not value:
            raise UserError(
                f"{where}: rule {text!r}: bad term {word!r} (use key=value, key=a|b or key!=value)"
            )
        terms.append(Term(key, negate, tuple(norm(v) for v in value.split("|"))))
    return Rule(text.strip(), tuple(terms), outcomes)


def attributes(params: Mapping[str, Scalar], arch: str, variant: str) -> dict[str, str]:
    return {**{k: norm(v) for k, v in params.items()}, "arch": arch, "variant": variant.lower()}


def expected(rules: Sequence[Rule], attrs: Mapping[str, str]) -> Rule | None:
    """The first rule that matches, or None when the test case declares nothing."""
    return next((r for r in rules if r.matches(attrs)), None)


def unknown_keys(rules: Sequence[Rule], known: set[str]) -> list[str]:
    """Keys used by rules that no variant defines (most likely typos)."""
    return sorted({t.key for r in rules for t in r.terms} - known - {"arch", "variant"})
