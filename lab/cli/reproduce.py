"""`lab reproduce`: pick failure modes, print each claim's answer (lab.run.reproduce runs them)."""

from __future__ import annotations

import argparse
import json
import sys

from lab import results
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
        # A run id or a path, as every other command that takes a run.
        run_dir = results.resolve_run(cfg.results_dir, args.markdown)
        print(render_ledger(run_dir, modes), end="")
        return 0
    if args.list or not args.id:
        for m in modes:
            print(f"{m.id:32} {m.who}: {m.testcase} on {', '.join(m.variants)}")
            print(f'{"":32} "{m.claim}"')
        return 0
    chosen = modes if args.id == ["all"] else [failures.find(modes, i, cfg.file) for i in args.id]
    code, run_dir, groups = reproduce.reproduce(cfg, chosen, args.arch, args.jobs)
    # --json: the JSON document alone on stdout; the text for people goes to stderr.
    out = sys.stderr if args.json else sys.stdout
    for m in chosen:
        print(f"{m.id}: {m.who} <{m.lore_url}>", file=out)
        print(f'  claim: "{m.claim}"', file=out)
        print(f"  reproduced if: {' or '.join(m.reproduced)}", file=out)
        # one line per (era, arch), then each cell's answer and evidence under it
        for g in (g for g in groups if g.mode is m):
            print(f"  era {g.era or '-'} {g.arch}: {g.summary.upper()}", file=out)
            for c, rec, ans in g.cells:
                if rec is None:
                    print(f"    {c.cell.id}: not run", file=out)
                    continue
                detail = rec.data.get("detail", "")
                print(
                    f"    {c.cell.id}: {ans.upper()}: observed {rec.observed} ({detail})", file=out
                )
                for line in evidence_lines(rec.lines, "      ", 4):
                    print(line, file=out)
    if args.json:
        doc = {"format": 1, "run": str(run_dir), "answers": reproduce.ledger(groups)}
        print(json.dumps(doc, indent=2))
    else:
        print(f"run: {run_dir}")
    return code
