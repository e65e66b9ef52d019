"""`lab export lava` and `lab import lava`: cells as LAVA jobs, and their logs back."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from lab import cache, report, results
from lab.cli.common import _load
from lab.cli.options import add_arches, add_testcases, add_variants
from lab.cli.printer import print_cell
from lab.errors import UserError
from lab.outcome import CLASSES
from lab.run import matrix, testcase
from lab.run.orchestrate import run_header


def register(sub: Any) -> None:
    """The `export` and `import` sub-commands (sub: the parser's subparsers object)."""
    ex = sub.add_parser("export", help="write cells as jobs for another engine (LAVA)")
    exsub = ex.add_subparsers(dest="export_command", required=True, metavar="ENGINE")
    el = exsub.add_parser(
        "lava", help="one LAVA job per cell, device dictionaries, artefacts, lava-run.sh"
    )
    el.add_argument(
        "run",
        nargs="?",
        default="",
        metavar="RUN",
        help="export the cells RUN planned (default: the selection below)",
    )
    add_variants(el)
    add_arches(el)
    add_testcases(el)
    el.add_argument("--repeat", type=int, default=None, help="each cell N times")
    el.add_argument("--output", "-o", required=True, metavar="DIR", help="the export directory")
    el.add_argument(
        "--base-url",
        default="",
        metavar="URL",
        help="where a LAVA lab fetches DIR over HTTP (default: file:// URLs into DIR)",
    )
    el.add_argument(
        "--accel", choices=("tcg", "kvm"), default="tcg", help="the device dictionaries' -accel"
    )
    el.add_argument("--results", default="", help="results directory (default: lab.toml's)")
    el.set_defaults(func=cmd_export_lava)
    ek = exsub.add_parser("kcidb", help="a run as KCIDB I/O data (schema v5.3) in one JSON file")
    ek.add_argument("run", metavar="RUN", help="a run directory or run id")
    ek.add_argument("--output", "-o", required=True, metavar="FILE.json", help="- for stdout")
    ek.add_argument("--origin", default="lab", help="the KCIDB origin (CI system name; [a-z0-9_]+)")
    ek.set_defaults(func=cmd_export_kcidb)

    im = sub.add_parser("import", help="turn finished jobs of another engine into a lab run")
    imsub = im.add_subparsers(dest="import_command", required=True, metavar="ENGINE")
    il = imsub.add_parser("lava", help="LAVA job logs (lava-run's stderr, or a server's job log)")
    il.add_argument("logs", nargs="+", metavar="JOB_LOG")
    il.add_argument("--run", required=True, help="the run `lab export lava` created")
    il.set_defaults(func=cmd_import_lava)
    register_bundle(sub)


def _cells(args: argparse.Namespace) -> tuple[Any, list[matrix.Planned], dict[str, Any]]:
    cfg = _load(args)
    tcs = testcase.discover(cfg.testcases_dir, CLASSES)
    spec = matrix.parse_spec(cfg.extra.get("matrix"), str(cfg.file))
    if args.run:
        if args.variant or args.arch or args.testcase or args.repeat:
            raise UserError("give either RUN or --variant/--arch/--testcase/--repeat, not both")
        run_dir = results.resolve_run(cfg.results_dir, args.run)
        sel = results.load_run(run_dir).get("selection")
        if not isinstance(sel, dict) or not all(
            k in sel for k in ("variants", "arches", "testcases", "repeat")
        ):
            raise UserError(f"{run_dir / 'run.json'}: no usable 'selection' to export")
        selection = {k: sel[k] for k in ("variants", "arches", "testcases", "repeat", "shard")}
    else:
        selection = {
            "variants": args.variant,
            "arches": args.arch,
            "testcases": args.testcase,
            "repeat": args.repeat or spec.repeat,
            "shard": None,
        }
    cells = matrix.plan(
        cfg,
        tcs,
        spec,
        selection["variants"],
        selection["arches"],
        selection["testcases"],
        selection["repeat"],
    )
    if selection.get("shard"):
        cells = matrix.shard(cells, *matrix.parse_shard(selection["shard"]))
    if not cells:
        raise UserError("the selection holds no cells")
    return cfg, cells, selection


def cmd_export_lava(args: argparse.Namespace) -> int:
    from lab.export import bundle

    if args.base_url and not args.base_url.startswith(("http://", "https://")):
        raise UserError(f"--base-url {args.base_url!r}: use an http:// or https:// URL")
    cfg, cells, selection = _cells(args)
    out = Path(args.output)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: exists and is not empty; choose a new export directory")
    kernels = bundle.kernels_for(cfg, cells)  # before anything is written: never builds
    base = Path(args.results) if args.results else cfg.results_dir
    made_out = not out.exists()
    run_dir = results.new_run(base, "lava", run_header(cfg, cells, selection))
    try:
        done = bundle.export(
            cfg,
            cells,
            kernels,
            out,
            run_dir,
            args.base_url,
            args.accel,
            lambda m: print(f"lab: {m}", file=sys.stderr),
        )
    except BaseException:
        # Half an export is no export: a run that cannot be imported into, jobs missing.
        shutil.rmtree(run_dir, ignore_errors=True)
        if made_out:
            shutil.rmtree(out, ignore_errors=True)
        raise
    print(f"lab: {len(done.jobs)} LAVA jobs in {out}/jobs; run {run_dir}", file=sys.stderr)
    print(f"lab: run them: sudo {done.script}", file=sys.stderr)
    print(f"lab: then: lab import lava {out}/logs/*.log --run {run_dir}", file=sys.stderr)
    print(run_dir)
    return 0


def cmd_import_lava(args: argparse.Namespace) -> int:
    from lab.export import ingest

    cfg = _load(args)
    run_dir = results.resolve_run(cfg.results_dir, args.run)
    done = ingest.import_logs(run_dir, [Path(p) for p in args.logs])
    for res in done:
        print_cell(res, stream=sys.stdout)
    report.render(run_dir)
    print(f"lab: {len(done)} cells imported into {run_dir}", file=sys.stderr)
    return results.exit_code(results.load_run(run_dir), results.read_cells(run_dir))


def register_bundle(sub: Any) -> None:
    b = sub.add_parser(
        "bundle", help="one finished cell as a tarball that reruns it with QEMU alone"
    )
    b.add_argument("cell_dir", metavar="CELL_DIR", help="a finished cell's directory")
    b.add_argument("--output", "-o", required=True, metavar="FILE.tar.gz")
    b.set_defaults(func=cmd_bundle)


def cell_dir_of(name: str, results_dir: Path) -> Path:
    """A cell directory from a path, or RUN_ID/cells/DIR under the results directory
    (what reports print)."""
    for candidate in (Path(name), results_dir / name):
        if (candidate / "cell.json").is_file():
            return candidate
    raise UserError(f"{name}: not a cell directory (no cell.json here or under {results_dir})")


def cmd_bundle(args: argparse.Namespace) -> int:
    from lab.export import repro

    cfg = _load(args)
    cell_dir = cell_dir_of(args.cell_dir, cfg.results_dir)
    members = repro.assemble(cfg, cell_dir, lambda m: print(f"lab: {m}", file=sys.stderr))
    out = repro.write_tar(members, cell_dir.resolve().name, Path(args.output))
    print(
        f"lab: bundle of {cell_dir} in {out}; run: tar xzf {out} && "
        f"{cell_dir.resolve().name}/run.sh",
        file=sys.stderr,
    )
    print(out)
    return 0


def cmd_export_kcidb(args: argparse.Namespace) -> int:
    from lab.export import kcidb

    cfg = _load(args)
    run_dir = results.resolve_run(cfg.results_dir, args.run)
    run = results.load_run(run_dir)
    cells, bad = results.scan_cells(run_dir)
    for u in bad:
        print(f"lab: {u.dir}: skipped: {u.reason}", file=sys.stderr)
    try:
        data = kcidb.convert(run, cells, results.planned_ids(run), args.origin)
    except ValueError as exc:
        raise UserError(f"--origin: {exc}") from None
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        cache.write_atomic(Path(args.output), text)
        print(
            f"lab: {len(data['tests'])} tests, {len(data['builds'])} builds, "
            f"{len(data['checkouts'])} checkouts in {args.output}",
            file=sys.stderr,
        )
    return 0
