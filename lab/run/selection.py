"""Choosing arches and variants from CLI patterns (exact names or shell globs). Pure."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

from lab.config import ArchSpec, LabConfig, Variant
from lab.errors import UserError


def _split(patterns: Iterable[str]) -> list[str]:
    return [p for item in patterns for p in item.split(",") if p]


def _pick(names: Sequence[str], patterns: Sequence[str], what: str, file: str) -> list[str]:
    chosen: list[str] = []
    for pattern in _split(patterns):
        matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            raise UserError(f"{file}: unknown {what} {pattern!r}; valid: {', '.join(names)}")
        chosen.extend(n for n in matched if n not in chosen)
    return chosen


def arches(cfg: LabConfig, patterns: Sequence[str]) -> list[ArchSpec]:
    """The arches named by patterns; all declared arches when none are given."""
    names = list(cfg.arches)
    if not patterns:
        return [cfg.arches[n] for n in names]
    return [cfg.arches[n] for n in _pick(names, patterns, "arch", str(cfg.file))]


def variants(cfg: LabConfig, patterns: Sequence[str], everything: bool = False) -> list[Variant]:
    """The variants named by patterns; the first declared one when none are given."""
    names = [v.name for v in cfg.variants]
    if everything and not patterns:
        return list(cfg.variants)
    if not patterns:
        return [cfg.variants[0]]
    picked = _pick(names, patterns, "variant", str(cfg.file))
    return [cfg.variant(n) for n in picked]
