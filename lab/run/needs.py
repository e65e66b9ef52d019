"""Test-case needs (`kselftest:<dir>/<name>`): the host-built binaries a test case takes
into the guest, built before any cell is scheduled, next to kernels and base images.

So preparing a cell only reads files: no kernel source is extracted and nothing is
compiled inside a scheduler thread or on behalf of a lab host.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from lab.build import kselftest, source
from lab.config import LabConfig
from lab.errors import LabError, UserError
from lab.run.cell import Cell
from lab.vm import boot

# (arch name, the variant's kernel source ("" = [source]), need as the test case spells it):
# a selftest is compiled from the tree of the kernel it runs on, and variants may differ.
Need = tuple[str, str, str]


def key(cell: Cell, need: str) -> Need:
    return (cell.arch.name, cell.variant.source, need)


def wanted(cells: Iterable[Cell]) -> list[Need]:
    """Every (arch, source, need) of these cells, once, in a stable order."""
    return sorted({key(c, need) for c in cells for need in c.testcase.needs})


def check(cell: Cell) -> None:
    """A need this lab cannot provide is the test case's error."""
    for need in cell.testcase.needs:
        if not need.startswith(kselftest.PREFIX):
            raise UserError(
                f"{cell.testcase.path}: unknown need {need!r} "
                f"(known: {kselftest.PREFIX}<dir>/<name>)"
            )


def resolve(
    cfg: LabConfig, cells: Iterable[Cell], log: Callable[[str], None] = lambda _m: None
) -> tuple[dict[Need, Path], dict[Need, LabError]]:
    """Build what the cells need: the binaries, and why each need that failed did (its
    cells become infra cells, as the cells of a kernel that did not build)."""
    cells = list(cells)
    built: dict[Need, Path] = {}
    failed: dict[Need, LabError] = {}
    for c in cells:
        try:
            check(c)
        except UserError as exc:
            failed.update({key(c, n): exc for n in c.testcase.needs})
    todo = [n for n in wanted(cells) if n not in failed]
    variants = {c.variant.source: c.variant for c in cells}
    trees: dict[str, Path | LabError] = {}
    for arch, src_name, need in todo:
        if src_name not in trees:
            try:
                spec = cfg.source_for(variants[src_name])
                trees[src_name] = source.prepare(spec, cfg.cache_dir, log).tree
            except LabError as exc:
                trees[src_name] = exc
        tree = trees[src_name]
        if isinstance(tree, LabError):
            failed[(arch, src_name, need)] = tree
            continue
        try:
            built[(arch, src_name, need)] = kselftest.build(
                need, cfg.arch(arch), tree, boot.image_recipe(cfg), cfg.cache_dir, log
            )
        except LabError as exc:
            failed[(arch, src_name, need)] = exc
    return built, failed


def binaries(cell: Cell, built: Mapping[Need, Path]) -> dict[str, Path]:
    """The cell's needs -> their binaries (resolve() must have built every one)."""
    return {n: built[key(cell, n)] for n in cell.testcase.needs}


def failure(cell: Cell, failed: Mapping[Need, LabError]) -> LabError | None:
    """Why the cell cannot run for want of a need (None when it can)."""
    missing = [failed[k] for n in cell.testcase.needs if (k := key(cell, n)) in failed]
    return missing[0] if missing else None
