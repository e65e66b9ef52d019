"""Options several commands share, each defined once (kunit's add_*_opts)."""

from __future__ import annotations

import argparse

from lab import config


def add_arches(p: argparse.ArgumentParser, default: str = "all") -> None:
    """--arch, repeatable: the selection of build, matrix, reproduce, image."""
    p.add_argument(
        "--arch",
        "-a",
        action="append",
        default=[],
        help=f"arch name or glob, repeatable or comma-separated (default: {default})",
    )


def add_arch(p: argparse.ArgumentParser) -> None:
    """--arch, exactly one: what boot, run and config show act on."""
    p.add_argument("--arch", "-a", required=True, help="the arch to use")


def add_variants(p: argparse.ArgumentParser, default: str = "all") -> None:
    p.add_argument(
        "--variant",
        "-V",
        action="append",
        default=[],
        help=f"variant name or glob, repeatable (default: {default})",
    )


def add_variant(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variant", "-V", default="", help="default: the first variant")


def the_variant(cfg: config.LabConfig, name: str) -> config.Variant:
    """add_variant's choice: the named variant, or lab.toml's first."""
    return cfg.variant(name) if name else cfg.variants[0]


def add_testcases(p: argparse.ArgumentParser) -> None:
    p.add_argument("--testcase", "-t", action="append", default=[], help="name or glob, repeatable")


def add_jobs(p: argparse.ArgumentParser, what: str = "parallel cells") -> None:
    p.add_argument("--jobs", "-j", type=int, default=0, help=f"{what} (default: CPU count)")


def add_json(p: argparse.ArgumentParser, what: str = "the result") -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout")


def add_hosts(p: argparse.ArgumentParser, default: str = "none") -> None:
    p.add_argument(
        "--hosts",
        default="",
        metavar="NAME,...|all",
        help=f"SSH lab hosts ([[hosts]] in lab.toml) to use (default: {default})",
    )
