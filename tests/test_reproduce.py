"""lab reproduce's run stage (lab.run.reproduce) without boots: the cells a claim names,
and each cell's answer read back from a finished run directory."""

from __future__ import annotations

from pathlib import Path

from lab import results
from lab.config import LabConfig, failures, load
from lab.outcome import CLASSES
from lab.run import reproduce
from lab.run.job import identity

REPO = Path(__file__).resolve().parent.parent


def _modes() -> tuple[LabConfig, list[failures.FailureMode]]:
    cfg = load(REPO / "lab.toml")
    return cfg, failures.parse(cfg.extra.get("failure_mode"), cfg.file, CLASSES)


def test_a_claim_plans_every_era_of_its_variants_once_per_arch() -> None:
    cfg, modes = _modes()
    sigbus = failures.find(modes, "rapoport-sigbus-controllable", cfg.file)
    both = [sigbus, sigbus]  # a claim named twice plans its cells once
    ids = [c.id for c in reproduce.plan(cfg, both, [])]
    assert ids == [f"{a}/C1{e}/depletion" for a in ("x86_64", "arm64") for e in ("", "-5.11")]
    assert {c.id for c in reproduce.plan(cfg, [sigbus], ["arm64"])} == {
        "arm64/C1/depletion",
        "arm64/C1-5.11/depletion",
    }


def test_answers_per_era_and_arch_from_the_finished_cells(tmp_path: Path) -> None:
    cfg, modes = _modes()
    m = failures.find(modes, "rapoport-sigbus-controllable", cfg.file)
    cells = reproduce.plan(cfg, [m], ["x86_64"])
    observed = {"x86_64/C1/depletion": "sigbus"}  # the 5.11 era cell did not run
    for c in cells:
        if c.id in observed:
            data = {**identity(cfg, c.cell, c.id), "observed": observed[c.id], "detail": "d"}
            results.CellResult(tmp_path / "cells" / c.dirname, data, {"evidence": []}).write()
    groups = reproduce.answer([m], cells, tmp_path)
    assert [(g.era, g.arch) for g in groups] == [("6.1", "x86_64"), ("5.11", "x86_64")]
    (ran,), (missing,) = (g.cells for g in groups)
    assert ran[2] == failures.answer(m, "sigbus") == "reproduced" and groups[0].summary
    assert missing[1] is None and missing[2] == ""
    assert reproduce.ledger(groups) == [
        {
            "failure_mode": m.id,
            "era": "6.1",
            "cell": "x86_64/C1/depletion",
            "answer": "reproduced",
            "observed": "sigbus",
            "detail": "d",
        }
    ]
