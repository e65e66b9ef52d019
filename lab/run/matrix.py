"""The matrix: variants x arches x test cases, filtered, sharded, repeated. Pure.

Planning spawns nothing and touches no files beyond what the caller loaded: it
turns a LabConfig, the discovered test cases and CLI filters into an ordered list
of cells, grouped by kernel so each (arch, variant) is built once.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lab.config import LabConfig
from lab.config.tomlread import Table
from lab.errors import UserError
from lab.run.cell import Cell
from lab.run.testcase import TestCase

MAX_REPEAT = 1000
# Far above a real matrix (the repo's is a few hundred cells), and low enough that
# `--list` answers at once instead of building millions of cells.
MAX_CELLS = 100_000


@dataclass(frozen=True)
class MatrixSpec:
    """lab.toml [matrix]: which cells the default matrix holds."""

    variants: tuple[str, ...] = ("*",)
    arches: tuple[str, ...] = ("*",)
    testcases: tuple[str, ...] = ("*",)
    exclude: tuple[Mapping[str, str], ...] = ()  # {variant=, arch=, testcase=} globs
    repeat: int = 1


@dataclass(frozen=True)
class Planned:
    cell: Cell
    repeat: int  # 1-based repetition number

    @property
    def id(self) -> str:
        return self.cell.id if self.repeat == 1 else f"{self.cell.id}#{self.repeat}"

    @property
    def dirname(self) -> str:
        return self.cell.dirname if self.repeat == 1 else f"{self.cell.dirname}--r{self.repeat}"

    @property
    def kernel(self) -> str:
        return f"{self.cell.arch.name}/{self.cell.variant.name}"


def parse_spec(raw: object, file: str) -> MatrixSpec:
    if raw is None:
        return MatrixSpec()
    if not isinstance(raw, dict):
        raise UserError(f"{file}: [matrix] must be a table")
    t = Table(Path(file), "matrix", dict(raw))
    excludes = []
    for entry in t.table_list("exclude"):
        values: dict[str, str] = {}
        for key in entry.names():
            if key not in ("variant", "arch", "testcase"):
                entry.fail_key(key, "unknown key; valid: variant, arch, testcase")
            values[key] = entry.string(key)
        entry.done()
        excludes.append(values)
    spec = MatrixSpec(
        variants=t.strings("variants", ("*",)),
        arches=t.strings("arches", ("*",)),
        testcases=t.strings("testcases", ("*",)),
        exclude=tuple(excludes),
        repeat=t.integer("repeat", 1, minimum=1, maximum=MAX_REPEAT),
    )
    t.done()
    return spec


def _globs(patterns: Sequence[str]) -> list[str]:
    return [p for item in patterns for p in item.split(",") if p]


def _match(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _check(names: Sequence[str], patterns: Sequence[str], what: str, file: str) -> None:
    for p in patterns:
        if not any(fnmatch.fnmatchcase(n, p) for n in names):
            raise UserError(
                f"{file}: {what} {p!r} matches nothing; valid: {', '.join(names) or '(none)'}"
            )


def _check_testcase_arches(testcases: Sequence[TestCase], arches: Sequence[str]) -> None:
    """A misspelt arch in a test case would silently run it nowhere."""
    for tc in testcases:
        for a in tc.arches:
            if a != "*" and a not in arches:
                raise UserError(
                    f"{tc.path}: TESTCASE['arches']: unknown arch {a!r}; "
                    f"valid: {', '.join(arches)}, or '*'"
                )


def _check_testcase_scope(cfg: LabConfig, testcases: Sequence[TestCase]) -> None:
    """A misspelt family or parameter in a test case would silently run it nowhere."""
    families = sorted({v.family for v in cfg.variants})
    known = sorted({k for v in cfg.variants for k in v.params})
    for tc in testcases:
        for f in tc.families:
            if not any(fnmatch.fnmatchcase(x, f) for x in families):
                raise UserError(
                    f"{tc.path}: TESTCASE['families']: {f!r} matches no variant family; "
                    f"valid: {', '.join(families)}, or '*'"
                )
        for k, _ in tc.params:
            if k not in known:
                raise UserError(
                    f"{tc.path}: TESTCASE['params']: no variant has the parameter {k!r}; "
                    f"valid: {', '.join(known) or '(none)'}"
                )


def plan(
    cfg: LabConfig,
    testcases: Sequence[TestCase],
    spec: MatrixSpec,
    variants: Sequence[str] = (),
    arches: Sequence[str] = (),
    tests: Sequence[str] = (),
    repeat: int | None = None,
) -> list[Planned]:
    """Cells of the matrix in a stable order (arch, variant, test case, repeat).

    CLI patterns narrow the lab.toml selection; an arch a test case does not
    support is skipped, and so is a variant outside its families or parameters
    (TESTCASE['families'], ['params']); [matrix] exclude entries drop cells.
    """
    file = str(cfg.file)
    v_names = [v.name for v in cfg.variants]
    a_names = list(cfg.arches)
    t_names = [t.name for t in testcases]
    cli_v, cli_a, cli_t = _globs(variants), _globs(arches), _globs(tests)
    _check(v_names, cli_v, "variant", file)
    _check(a_names, cli_a, "arch", file)
    _check(t_names, cli_t, "test case", file)
    # A typo in [matrix] would otherwise drop cells without a word.
    _check(v_names, spec.variants, "[matrix] variants:", file)
    _check(a_names, spec.arches, "[matrix] arches:", file)
    _check(t_names, spec.testcases, "[matrix] testcases:", file)
    _check_testcase_arches(testcases, a_names)
    _check_testcase_scope(cfg, testcases)
    repeats = repeat or spec.repeat
    if not 1 <= repeats <= MAX_REPEAT:
        size = "too large" if repeats > MAX_REPEAT else "too small"
        raise UserError(f"--repeat {repeats} is {size}; must be 1..{MAX_REPEAT}")
    cells: list[Planned] = []
    for arch_name in a_names:
        if not _match(arch_name, spec.arches) or (cli_a and not _match(arch_name, cli_a)):
            continue
        arch = cfg.arches[arch_name]
        for variant in cfg.variants:
            if not _match(variant.name, spec.variants):
                continue
            if cli_v and not _match(variant.name, cli_v):
                continue
            for tc in testcases:
                if not _match(tc.name, spec.testcases) or (cli_t and not _match(tc.name, cli_t)):
                    continue
                if not tc.runs_on(arch_name) or not tc.applies_to(variant.family, variant.params):
                    continue
                names = {"variant": variant.name, "arch": arch_name, "testcase": tc.name}
                if any(
                    all(fnmatch.fnmatchcase(names[k], v) for k, v in ex.items())
                    for ex in spec.exclude
                ):
                    continue
                if len(cells) + repeats > MAX_CELLS:
                    raise UserError(
                        f"{file}: the selection holds more than {MAX_CELLS} cells; at most "
                        f"{MAX_CELLS} (narrow it with --variant, --arch, --testcase or [matrix])"
                    )
                for r in range(1, repeats + 1):
                    cells.append(Planned(Cell(arch, variant, tc), r))
    return cells


def shard(cells: Sequence[Planned], index: int, total: int) -> list[Planned]:
    """Shard `index` (1-based) of `total`: whole kernels go to one shard, so each shard
    builds only what it runs; kernels are dealt round-robin in a stable order."""
    if total < 1 or not 1 <= index <= total:
        raise UserError(f"--shard {index}/{total}: use K/N with 1 <= K <= N")
    kernels = sorted({c.kernel for c in cells})
    mine = {k for i, k in enumerate(kernels) if i % total == index - 1}
    return [c for c in cells if c.kernel in mine]


def parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r}: use K/N, e.g. 2/3") from None
    if n < 1 or not 1 <= k <= n:
        raise UserError(f"--shard {text!r}: use K/N with 1 <= K <= N")
    return k, n


def kernels(cells: Sequence[Planned]) -> list[tuple[str, str]]:
    """(arch, variant) pairs to build, in first-use order."""
    seen: dict[str, tuple[str, str]] = {}
    for c in cells:
        seen.setdefault(c.kernel, (c.cell.arch.name, c.cell.variant.name))
    return list(seen.values())


def unknown_rule_keys(cfg: LabConfig, testcases: Sequence[TestCase]) -> list[str]:
    """`file: key` for expectation keys no variant defines (likely typos)."""
    known: set[str] = set()
    for v in cfg.variants:
        known |= set(v.params)
    out = []
    for tc in testcases:
        keys = {t.key for r in tc.rules for t in r.terms} - known - {"arch", "variant"}
        out += [f"{tc.path}: {k}" for k in sorted(keys)]
    return out
