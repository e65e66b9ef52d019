"""Writing a LAVA export: jobs, device dictionaries, artefacts, a run to import into.
The side effects of lab.export's first half (lab.export.ingest is the way back).

An export directory:

    dispatcher.yaml                      for lava-run (a server has its own)
    devices/qemu-<arch>.yaml             one device dictionary per arch
    jobs/<cell dir>.yaml                 one job per cell
    artefacts/kernels/<key>/<image>      each kernel once
    artefacts/initrd/<cell dir>-<boot id>.cpio.gz
                                         the cell's initramfs: base image + overlay
    lava-run.sh                          runs every job with lava-run, logs in logs/

and a new run under the results directory whose run.json has the planned cells and, under
`lava`, what the importer checks a log against (each cell's boot id, job name and the
cell.json fields known before the run). The boot id is in the initramfs's file name, so
it is in every LAVA log of the job (download and QEMU command lines) even when the kernel
never reaches the guest's ready marker.
"""

from __future__ import annotations

import hashlib
import secrets
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import __version__, build, cache, results
from lab.build import Kernel
from lab.config import ArchSpec, LabConfig
from lab.errors import UserError
from lab.export import lava
from lab.image import BaseImage, cpio
from lab.run import matrix, needs
from lab.run.job import Inputs, prepare_cell
from lab.vm import boot

Log = Callable[[str], None]


@dataclass(frozen=True)
class Exported:
    out: Path
    run_dir: Path
    jobs: tuple[Path, ...]
    script: Path


def _url(out: Path, base_url: str, rel: str) -> str:
    if base_url:
        return f"{base_url.rstrip('/')}/{rel}"
    return (out.resolve() / rel).as_uri()


def kernels_for(cfg: LabConfig, cells: Sequence[matrix.Planned]) -> dict[str, Kernel]:
    """The cached kernel of every (arch, variant); exporting never builds one."""
    out: dict[str, Kernel] = {}
    for arch_name, variant_name in matrix.kernels(cells):
        p = build.plan(cfg, cfg.arch(arch_name), cfg.variant(variant_name))
        k = build.lookup(cfg, p)
        if k is None:
            raise UserError(
                f"{arch_name}/{variant_name}: kernel {p.key} is not built; "
                f"run `lab build -a {arch_name} -V {variant_name}` first"
            )
        out[f"{arch_name}/{variant_name}"] = k
    return out


def base_member(base: bytes) -> bytes:
    """The base image's entries as a gzip member WITHOUT the archive's trailer: the first
    half of every cell's initramfs of the arch, compressed once (gzip is most of the cost
    of an export)."""
    try:
        entries = cpio.flatten(cpio.read_newc(cpio.gunzip_all(base)))
    except cpio.CpioError as exc:
        raise UserError(f"base image: {exc}") from None
    body = cpio.write_newc(entries.values())
    trailer = body.rindex(cpio.MAGIC)  # write_newc ends with the trailer member
    return cpio.gzip_bytes(body[:trailer])


def cell_initrd(base: bytes, overlay_files: Mapping[str, tuple[bytes, int]]) -> bytes:
    """Base entries and the cell's overlay as ONE newc archive (one trailer, in two gzip
    members): LAVA unpacks a ramdisk it modifies with `cpio --extract`, which stops at the
    first trailer. A later entry of the same name wins, as it does for the kernel."""
    try:
        overlay = cpio.write_newc(cpio.tree_entries(overlay_files))
    except cpio.CpioError as exc:
        raise UserError(f"overlay: {exc}") from None
    return base + cpio.gzip_bytes(overlay)


def _testcase_digest(files: Mapping[str, tuple[bytes, int]], name: str) -> str:
    data = files.get(f"lab/testcases/{name}.py")
    return hashlib.sha256(data[0]).hexdigest() if data else ""


def export(
    cfg: LabConfig,
    cells: Sequence[matrix.Planned],
    kernels: Mapping[str, Kernel],
    out: Path,
    run_dir: Path,
    base_url: str = "",
    accel: str = "tcg",
    log: Log = lambda _m: None,
) -> Exported:
    """Write the export for `cells` into `out` and the LAVA block into run_dir's run.json.

    `kernels`: kernels_for(cfg, cells), looked up before the caller made run_dir."""
    images: dict[str, BaseImage] = {}
    base_bytes: dict[str, bytes] = {}
    arches: dict[str, ArchSpec] = {}
    for p in cells:
        arches.setdefault(p.cell.arch.name, p.cell.arch)
    for name, arch in arches.items():
        images[name] = boot.base_image(cfg, arch, log)
        base_bytes[name] = base_member(images[name].path.read_bytes())
    for sub in ("devices", "jobs", "artefacts/kernels", "artefacts/initrd", "logs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    (out / "dispatcher.yaml").write_text(lava.dump(lava.render_dispatcher()))
    for arch in arches.values():
        (out / "devices" / f"{lava.device_name(arch)}.yaml").write_text(
            lava.dump(lava.render_device(arch, accel))
        )
    kernel_rel: dict[str, str] = {}
    for label, k in kernels.items():
        rel = f"artefacts/kernels/{k.key}/{k.image.name}"
        _write(out / rel, k.image.read_bytes())
        kernel_rel[label] = rel
    # Test-case needs (kselftest binaries) are built before any cell is prepared, as a
    # matrix run builds them; a need that cannot be built stops the export.
    built, unmet = needs.resolve(cfg, [p.cell for p in cells], log)
    run_id = run_dir.name
    entries: dict[str, Any] = {}
    jobs: list[Path] = []
    for p in cells:
        kernel = kernels[p.kernel]
        base = images[p.cell.arch.name]
        problem = needs.failure(p.cell, unmet)
        if problem is not None:
            raise problem
        inputs = Inputs(kernel, base, needs.binaries(p.cell, built))
        job, files = prepare_cell(cfg, p.cell, inputs, p.id, p.repeat)
        boot_id = secrets.token_hex(8)
        agent_job = {**job.agent_job, "channel": "console"}
        overlay = boot.overlay_files(agent_job, boot_id, files)
        initrd = cell_initrd(base_bytes[p.cell.arch.name], overlay)
        initrd_rel = f"artefacts/initrd/{p.dirname}-{boot_id}.cpio.gz"
        _write(out / initrd_rel, initrd)
        metadata = {
            "lab.version": __version__,
            "lab.config_sha256": cache.file_digest(cfg.file),
            "lab.arch": p.cell.arch.name,
            "lab.variant": p.cell.variant.name,
            "lab.testcase": p.cell.testcase.name,
            "lab.testcase_sha256": _testcase_digest(files, p.cell.testcase.name),
            "lab.expected": "|".join(job.record["expected"]) or "none",
            "lab.kernel_key": kernel.key,
            "lab.kernel_sha256": str(kernel.meta.get("image_sha256") or ""),
            "lab.image_key": base.key,
            "lab.initrd_sha256": hashlib.sha256(initrd).hexdigest(),
            "lab.reproducer": str(job.record["reproducer"]),
        }
        spec = lava.JobInput(
            run_id=run_id,
            cell_id=p.id,
            arch=p.cell.arch,
            kernel_url=_url(out, base_url, kernel_rel[p.kernel]),
            ramdisk_url=_url(out, base_url, initrd_rel),
            cmdline=job.cmdline,
            memory_mib=job.memory_mib,
            smp=job.smp,
            boot_id=boot_id,
            ready_timeout=cfg.boot.ready_timeout,
            test_timeout=job.test_timeout,
            metadata=metadata,
        )
        path = out / "jobs" / f"{p.dirname}.yaml"
        path.write_text(lava.dump(lava.render_job(spec)))
        jobs.append(path)
        entries[p.id] = {
            "dir": p.dirname,
            "boot_id": boot_id,
            "job_name": lava.job_name(run_id, p.id),
            "job": str(path),
            "cmdline": job.cmdline,
            "banner": dict(job.banner) if job.banner else None,
            "record": {**job.record, "cmdline": job.cmdline, "lava": {"boot_id": boot_id}},
        }
        log(f"{p.id}: {path}")
    script = _write_script(out, cells, arches)
    meta = results.RunMeta.from_json(results.load_run(run_dir))
    meta.status = "incomplete"
    meta.extra["lava"] = {
        "export_dir": str(out.resolve()),
        "base_url": base_url or None,
        "accel": accel,
        "cells": entries,
    }
    meta.images = {a: {"key": i.key, "path": str(i.path)} for a, i in images.items()}
    meta.kernels = {label: {"key": k.key, "dir": str(k.dir)} for label, k in kernels.items()}
    meta.write(run_dir)
    return Exported(out, run_dir, tuple(jobs), script)


def _write(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    tmp.replace(dest)


def _write_script(
    out: Path, cells: Sequence[matrix.Planned], arches: Mapping[str, ArchSpec]
) -> Path:
    """lava-run for every job, one at a time: logs/<cell dir>.log, and one line per job
    with lava-run's exit status and time. Job ids carry the shell's pid: lava-run's work
    directory is /var/lib/lava/dispatcher/tmp/<job id>, shared by concurrent runs."""
    lines = [
        "#!/bin/sh",
        "# Runs every exported job with Debian's lava-dispatcher (lava-run, as root), then:",
        "#   lab import lava logs/*.log --run RUN",
        'cd "$(dirname "$0")" || exit 2',
        "status=0",
        "job() {",
        "    start=$(date +%s%N)",
        '    lava-run --device "$2" --dispatcher dispatcher.yaml --job-id "lab-$$-$3" \\',
        '        --output-dir "logs/$1" "jobs/$1.yaml" 2>"logs/$1.log"',
        "    rc=$?",
        "    ms=$(( ($(date +%s%N) - start) / 1000000 ))",
        '    echo "$1: lava-run exit $rc in $((ms / 1000)).$((ms % 1000 / 100))s"',
        '    [ "$rc" = 0 ] || status=1',
        "}",
    ]
    for n, p in enumerate(cells, start=1):
        device = f"devices/{lava.device_name(arches[p.cell.arch.name])}.yaml"
        lines.append(shlex.join(["job", p.dirname, device, str(n)]))
    lines.append("exit $status")
    path = out / "lava-run.sh"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return path
