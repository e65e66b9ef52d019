"""Reproducer bundles: one finished cell as a tarball that reruns it with QEMU alone.

    <cell dir>/
      run.sh              the cell's exact QEMU command line; writes out/console.log,
                          out/result.jsonl and out/cell.json (the run facts)
      kernel/<image>      the kernel image the cell booted (sha256 checked)
      initrd.cpio.gz      the base image + the cell's overlay (agent, job, test case)
      expected.json       what the cell expected and observed, and how to classify
      cell.json.orig      the cell's cell.json as the lab wrote it
      README

`lab classify out` on the rerun gives the outcome class, as `lab classify CELL_DIR`
does for the cell (the run facts in out/cell.json are the ones classify reads).

Nothing is guessed: the bundle is assembled from the lab.toml the cell ran with
(re-derived job and overlay), and refused when the kernel, the base image, the test
case or the QEMU command line differ from what the cell recorded.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import secrets
import shlex
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import build, image, results
from lab.config import LabConfig
from lab.errors import UserError
from lab.outcome import CLASSES
from lab.run import needs, testcase
from lab.run.cell import Cell
from lab.run.job import Inputs, prepare_cell
from lab.vm import boot
from lab.vm.qemu import Launch

FORMAT = 1  # expected.json's format
MAX_BUNDLE = 1 << 30  # bytes of all members together (a kernel is ~10 MB, an initrd ~30 MB)
MAX_ARGV = 64 << 10  # bytes of a cell's qemu.argv read back
KEY = re.compile(r"[0-9a-f]{8,64}")
OUT = "out"  # run.sh's output directory, inside the unpacked bundle
MARGIN = 30  # seconds run.sh waits beyond the lab's two deadlines

Log = Callable[[str], None]


@dataclass(frozen=True)
class Member:
    """One file of the bundle: a relative name under the top directory."""

    name: str
    data: bytes
    mode: int = 0o644


def _paths_of(argv: Sequence[str]) -> dict[str, str]:
    """The per-run paths in a QEMU command line: kernel, initrd, result file."""
    out: dict[str, str] = {}
    for flag, name in (("-kernel", "kernel"), ("-initrd", "initrd")):
        if flag in argv and argv.index(flag) + 1 < len(argv):
            out[name] = argv[argv.index(flag) + 1]
    for a in argv:
        if a.startswith("file,id=result,path="):
            out["result"] = a.split("path=", 1)[1]
    return out


def same_command(recorded: Sequence[str], ours: Sequence[str]) -> str:
    """ "" when `recorded` (a cell's qemu.argv) is `ours` but for the per-run paths;
    otherwise the first difference, in one line."""

    def normal(argv: Sequence[str]) -> list[str]:
        paths = _paths_of(argv)
        swap = {v: f"<{k}>" for k, v in paths.items()}
        res = swap.get(paths.get("result", ""), "")
        return [
            swap.get(a, f"file,id=result,path={res}" if a.startswith("file,id=result,") else a)
            for a in argv
        ]

    a, b = normal(recorded), normal(ours)
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"argument {i}: the cell ran with {x!r}, lab.toml now gives {y!r}"
    if len(a) != len(b):
        return f"the cell ran with {len(a)} arguments, lab.toml now gives {len(b)}"
    return ""


def run_script(
    cell_id: str,
    argv: Sequence[str],
    limit: int,
    banner: Mapping[str, str] | None,
    expected: Sequence[str],
) -> str:
    """run.sh: POSIX sh and QEMU (timeout(1) if present bounds it; the lab's deadlines
    are per phase, this one is their sum). The facts it writes are what `lab classify`
    reads from a cell directory: QEMU's exit status, or which deadline expired."""
    facts_banner = json.dumps(dict(banner) if banner else None, sort_keys=True)
    want = "|".join(expected) or "(none declared)"
    return "\n".join(
        [
            "#!/bin/sh",
            f"# Reruns lab cell {cell_id} with QEMU alone (see README).",
            "# Usage: ./run.sh    -> out/console.log, out/result.jsonl, out/cell.json",
            'cd "$(dirname "$0")" || exit 2',
            f"rm -rf {OUT} && mkdir {OUT} || exit 2",
            f"limit={limit}",
            "t='timeout -k 10'",
            "command -v timeout >/dev/null 2>&1 || { t=''; limit=''; }",
            f'echo "run.sh: booting {cell_id} (console in {OUT}/console.log)" >&2',
            # $t and $limit unquoted on purpose: empty when timeout(1) is missing.
            f"$t $limit {shlex.join(argv)} \\",
            f"    </dev/null >{OUT}/console.log 2>{OUT}/qemu.stderr",
            "rc=$?",
            "exit_json=$rc; deadline=null",
            'if [ -n "$t" ] && { [ "$rc" = 124 ] || [ "$rc" = 137 ]; }; then',
            "    exit_json=null",
            f'    if grep -q \'"type": *"ready"\' {OUT}/result.jsonl 2>/dev/null; then',
            "        deadline='\"test\"'",
            "    else",
            "        deadline='\"boot\"'",
            "    fi",
            "fi",
            f"banner={shlex.quote(facts_banner)}",
            'printf \'{"qemu_exit": %s, "deadline": %s, "banner": %s}\\n\' \\',
            f'    "$exit_json" "$deadline" "$banner" >{OUT}/cell.json',
            f'echo "run.sh: QEMU exit $rc; classify: lab classify {OUT}  (expected: {want})" >&2',
            "exit $rc",
            "",
        ]
    )


def readme(record: Mapping[str, Any], argv: Sequence[str], image_name: str) -> str:
    want = "|".join(str(e) for e in record.get("expected") or []) or "(none declared)"
    return "\n".join(
        [
            f"Reproducer for lab cell {record.get('id')}",
            "",
            f"  expected outcome: {want}   (rule: {record.get('expected_rule')})",
            f"  observed by the lab: {record.get('observed')} ({record.get('verdict')})",
            f"  kernel: kernel/{image_name} sha256 "
            f"{(record.get('kernel') or {}).get('image_sha256')}",
            "",
            "Run it (needs only qemu-system-* of the arch; POSIX sh; timeout(1) if present):",
            "",
            "  ./run.sh",
            "",
            "It writes out/console.log (the serial console), out/result.jsonl (the test",
            "agent's records, from a virtio-serial port) and out/cell.json (QEMU's exit",
            "status, or which deadline expired). Classify the rerun with the lab:",
            "",
            f"  lab classify {OUT}",
            "",
            "and compare its outcome with expected.json. The QEMU command line:",
            "",
            f"  {shlex.join(argv)}",
            "",
            "initrd.cpio.gz is the lab's base image (busybox, Python) followed by the cell's",
            "overlay (lab/agent.py, lab/job.json, lab/testcases/, lab/lib/labguest.py); the",
            "kernel unpacks both gzip members in order.",
            "",
        ]
    )


def _read_argv(cell_dir: Path) -> list[str] | None:
    path = cell_dir / "qemu.argv"
    if not os.path.lexists(path):
        return None
    try:
        raw = results.read_inside(cell_dir, path, MAX_ARGV)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: {exc}") from None
    return raw.decode(errors="replace").splitlines()


def _cell_of(cfg: LabConfig, rec: results.CellResult) -> Cell:
    d = rec.data
    try:
        arch = cfg.arch(str(d.get("arch")))
        variant = cfg.variant(str(d.get("variant")))
    except UserError as exc:
        raise UserError(f"{rec.dir / 'cell.json'}: {exc}") from None
    tc = testcase.find(cfg.testcases_dir, str(d.get("testcase")), CLASSES)
    return Cell(arch, variant, tc)


def _kernel(cfg: LabConfig, rec: results.CellResult) -> build.Kernel:
    k = rec.data.get("kernel")
    key = k.get("key") if isinstance(k, dict) else None
    if not isinstance(key, str) or not KEY.fullmatch(key):
        raise UserError(f"{rec.dir / 'cell.json'}: kernel.key {key!r} is not a kernel key")
    d = build.kernel_dir(cfg, key)
    if not (d / "meta.json").is_file():
        raise UserError(
            f"kernel {key} of {rec.id} is not in the cache {cfg.cache_dir / 'kernels'} "
            f"(cleaned?); rebuild it with `lab build -a {rec.data.get('arch')} "
            f"-V {rec.data.get('variant')}`"
        )
    kernel = build.load_kernel(d)
    want = k.get("image_sha256") if isinstance(k, dict) else None
    if want and hashlib.sha256(kernel.image.read_bytes()).hexdigest() != want:
        raise UserError(f"{kernel.image}: sha256 differs from the cell's kernel.image_sha256")
    return kernel


def assemble(cfg: LabConfig, cell_dir: Path, log: Log = lambda _m: None) -> list[Member]:
    """The bundle's members for finished cell `cell_dir` (never builds a kernel)."""
    rec = results.CellResult.from_dir(cell_dir)
    cell = _cell_of(cfg, rec)
    kernel = _kernel(cfg, rec)
    base = boot.base_image(cfg, cell.arch, log)
    img = rec.data.get("image")
    want_img = img.get("key") if isinstance(img, dict) else None
    if want_img and want_img != base.key:
        raise UserError(
            f"{rec.id} ran on base image {want_img}; lab.toml now gives {base.key} "
            "(the image recipe changed since the run)"
        )
    # The kselftest binaries the test case needs (cached: built the same way as for the run).
    built, unmet = needs.resolve(cfg, [cell], log)
    problem = needs.failure(cell, unmet)
    if problem is not None:
        raise problem
    inputs = Inputs(kernel, base, needs.binaries(cell, built))
    job, files = prepare_cell(cfg, cell, inputs, rec.run_cell_id, int(rec.data.get("repeat") or 1))
    tc_file = files[f"lab/testcases/{cell.testcase.name}.py"][0]
    want_tc = rec.provenance.get("testcase_sha256")
    if want_tc and hashlib.sha256(tc_file).hexdigest() != want_tc:
        raise UserError(
            f"{cell.testcase.path}: changed since {rec.id} ran (sha256 differs from the "
            "cell's testcase_sha256); check out the commit the run names"
        )
    overlay = image.build_overlay(boot.overlay_files(job.agent_job, secrets.token_hex(8), files))
    initrd = base.path.read_bytes() + overlay
    accel = str(rec.data.get("accel") or "tcg")
    launch = Launch(
        arch=cell.arch,
        accel=accel if accel in ("tcg", "kvm") else "tcg",
        kernel=Path("kernel") / kernel.image.name,
        initrd=Path("initrd.cpio.gz"),
        cmdline=job.cmdline,
        result_file=Path(OUT) / "result.jsonl",
        memory_mib=job.memory_mib,
        smp=job.smp,
    )
    argv = launch.argv()  # relative paths: run.sh runs in the bundle's directory
    recorded = _read_argv(cell_dir)
    if recorded is not None:
        diff = same_command(recorded, argv)
        if diff:
            raise UserError(f"{cell_dir / 'qemu.argv'}: {diff}")
    limit = int(cfg.boot.ready_timeout + job.test_timeout) + MARGIN
    expected = [str(e) for e in rec.expected]
    facts = {
        "format": FORMAT,
        "id": rec.id,
        "run_cell_id": rec.run_cell_id,
        "expected": expected,
        "expected_rule": rec.data.get("expected_rule"),
        "observed": rec.observed,
        "verdict": rec.verdict,
        "detail": rec.detail,
        "classify": f"lab classify {OUT}",
        "reproducer": rec.data.get("reproducer"),
        "kernel": rec.data.get("kernel"),
        "testcase_sha256": hashlib.sha256(tc_file).hexdigest(),
        "provenance": rec.provenance,
    }
    return [
        Member("run.sh", run_script(rec.id, argv, limit, job.banner, expected).encode(), 0o755),
        Member(f"kernel/{kernel.image.name}", kernel.image.read_bytes()),
        Member("initrd.cpio.gz", initrd),
        Member("expected.json", (json.dumps(facts, indent=2) + "\n").encode()),
        Member("cell.json.orig", (json.dumps(rec.to_json(), indent=2) + "\n").encode()),
        Member("README", readme(rec.data, argv, kernel.image.name).encode()),
    ]


def _safe_name(name: str) -> bool:
    parts = name.split("/")
    return bool(name) and not name.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def write_tar(members: Sequence[Member], top: str, dest: Path, mtime: int = 0) -> Path:
    """members as dest (.tar.gz) under directory `top`: regular files only, names
    checked to stay under `top`, MAX_BUNDLE bytes in all; written to a temporary file
    beside dest and renamed, so dest is whole or absent."""
    if not _safe_name(top) or "/" in top:
        raise UserError(f"{top!r}: not a plain directory name for the bundle")
    total = 0
    for m in members:
        if not _safe_name(m.name):
            raise UserError(f"bundle member {m.name!r} would leave {top}/")
        total += len(m.data)
    if total > MAX_BUNDLE:
        raise UserError(f"the bundle would hold {total} bytes, more than {MAX_BUNDLE}")
    if dest.is_dir():
        raise UserError(f"{dest}: is a directory; give the bundle's file name (-o FILE.tar.gz)")
    if not dest.parent.is_dir():
        raise UserError(f"{dest.parent}: no such directory")
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=mtime) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            dirs = sorted(
                {
                    "/".join(m.name.split("/")[:i])
                    for m in members
                    for i in range(1, m.name.count("/") + 1)
                }
            )
            for d in ["", *dirs]:
                info = tarfile.TarInfo(f"{top}/{d}".rstrip("/"))
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
                tar.addfile(info)
            for m in members:
                info = tarfile.TarInfo(f"{top}/{m.name}")
                info.size, info.mode, info.mtime = len(m.data), m.mode, mtime
                tar.addfile(info, io.BytesIO(m.data))
        Path(tmp).chmod(0o644)
        Path(tmp).replace(dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest
