"""`lab run` (one cell) and `lab classify`."""

from __future__ import annotations

import argparse
import codecs
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from lab import cache, classify, results
from lab.cli.common import _load
from lab.cli.options import the_variant
from lab.cli.printer import evidence_lines, print_cell
from lab.errors import UserError
from lab.outcome import CLASSES
from lab.progress import Reporter
from lab.run import cell, orchestrate, testcase
from lab.run.execute import cell_facts, run_cell
from lab.vm import boot

MAX_CONSOLE = 1 << 30  # bytes of a cell directory's console.log that `lab classify` reads


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args)
    arch = cfg.arch(args.arch)
    variant = the_variant(cfg, args.variant)
    tc = testcase.find(cfg.testcases_dir, args.testcase, CLASSES)
    if not tc.runs_on(arch.name):
        raise UserError(
            f"test case {tc.name} does not run on {arch.name} (arches: {', '.join(tc.arches)})"
        )
    the_cell = cell.Cell(arch, variant, tc)
    with Reporter() as reporter:
        kernel = orchestrate.one_kernel(cfg, arch, variant, reporter, args.kernel)
        base = boot.base_image(cfg, arch, reporter.line)
    run_dir = Path(args.results) if args.results else cfg.results_dir / results.new_run_id("run")
    res = run_cell(
        cfg,
        the_cell,
        kernel,
        base,
        run_dir / the_cell.dirname,
        lambda m: print(f"lab: {m}", file=sys.stderr),
    )
    if args.json:
        # As written on disk (keys sorted), so --json shows exactly the cell's files.
        evidence = cache.read_json(res.dir / "evidence.json")
        print(
            json.dumps({**cache.read_json(res.dir / "cell.json"), "evidence": evidence}, indent=2)
        )
    else:
        print_cell(res, cell.reproducer(cfg, the_cell, args.kernel))
    return res.exit_code


PIECE = 1 << 20  # bytes of a console file decoded at a time


def _file_lines(path: Path) -> Callable[[], Iterator[str]]:
    """The text of a console file in pieces, read anew on each call and decoded as a
    whole-file decode would (a character split between two reads is kept whole)."""

    def read() -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        with path.open("rb") as f:
            while chunk := f.read(PIECE):
                yield decoder.decode(chunk)
        yield decoder.decode(b"", final=True)

    return read


def cmd_classify(args: argparse.Namespace) -> int:
    path = Path(args.log)
    facts = None
    if path.is_dir():
        if not os.path.lexists(path / "console.log"):
            raise UserError(f"{path}: neither a console log nor a cell directory (no console.log)")
        facts = cell_facts(path)
        try:  # a cell directory may come from anywhere: nothing outside it is read
            raw = results.read_inside(path, path / "console.log", MAX_CONSOLE, whole=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"{path / 'console.log'}: {exc}") from None
        path = path / "console.log"
        # Bytes, then decode: a console's CR CR LF must not turn into extra lines.
        console: classify.Console = raw.decode(errors="replace")
    elif path.is_file():
        console = _file_lines(path)  # read as it is classified: a log may be huge
    else:
        try:
            console = path.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            raise UserError(f"{path}: no such console log") from None
    try:
        result = classify.classify(console, facts)
    except OSError as exc:  # the file went away or became unreadable while being read
        raise UserError(f"{path}: {exc}") from None
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    print(f"{path}: {result.outcome}: {result.detail}")
    if result.title:
        print(f"  title: {result.title}")
    print(f"  rule: {result.rule}: {result.rule_text}")
    evidence = result.to_json()["evidence"]
    print("\n".join(evidence_lines(evidence, "  ", len(evidence))))
    return 0
