"""Expanding a variant family (axes + include/exclude) into concrete variants.

Semantics follow GitHub Actions' job matrix, which many kernel developers know:
- the cross product of `axes` gives the base combinations, in declaration order;
- an `exclude` entry removes every combination whose values match all its keys;
- an `include` entry is merged into every combination it does not contradict on an
  axis value (adding its other keys); when it fits none, it becomes a new combination.
Pure functions only: no I/O, no templates rendered here.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

from lab.config.tomlread import Scalar

Params = dict[str, Scalar]


def _matches(combo: Mapping[str, Scalar], pattern: Mapping[str, Scalar]) -> bool:
    return all(k in combo and combo[k] == v for k, v in pattern.items())


def expand(
    axes: Mapping[str, Sequence[Scalar]],
    include: Sequence[Mapping[str, Scalar]] = (),
    exclude: Sequence[Mapping[str, Scalar]] = (),
    constants: Mapping[str, Scalar] | None = None,
) -> list[Params]:
    """Return the parameter sets of a variant family.

    `constants` are defaults every combination starts from; axis and include
    values take precedence over them.
    """
    names = list(axes)
    base = dict(constants or {})
    if not names:
        # No axes: one variant, or one per include entry (each names a flavour).
        flavours: list[Params] = [dict(e) for e in include] or [{}]
        return [{**base, **c} for c in flavours if not any(_matches(c, ex) for ex in exclude)]
    combos: list[Params] = [
        dict(zip(names, values, strict=True))
        for values in itertools.product(*(axes[n] for n in names))
    ]
    combos = [c for c in combos if not any(_matches(c, ex) for ex in exclude)]
    axis_keys = set(names)
    originals = [dict(c) for c in combos]
    for entry in include:
        fitted = False
        for combo, original in zip(combos, originals, strict=True):
            contradicts = any(
                k in axis_keys and k in original and original[k] != v for k, v in entry.items()
            )
            if not contradicts:
                combo.update(entry)
                fitted = True
        if not fitted:
            combos.append(dict(entry))
            originals.append(dict(entry))
    return [{**base, **c} for c in combos]
