"""`lab matrix`: plan (or re-plan, --resume) the cells, then one call to the run stage."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lab import build, report, results
from lab.cli import jsonout
from lab.cli.common import _load
from lab.cli.hosts import chosen, opener
from lab.config import known
from lab.errors import UserError
from lab.outcome import CLASSES
from lab.run import matrix, orchestrate, testcase


def cmd_matrix(args: argparse.Namespace) -> int:
    if args.json and not args.list:
        raise UserError("--json goes with --list (a run's results are run.json and cell.json)")
    cfg = _load(args)
    tcs = testcase.discover(cfg.testcases_dir, CLASSES)
    for problem in matrix.unknown_rule_keys(cfg, tcs):
        print(
            f"lab: warning: expectation uses a key no variant defines: {problem}", file=sys.stderr
        )
    spec = matrix.parse_spec(cfg.extra.get("matrix"), str(cfg.file))
    lab_hosts = chosen(cfg, args.hosts)  # validated on every run: a typo in [[hosts]] is an error
    forced = ""
    if args.force_config and not args.resume:
        raise UserError("--force-config applies only to --resume RUN")
    if args.resume:
        run_dir = results.resolve_run(cfg.results_dir, args.resume)
        cells, forced = orchestrate.resume_plan(cfg, tcs, spec, run_dir, args.force_config)
        if args.kernel:
            raise UserError("--kernel does not go with --resume (the run recorded its kernel)")
        sel = results.load_run(run_dir).get("selection")
        kernel = str(sel.get("kernel") or "") if isinstance(sel, dict) else ""
        print(f"lab: resuming {run_dir}", file=sys.stderr)
    else:
        cells = matrix.plan(cfg, tcs, spec, args.variant, args.arch, args.testcase, args.repeat)
        if args.shard:
            cells = matrix.shard(cells, *matrix.parse_shard(args.shard))
        if not cells:
            raise UserError("the selection holds no cells")
        kernel = args.kernel
        if kernel:  # checked now: a wrong image fails before any run directory exists
            orchestrate.prebuilt_for(cells, kernel)
        if args.list and args.json:
            print(json.dumps(jsonout.matrix_list(cells), indent=2))
            return 0
        if args.list:
            _print_plan(cells)
            return 0
        selection = {
            "variants": args.variant,
            "arches": args.arch,
            "testcases": args.testcase,
            "repeat": args.repeat or spec.repeat,
            "shard": args.shard or None,
            **({"kernel": kernel} if kernel else {}),
        }
        base = Path(args.results) if args.results else cfg.results_dir
        header = orchestrate.run_header(cfg, cells, selection)
        run_dir = results.new_run(base, "matrix", header)
        print(
            f"lab: run {run_dir} ({len(cells)} cells, {len(matrix.kernels(cells))} kernels)",
            file=sys.stderr,
        )
    jobs = args.jobs or cfg.jobs or build.default_jobs(cfg)
    code = orchestrate.run_matrix(cfg, cells, run_dir, jobs, opener(cfg, lab_hosts), forced, kernel)
    print(report.text_summary(run_dir, known.lookup(cfg.known_issues)))
    return code


def _print_plan(cells: list[matrix.Planned]) -> None:
    for c in cells:
        rule = c.cell.expectation()
        print(
            f"{c.id:40} expect {'|'.join(rule.outcomes) if rule else '?':24} "
            f"({rule.text if rule else 'no rule matches'})"
        )
    print(f"{len(cells)} cells, {len(matrix.kernels(cells))} kernels", file=sys.stderr)
