"""The foreign-log corpus (tests/data/foreign): real kernel consoles this lab did not produce.

Each file is a header (`KEY: value` lines), a blank line, then the log excerpt verbatim.
This checks the headers and the spread of the corpus; tests/test_foreign_corpus.py runs
the classifier on it. The family -> class rules that the labels
follow are in tests/data/foreign/README.md.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lab.classify import CLASSES

FOREIGN = Path(__file__).parent / "data" / "foreign"
FILES = sorted(FOREIGN.glob("*.log"))
# LKDTM consoles the lab recorded itself (tests/data/lkdtm/README.md): same format and
# class rules, classified the same way; not counted in the foreign corpus's spread.
LAB_RECORDED = Path(__file__).parent / "data" / "lkdtm"
LAB_FILES = sorted(LAB_RECORDED.glob("*.log"))

# family -> the class its report has when nothing else happens after it (README.md).
DEFAULT_CLASS = {
    "kasan": "bug",
    "kmsan": "bug",
    "kcsan": "bug",
    "kfence": "bug",
    "ubsan": "warn",
    "lockdep": "warn",
    "softlockup": "bug",
    "hardlockup": "bug",
    "hung_task": "bug",
    "rcu_stall": "bug",
    "workqueue_lockup": "bug",
    "bad_page": "bug",
    "atomic_sleep": "bug",
    "refcount": "warn",
    "odebug": "warn",
    "usercopy": "bug",
    "kernel_bug": "bug",
    "gpf": "oops",
    "page_fault": "oops",
    "arm64_fault": "oops",
    "oops": "oops",
    "divide_error": "oops",
    "stack_protector": "panic",
    "warning": "warn",
    "panic": "panic",
    "oom": "oom_kill",
}
# A report may be followed by a panic (panic_on_warn, Fatal exception, softlockup_panic);
# a panic before userspace is boot_failure. Hardened usercopy's fallback is a WARN.
EXTRA_CLASSES = {"usercopy": {"warn"}}
AFTER_PANIC = {"panic", "boot_failure"}
ARCHES = {"x86_64", "arm64"}
REQUIRED = ("OUTCOME", "TITLE", "FAMILY", "ARCH", "KERNEL", "SOURCE", "NOTE")
MIN_ENTRIES = 100
MIN_PER_FAMILY = 2


@dataclass
class Entry:
    name: str
    header: dict[str, list[str]] = field(default_factory=dict)
    body: str = ""

    def one(self, key: str) -> str:
        return self.header[key][0]


def load(path: Path) -> Entry:
    """Header lines `KEY: value`, a blank line, then the log (bytes kept as they are)."""
    head, sep, body = path.read_bytes().partition(b"\n\n")
    assert sep, f"{path.name}: no blank line after the header"
    entry = Entry(path.name, body=body.decode("utf-8", errors="replace"))
    for line in head.decode("utf-8").splitlines():
        key, colon, value = line.partition(": ")
        assert colon and value.strip(), f"{path.name}: header line {line!r} is not 'KEY: value'"
        assert key in REQUIRED, f"{path.name}: unknown header {key!r}, valid: {', '.join(REQUIRED)}"
        entry.header.setdefault(key, []).append(value)
    return entry


ENTRIES = [load(p) for p in FILES]
LAB_ENTRIES = [load(p) for p in LAB_FILES]
# everything the classifier is checked against: foreign logs, then the lab's LKDTM ones
CORPUS = ENTRIES + LAB_ENTRIES


@pytest.mark.parametrize("entry", CORPUS, ids=[e.name for e in CORPUS])
def test_header_is_complete_and_valid(entry: Entry) -> None:
    for key in REQUIRED:
        assert key in entry.header, f"{entry.name}: missing {key}"
        if key != "NOTE":
            assert len(entry.header[key]) == 1, f"{entry.name}: {key} given more than once"
    outcome, family, arch = entry.one("OUTCOME"), entry.one("FAMILY"), entry.one("ARCH")
    assert outcome in CLASSES, f"{entry.name}: OUTCOME {outcome!r} is not one of {CLASSES}"
    families = sorted(DEFAULT_CLASS)
    assert family in DEFAULT_CLASS, f"{entry.name}: FAMILY {family!r} is not one of {families}"
    assert arch in ARCHES, f"{entry.name}: ARCH {arch!r} is not one of {sorted(ARCHES)}"
    assert entry.body.strip(), f"{entry.name}: no log after the header"


@pytest.mark.parametrize("entry", CORPUS, ids=[e.name for e in CORPUS])
def test_label_follows_the_family_rule(entry: Entry) -> None:
    """The outcome is the family's class, or panic/boot_failure when the excerpt panics."""
    outcome, family = entry.one("OUTCOME"), entry.one("FAMILY")
    panicked = "Kernel panic - not syncing" in entry.body
    allowed = {DEFAULT_CLASS[family], *EXTRA_CLASSES.get(family, set())}
    if panicked:
        assert outcome in AFTER_PANIC, f"{entry.name}: the log panics but OUTCOME is {outcome!r}"
    else:
        want = sorted(allowed)
        assert outcome in allowed, (
            f"{entry.name}: {family} without a panic is {want}, not {outcome!r}"
        )


def test_corpus_spread() -> None:
    assert len(ENTRIES) >= MIN_ENTRIES, f"only {len(ENTRIES)} foreign logs, want {MIN_ENTRIES}"
    assert {e.one("ARCH") for e in ENTRIES} == ARCHES
    families = Counter(e.one("FAMILY") for e in ENTRIES)
    thin = {f: families[f] for f in DEFAULT_CLASS if families[f] < MIN_PER_FAMILY}
    assert not thin, f"families with fewer than {MIN_PER_FAMILY} logs: {thin}"
    # a report followed by "Kernel panic - not syncing: panic_on_warn set" is covered too
    assert sum("panic_on_warn set" in e.body for e in ENTRIES) >= MIN_PER_FAMILY
