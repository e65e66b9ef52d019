"""The argument parser: one sub-command per stage entry."""

from __future__ import annotations

import argparse
import os

from lab import __version__
from lab.cli import export
from lab.cli.cells import cmd_classify, cmd_run
from lab.cli.hosts import cmd_hosts_check
from lab.cli.kernels import cmd_boot, cmd_build
from lab.cli.matrix import cmd_matrix
from lab.cli.options import (
    add_arch,
    add_arches,
    add_hosts,
    add_jobs,
    add_json,
    add_testcases,
    add_variant,
    add_variants,
)
from lab.cli.reproduce import cmd_reproduce
from lab.cli.series import add_parser as add_series_parser
from lab.cli.tools import (
    cmd_compare,
    cmd_config_show,
    cmd_doctor,
    cmd_image,
    cmd_merge,
    cmd_report,
    cmd_setup,
)

KERNEL_HELP = (
    "boot this kernel, built elsewhere, instead of building: an image file (its .config "
    "beside it), a make O= directory or a tuxmake output directory"
)

# --- parser --------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lab", description="A QEMU test lab for Linux kernel patch variants."
    )
    parser.add_argument("--version", action="version", version=f"lab {__version__}")
    parser.add_argument(
        "--config",
        "-c",
        default=os.environ.get("LAB_CONFIG", "lab.toml"),
        help="the lab.toml to use (default: $LAB_CONFIG or ./lab.toml)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("build", help="build kernels (cached; only what changed is rebuilt)")
    add_arches(b)
    add_variants(b, default="the first variant; --all: every one")
    b.add_argument("--all", action="store_true", help="every variant on every selected arch")
    add_jobs(b, "make -j")
    b.add_argument("--force", action="store_true", help="rebuild even when cached")
    b.add_argument(
        "--refresh-source",
        action="store_true",
        help="re-resolve a git source's branch or tag to its current commit",
    )
    add_json(b, "the results")
    b.set_defaults(func=cmd_build)

    bt = sub.add_parser("boot", help="boot a kernel: interactive console, or --exec CMD")
    add_arch(bt)
    add_variant(bt)
    bt.add_argument(
        "--exec",
        "-e",
        metavar="CMD",
        default=None,
        help="run CMD in the guest, print its output, exit with its status",
    )
    bt.add_argument(
        "--timeout", type=float, default=600.0, help="seconds CMD may run (default 600)"
    )
    bt.add_argument("--append", default="", help="extra kernel command line")
    bt.add_argument("--kernel", default="", metavar="PATH", help=KERNEL_HELP)
    bt.add_argument("--memory", type=int, default=None, help="guest memory in MiB")
    add_json(bt, "timings, accelerator and QEMU argv")
    bt.set_defaults(func=cmd_boot)

    mx = sub.add_parser("matrix", help="run the variant x arch x test case matrix")
    add_variants(mx)
    add_arches(mx)
    add_testcases(mx)
    add_jobs(mx)
    mx.add_argument("--repeat", type=int, default=None, help="run each cell N times")
    mx.add_argument("--shard", default="", help="K/N: run the K-th of N deterministic shards")
    mx.add_argument("--resume", default="", metavar="RUN", help="run what RUN is missing")
    mx.add_argument(
        "--force-config",
        action="store_true",
        help="with --resume: go on although lab.toml changed since RUN started",
    )
    mx.add_argument("--results", default="", help="results directory (default: lab.toml's)")
    mx.add_argument(
        "--list",
        action="store_true",
        help="print the planned cells and their expectations; run nothing",
    )
    add_hosts(mx, default="none: local slots only")
    mx.add_argument("--json", action="store_true", help="with --list: one JSON document")
    mx.add_argument("--kernel", default="", metavar="PATH", help=KERNEL_HELP + " (one arch)")
    mx.set_defaults(func=cmd_matrix)

    hs = sub.add_parser("hosts", help="SSH lab hosts ([[hosts]] in lab.toml)")
    hsub = hs.add_subparsers(dest="hosts_command", required=True, metavar="SUBCOMMAND")
    hc = hsub.add_parser(
        "check", help="per host: reachable, python, lab bundle, QEMU, accelerator, disk"
    )
    add_hosts(hc, default="all")
    hc.add_argument("--json", action="store_true", help="the checks as one JSON document")
    hc.add_argument(
        "--no-upload",
        action="store_true",
        help="only report whether the lab bundle is there (default: upload it if missing)",
    )
    hc.set_defaults(func=cmd_hosts_check)

    rp = sub.add_parser("reproduce", help="replay failure modes claimed in review")
    rp.add_argument("id", nargs="*", help="failure mode ids, or 'all' (none: list them)")
    add_arches(rp, default="the arches each failure mode names")
    add_jobs(rp)
    rp.add_argument("--list", action="store_true", help="list the failure modes")
    rp.add_argument(
        "--json", action="store_true", help="the answers as one JSON document (text to stderr)"
    )
    rp.add_argument(
        "--markdown",
        metavar="RUN",
        help="print the ledger of a finished reproduce run as Markdown (docs/ledger.md)",
    )
    rp.set_defaults(func=cmd_reproduce)

    rr = sub.add_parser("report", help="re-render a run's reports")
    rr.add_argument("run", help="run directory or run id")
    rr.add_argument(
        "--markdown",
        metavar="FILE",
        default="",
        help="also write what the run observed as a Markdown document (docs/observed/)",
    )
    rr.set_defaults(func=cmd_report)
    cp = sub.add_parser(
        "compare",
        help="cells whose outcome changed between two runs, or between two values of an "
        "axis in one run (--by)",
    )
    cp.add_argument("run_a")
    cp.add_argument("run_b", nargs="?", default="", help="omit with --by")
    cp.add_argument(
        "--by",
        nargs=3,
        metavar=("AXIS", "A", "B"),
        default=None,
        help="compare RUN_A's cells with AXIS=A against those with AXIS=B (e.g. a series "
        "version axis: --by version v15 v16), matched by arch, test case and other params",
    )
    cp.add_argument("--json", action="store_true", help="the changes as one JSON document")
    cp.set_defaults(func=cmd_compare)
    mg = sub.add_parser("merge", help="merge shard runs into one run and report")
    mg.add_argument("runs", nargs="+")
    mg.add_argument("--output", "-o", default="", help="the merged run directory")
    mg.set_defaults(func=cmd_merge)

    r = sub.add_parser("run", help="run one test case on one (arch, variant): one cell")
    r.add_argument("testcase")
    add_arch(r)
    add_variant(r)
    r.add_argument(
        "--results",
        default="",
        help="the run directory to put the cell in (default: a new one under results_dir)",
    )
    add_json(r, "cell.json and evidence.json")
    r.add_argument("--kernel", default="", metavar="PATH", help=KERNEL_HELP)
    r.set_defaults(func=cmd_run)

    im = sub.add_parser("image", help="build (or show) the guest base image per arch")
    add_arches(im)
    im.add_argument(
        "--refresh", action="store_true", help="re-resolve Debian package versions and rebuild"
    )
    im.set_defaults(func=cmd_image)

    cl = sub.add_parser("classify", help="classify a saved serial console log offline")
    cl.add_argument("log", help="a console log, or a cell directory (then its records count)")
    add_json(cl, "the classification")
    cl.set_defaults(func=cmd_classify)

    c = sub.add_parser("config", help="kernel configuration commands")
    csub = c.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    cs = csub.add_parser("show", help="rendered fragments and the final .config diff vs base")
    add_arch(cs)
    add_variant(cs)
    cs.set_defaults(func=cmd_config_show)

    add_series_parser(sub)
    d = sub.add_parser("doctor", help="check host prerequisites")
    d.add_argument("--tests", action="store_true", help="also what the lab's own tests need")
    d.set_defaults(func=cmd_doctor)
    s = sub.add_parser("setup", help="install missing host prerequisites with apt-get (root)")
    s.add_argument("--tests", action="store_true", help="also what the lab's own tests need")
    s.set_defaults(func=cmd_setup)
    export.register(sub)
    return parser
