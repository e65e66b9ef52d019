"""`lab reproduce`: the failure modes' cells and their answer."""

from __future__ import annotations

import argparse
from pathlib import Path

from lab import build, cache, results
from lab.cli.common import _load
from lab.cli.ledger import render_ledger
from lab.cli.printer import evidence_lines
from lab.config import failures
from lab.errors import LabError
from lab.outcome import CLASSES
from lab.run import matrix, orchestrate, testcase

# --- reproduce ----------------------------------------------------------------------------


def cmd_reproduce(args: argparse.Namespace) -> int:
    cfg = _load(args)
    modes = failures.parse(cfg.extra.get("failure_mode"), cfg.file, CLASSES)
    if args.markdown:
        print(render_ledger(Path(args.markdown), modes), end="")
        return 0
    if args.list or not args.id:
        for m in modes:
            print(f"{m.id:32} {m.who}: {m.testcase} on {', '.join(m.variants)}")
            print(f'{"":32} "{m.claim}"')
        return 0
    chosen = modes if args.id == ["all"] else [failures.find(modes, i, cfg.file) for i in args.id]
    tcs = {t.name: t for t in testcase.discover(cfg.testcases_dir, CLASSES)}
    cells: dict[str, matrix.Planned] = {}
    for m in chosen:
        if m.testcase not in tcs:
            raise LabError(f"failure mode {m.id}: unknown test case {m.testcase!r}")
        arches = args.arch or list(m.arches)
        # every era of the variants the claim names (issue 10)
        names = failures.variant_names(m, [(v.name, v.params) for v in cfg.variants])
        for c in matrix.plan(
            cfg,
            [tcs[m.testcase]],
            matrix.MatrixSpec(),
            names or list(m.variants),
            arches,
            [m.testcase],
        ):
            cells.setdefault(c.id, c)
    header = orchestrate.run_header(
        cfg,
        list(cells.values()),
        {
            "variants": [],
            "arches": args.arch,
            "testcases": [],
            "repeat": 1,
            "shard": None,
            "failure_modes": [m.id for m in chosen],
        },
    )
    run_dir = results.new_run(cfg.results_dir, "reproduce", header)
    jobs = args.jobs or cfg.jobs or build.default_jobs(cfg)
    code = orchestrate.run_matrix(cfg, list(cells.values()), run_dir, jobs)
    records = {r.id: r for r in results.read_cells(run_dir)}
    answers = []
    for m in chosen:
        print(f"{m.id}: {m.who} <{m.lore_url}>")
        print(f'  claim: "{m.claim}"')
        print(f"  reproduced if: {' or '.join(m.reproduced)}")
        # one line per (era, arch), then each cell's answer and evidence under it
        groups: dict[tuple[str, str], list[matrix.Planned]] = {}
        for c in cells.values():
            v = c.cell.variant
            era, base = failures.era_of(v.name, v.params)
            if m.selects(c.cell.arch.name, v.name, c.cell.testcase.name, base):
                groups.setdefault((era, c.cell.arch.name), []).append(c)
        for (era, arch), group in groups.items():
            lines, got = [], []
            for c in group:
                rec = records.get(c.cell.id)
                if rec is None:
                    lines.append(f"    {c.cell.id}: not run")
                    continue
                ans = failures.answer(m, rec.observed)
                got.append(ans)
                answers.append(
                    {
                        "failure_mode": m.id,
                        "era": era,
                        "cell": c.cell.id,
                        "answer": ans,
                        "observed": rec.observed,
                        "detail": rec.data.get("detail"),
                    }
                )
                lines.append(
                    f"    {c.cell.id}: {ans.upper()}: observed {rec.observed} "
                    f"({rec.data.get('detail', '')})"
                )
                lines += evidence_lines(rec.lines, "      ", 4)
            print(f"  era {era or '-'} {arch}: {failures.summarise(got).upper()}")
            print("\n".join(lines))
    cache.write_json(run_dir / "reproduce.json", answers)
    print(f"run: {run_dir}")
    return code
