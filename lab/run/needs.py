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

Need = tuple[str, str]  # (arch name, need as the test case spells it)


def wanted(cells: Iterable[Cell]) -> list[Need]:
    """Every (arch, need) of these cells, once, in a stable order."""
    return sorted({(c.arch.name, need) for c in cells for need in c.testcase.needs})


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
            failed.update({(c.arch.name, n): exc for n in c.testcase.needs})
    todo = [n for n in wanted(cells) if n not in failed]
    if not todo:
        return built, failed
    try:
        src = source.prepare(cfg.source, cfg.cache_dir, log)
    except LabError as exc:
        return built, {**failed, **dict.fromkeys(todo, exc)}
    for arch, need in todo:
        try:
            built[(arch, need)] = kselftest.build(
                need, cfg.arch(arch), src.tree, boot.image_recipe(cfg), cfg.cache_dir, log
            )
        except LabError as exc:
            failed[(arch, need)] = exc
    return built, failed


def binaries(cell: Cell, built: Mapping[Need, Path]) -> dict[str, Path]:
    """The cell's needs -> their binaries (resolve() must have built every one)."""
    return {n: built[(cell.arch.name, n)] for n in cell.testcase.needs}


def failure(cell: Cell, failed: Mapping[Need, LabError]) -> LabError | None:
    """Why the cell cannot run for want of a need (None when it can)."""
    missing = [failed[k] for n in cell.testcase.needs if (k := (cell.arch.name, n)) in failed]
    return missing[0] if missing else None
