"""`lab report/compare/merge`, `lab image`, `lab config show`, `lab doctor/setup`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lab import build, cache, config, doctor, image, report, results
from lab.build import kconfig
from lab.cli import jsonout
from lab.cli.common import _load
from lab.cli.options import the_variant
from lab.config import known
from lab.errors import LabError, UserError
from lab.progress import Reporter
from lab.report import model, versions
from lab.run import selection
from lab.vm import boot

# --- report / compare / merge --------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    cfg = _load(args)
    run_dir = results.resolve_run(cfg.results_dir, args.run)
    issues = known.lookup(cfg.known_issues)
    report.render(run_dir, issues)
    if args.markdown:
        doc = report.render_observed(report.load(run_dir), issues)
        cache.write_atomic(Path(args.markdown), doc)
    print(report.text_summary(run_dir, issues))
    cells = results.read_cells(run_dir)
    return known.gate(results.exit_code(results.load_run(run_dir), cells), cfg.known_issues, cells)


def cmd_compare(args: argparse.Namespace) -> int:
    cfg = _load(args)
    a = results.resolve_run(cfg.results_dir, args.run_a)
    if args.by:
        if args.run_b:
            raise UserError("--by AXIS A B compares within one run: give one RUN")
        axis, va, vb = args.by
        changes = versions.compare_by(model.load(a), axis, va, vb)
        names = (f"{a.name} {axis}={va}", f"{a.name} {axis}={vb}")
        return _print_changes(args, a, (a,), changes, names)
    if not args.run_b:
        raise UserError("compare needs two runs (RUN_A RUN_B), or one run and --by AXIS A B")
    b = results.resolve_run(cfg.results_dir, args.run_b)
    changes = report.compare(a, b)
    return _print_changes(args, a, (a, b), changes, (a.name, b.name))


def _print_changes(
    args: argparse.Namespace,
    a: Path,
    run_dirs: tuple[Path, ...],
    changes: list[report.Change],
    names: tuple[str, str],
) -> int:
    for run_dir in run_dirs:
        for u in results.scan_cells(run_dir)[1]:
            print(
                f"lab: warning: {u.dir}: unreadable cell ({u.reason}); compared as not run",
                file=sys.stderr,
            )
    if args.json:
        print(json.dumps(jsonout.compare(changes, *names), indent=2))
    else:
        print(report.format_compare(changes, *names))
    return 1 if any(c.kind == "regression" for c in changes) else 0


def cmd_merge(args: argparse.Namespace) -> int:
    cfg = _load(args)
    runs = [results.resolve_run(cfg.results_dir, r) for r in args.runs]
    out = Path(args.output) if args.output else cfg.results_dir / results.new_run_id("merged")
    merged = report.merge(runs, out)
    issues = known.lookup(cfg.known_issues)
    report.render(merged, issues)
    print(report.text_summary(merged, issues))
    cells = results.read_cells(merged)
    return known.gate(results.exit_code(results.load_run(merged), cells), cfg.known_issues, cells)


# --- image ----------------------------------------------------------------------------


def cmd_image(args: argparse.Namespace) -> int:
    cfg = _load(args)
    recipe = boot.image_recipe(cfg)
    for arch in selection.arches(cfg, args.arch):
        img = image.build_base(
            recipe,
            arch.deb_arch,
            cfg.cache_dir,
            refresh=args.refresh,
            log=lambda m: print(f"lab: {m}", file=sys.stderr),
        )
        state = "cached" if img.cache_hit else f"built in {img.build_seconds:.1f}s"
        print(
            f"{arch.name}: {img.path} ({img.compressed_size / 1e6:.2f} MB, "
            f"{img.file_count} files, {state})"
        )
    return 0


# --- config show -------------------------------------------------------------------


def cmd_config_show(args: argparse.Namespace) -> int:
    cfg = _load(args)
    arch = cfg.arch(args.arch)
    variant = the_variant(cfg, args.variant)
    with Reporter() as reporter:
        p = build.plan(cfg, arch, variant, 0, reporter.line)
        result = build.show_config(cfg, p, reporter)
    print(f"# lab config for {p.label} (key {p.key})")
    for frag in p.fragments:
        print(f"# --- rendered {frag.template}")
        print(frag.text.rstrip())
    print(f"# --- final .config vs base ({p.base}): {p.label}")
    for line in kconfig.diff(kconfig.parse_config(result.base), kconfig.parse_config(result.final)):
        print(line)
    return 0


# --- doctor / setup ------------------------------------------------------------------


def _try_load(args: argparse.Namespace) -> config.LabConfig | None:
    try:
        return _load(args)
    except LabError as exc:
        print(f"lab: warning: {exc} (checking generic prerequisites only)", file=sys.stderr)
        return None


def cmd_doctor(args: argparse.Namespace) -> int:
    results = doctor.checks(_try_load(args), tests=args.tests)
    width = max(len(c.name) for c in results)
    for c in results:
        print(f"{'ok ' if c.ok else 'MISSING'} {c.name:<{width}}  {c.detail}")
    missing = doctor.missing_packages(results)
    if missing:
        print(f"\nto install what is missing: sudo {doctor.apt_line(missing)}")
        print("or, as root: lab setup" + (" --tests" if args.tests else ""))
    unfixable = [c for c in results if not c.ok and not c.package]
    for c in unfixable:
        print(f"not a package (fix by hand): {c.name}: {c.detail}")
    if missing or unfixable:
        return 1
    print("\nall prerequisites present")
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    """Install exactly the packages doctor finds missing, then check again."""
    missing = doctor.missing_packages(doctor.checks(_try_load(args), tests=args.tests))
    if missing:
        print(f"installing: {' '.join(missing)}", file=sys.stderr)
        doctor.install(missing)
    still = [c for c in doctor.checks(_try_load(args), tests=args.tests) if not c.ok]
    if still:
        what = "; ".join(
            f"{c.name} ({c.package + ' installed but ' if c.package else ''}{c.detail})"
            for c in still
        )
        raise LabError(f"still missing after setup: {what}")
    print("all prerequisites present")
    return 0
