"""The outcome classifier: a raw console log (+ what the lab knows) -> one class with evidence.

Pure: no I/O, no processes. `lab run` calls `classify(console, facts)` after a boot;
`lab classify LOG` calls `classify(console)` on any saved serial log, from this lab
or another one. Three stages:

1. `normalise` splits the console into lines (CR dropped, original 1-based line
   numbers kept), strips terminal escapes and the prefixes in front of a kernel
   message: the lab's host timestamp (`console.timed.log`), `<N>` syslog levels,
   the printk timestamp and a `[T123]` caller id.
2. Every line is matched against the declarative table in `lab.classify.signatures`; the
   first matching entry wins for that line.
3. `RULES`, an explicit ordered list, picks the class: the first rule whose
   condition holds decides, and its id is recorded. docs/outcomes.md explains
   each rule and why the order is what it is.

Everything from the guest (console text and agent records) is untrusted: records
are type-checked field by field, malformed ones become protocol problems, and any
string copied into the output is cleaned of control characters and capped.

Modules, in the order the data flows: model (limits, RunFacts, Classification), normalise
(lines, the scan), records (agent records), findings (what the rules look at), the rule
checks (kernel_rules, lab_rules, victim_rules, run_rules), rules (the RULES table).
"""

from __future__ import annotations

from lab.classify.findings import _Findings
from lab.classify.lab_rules import _context, _others
from lab.classify.model import (
    HARNESS,
    MAX_DETAIL,
    MAX_EVIDENCE,
    MAX_TEXT,
    TASK_ROLES,
    Classification,
    Evidence,
    RunFacts,
    _clean,
)
from lab.classify.normalise import Console, normalise, scan, shown
from lab.classify.rules import RULES, Rule
from lab.classify.victim_rules import _victim_fields
from lab.outcome import CLASSES

# What callers use: the entry point, its records and the limits tests check against.
__all__ = [
    "CLASSES",
    "HARNESS",
    "MAX_EVIDENCE",
    "MAX_TEXT",
    "RULES",
    "TASK_ROLES",
    "Classification",
    "Console",
    "Evidence",
    "Rule",
    "RunFacts",
    "classify",
    "normalise",
    "scan",
    "shown",
]


def classify(console: Console, facts: RunFacts | None = None) -> Classification:
    """Classify one run.

    Args:
        console: the raw serial console log (any text; see `normalise`), or a function
            that returns its lines anew each time it is called (a log read from disk as it
            is needed: it is read twice, and memory does not grow with its size).
        facts: what the lab knows besides the console, or None for a foreign log.

    Returns:
        The class picked by the first rule of `RULES` that holds, with evidence.
        Never raises for anything found in the console or the records.
    """
    f = _Findings(console, facts)
    for rule in RULES:
        verdict = rule.check(f)
        if verdict is None:
            continue
        values = dict(verdict.fields)
        banners = f.banners()
        if banners and "banner" not in values:
            values["banner"] = banners[0][1]
        victim = f.agent.victim() if facts is not None else None
        if victim is not None:
            values.setdefault("victim", _victim_fields(f, victim))
            values.setdefault("others", _others(f, victim))
        detail = verdict.detail + _context(values.get("others") or ())
        return Classification(
            outcome=verdict.outcome,
            detail=_clean(detail, MAX_DETAIL),
            rule=rule.id,
            rule_text=rule.text,
            evidence=verdict.evidence.done(),
            matched=f.matched,
            fields=values,
            title=_clean(verdict.title, MAX_DETAIL) if verdict.title else None,
        )
    raise AssertionError("unreachable: the last rules cover both foreign logs and lab runs")
