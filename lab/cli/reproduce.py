"""`lab reproduce`: pick failure modes, print each claim's answer (lab.run.reproduce runs them)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lab.cli.common import _load
from lab.cli.ledger import render_ledger
from lab.cli.printer import evidence_lines
from lab.config import failures
from lab.outcome import CLASSES
from lab.run import reproduce

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
    code, run_dir, groups = reproduce.reproduce(cfg, chosen, args.arch, args.jobs)
    for m in chosen:
        print(f"{m.id}: {m.who} <{m.lore_url}>")
        print(f'  claim: "{m.claim}"')
        print(f"  reproduced if: {' or '.join(m.reproduced)}")
        # one line per (era, arch), then each cell's answer and evidence under it
        for g in (g for g in groups if g.mode is m):
            print(f"  era {g.era or '-'} {g.arch}: {g.summary.upper()}")
            for c, rec, ans in g.cells:
                if rec is None:
                    print(f"    {c.cell.id}: not run")
                    continue
                detail = rec.data.get("detail", "")
                print(f"    {c.cell.id}: {ans.upper()}: observed {rec.observed} ({detail})")
                for line in evidence_lines(rec.lines, "      ", 4):
                    print(line)
    print(f"run: {run_dir}")
    return code
