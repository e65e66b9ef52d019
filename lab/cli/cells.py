"""`lab run` (one cell) and `lab classify`; the one printer for a cell."""

from __future__ import annotations

import argparse
import codecs
import datetime
import json
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from lab import cache, classify, config, results
from lab.cli.common import _load
from lab.cli.kernels import MAX_CONSOLE, _kernel_for
from lab.errors import LabError, UserError
from lab.outcome import CLASSES
from lab.progress import Reporter
from lab.run import cell, runner, testcase
from lab.vm import boot, channel

# --- run / classify --------------------------------------------------------------


def new_run_dir(cfg: config.LabConfig, label: str = "") -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run = cfg.results_dir / f"{stamp}{'-' + label if label else ''}-{secrets.token_hex(2)}"
    run.mkdir(parents=True)
    return run


def print_cell(res: results.CellResult, stream: TextIO = sys.stdout) -> None:
    expected = "|".join(res.expected) or "(no expectation declared)"
    word = {"expected": "as expected", "unexpected": "UNEXPECTED", "infra": "INFRASTRUCTURE ERROR"}[
        res.verdict
    ]
    print(f"{res.id}: observed {res.observed}, expected {expected} -> {word}", file=stream)
    print(f"  {res.detail}", file=stream)
    print(f"  rule: {res.rule}: {res.rule_text}", file=stream)
    if res.lines:
        print("  evidence:", file=stream)
        for ev in res.lines[:25]:
            where = f"L{ev.get('line_no')}" if ev.get("line_no") else "agent"
            print(f"    {where:>6} {ev.get('text', '')}", file=stream)
        if len(res.lines) > 25:
            print(f"    ... {len(res.lines) - 25} more in evidence.json", file=stream)
    print(f"  artefacts: {res.dir}", file=stream)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args)
    arch = cfg.arch(args.arch)
    variant = cfg.variant(args.variant) if args.variant else cfg.variants[0]
    tc = testcase.find(cfg.testcases_dir, args.testcase, CLASSES)
    if not tc.runs_on(arch.name):
        raise UserError(
            f"test case {tc.name} does not run on {arch.name} (arches: {', '.join(tc.arches)})"
        )
    the_cell = cell.Cell(arch, variant, tc)
    with Reporter() as reporter:
        kernel = _kernel_for(cfg, arch, variant, reporter, args.kernel)
        base = boot.base_image(cfg, arch, reporter.line)
    run_dir = Path(args.results) if args.results else new_run_dir(cfg, "run")
    res = runner.run_cell(
        cfg,
        the_cell,
        kernel,
        base,
        run_dir / the_cell.dirname,
        lambda m: print(f"lab: {m}", file=sys.stderr),
    )
    if args.json:
        print(
            json.dumps(
                {
                    **cache.read_json(res.dir / "cell.json"),
                    "evidence": cache.read_json(res.dir / "evidence.json"),
                },
                indent=2,
            )
        )
    else:
        print_cell(res)
        print(f"  reproducer: {cell.reproducer(cfg, the_cell)}")
    return res.exit_code


def _cell_facts(cell_dir: Path) -> classify.RunFacts:
    """What the lab knew about a recorded cell: its records and the run facts the runner
    wrote into cell.json (a cell directory may come from anywhere: bounded, confined)."""
    reader = channel.Reader()
    try:
        if os.path.lexists(cell_dir / "result.jsonl"):
            reader.feed(
                results.read_inside(
                    cell_dir, cell_dir / "result.jsonl", channel.MAX_TOTAL, whole=False
                )
            )
        info = (
            results.loads_bounded(
                results.read_inside(cell_dir, cell_dir / "cell.json", results.MAX_CELL_JSON),
                results.MAX_CELL_JSON,
            )
            if os.path.lexists(cell_dir / "cell.json")
            else {}
        )
    except (OSError, ValueError) as exc:
        raise UserError(f"{cell_dir}: unreadable cell: {exc}") from None
    if not isinstance(info, dict):
        raise UserError(f"{cell_dir}/cell.json: not a JSON object")
    records = list(reader.records)
    # A cell recorded before cell.json kept `ready`: inferred from the agent's records.
    ready = info.get("ready", any(r.get("type") == "ready" for r in records))
    try:
        return classify.RunFacts.from_mapping(
            {
                "ready": ready,
                "deadline": info.get("deadline"),
                "qemu_exit": info.get("qemu_exit"),
                "records": records,
                "problems": list(reader.problems),
                "expected_banner": info.get("banner"),
            }
        )
    except LabError as exc:
        raise UserError(f"{cell_dir / 'cell.json'}: {exc}") from None


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
        facts = _cell_facts(path)
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
    for ev in result.evidence:
        where = f"L{ev.line_no}" if ev.line_no else "agent"
        print(f"  {where:<7} {ev.text}")
    return 0
