"""Writing a LAVA export (jobs, device dictionaries, artefacts, a run to import into) and
importing finished LAVA jobs into that run. The side effects of lab.export.

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
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import __version__, build, cache, classify, results
from lab.build import Kernel
from lab.config import ArchSpec, LabConfig
from lab.errors import UserError, printable
from lab.export import lava, lavalog
from lab.image import BaseImage, cpio
from lab.outcome import Verdict
from lab.results import CellResult
from lab.run import matrix, runner
from lab.vm import boot, channel

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
    run_id = run_dir.name
    entries: dict[str, Any] = {}
    jobs: list[Path] = []
    for p in cells:
        kernel = kernels[p.kernel]
        base = images[p.cell.arch.name]
        job, files = runner.prepare_cell(cfg, p.cell, kernel, base, p.id, p.repeat, log)
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


# --- import -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One LAVA log matched to a cell of the run."""

    path: Path
    raw: bytes
    log: lavalog.LavaLog
    cell_id: str
    entry: Mapping[str, Any]  # run.json lava.cells[cell_id]


def _lava_cells(run_dir: Path, run: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    block = run.get("lava")
    cells = block.get("cells") if isinstance(block, dict) else None
    if not isinstance(cells, dict) or not cells:
        raise UserError(
            f"{run_dir}: not a run made by `lab export lava` (no lava cells in run.json)"
        )
    return {
        k: v for k, v in cells.items() if isinstance(v, dict) and isinstance(v.get("boot_id"), str)
    }


def match(run_dir: Path, cells: Mapping[str, Mapping[str, Any]], path: Path) -> Job:
    """Read a log and find its cell; UserError (one line) when it is not one of this run's."""
    try:
        with path.open("rb") as f:
            raw = f.read(lavalog.MAX_LOG + 1)
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        log = lavalog.parse(raw)
    except lavalog.LogError as exc:
        raise UserError(f"{path}: not a usable LAVA job log: {exc}") from None
    by_boot = {e["boot_id"]: cid for cid, e in cells.items()}
    mine = sorted({_text(by_boot[b], 200) for b in log.boot_ids() if b in by_boot})
    if len(mine) > 1:
        raise UserError(f"{path}: names several cells of {run_dir.name} ({', '.join(mine)})")
    if not mine:
        foreign = lavalog.ready_ids(log.console) or any("LABREC" in c for c in log.console)
        what = (
            "a job the lab exported for another run"
            if foreign or any(".cpio.gz" in m and "--" in m for m in log.messages)
            else "not a job the lab exported"
        )
        raise UserError(f"{path}: {what}: it names no boot id of run {run_dir.name}")
    cell_id = next(by_boot[b] for b in log.boot_ids() if b in by_boot)
    return Job(path, raw, log, cell_id, cells[cell_id])


MAX_LAVA_TEXT = 2000  # characters of one LAVA message kept in cell.json


def _text(value: Any, limit: int) -> str:
    """A value from the log (LAVA's, or the guest's through it) as bounded, printable text."""
    return printable(str(value), limit, one_line=True)


def _deadline_or_infra(log: lavalog.LavaLog, ready: bool) -> tuple[str | None, str]:
    """How the job ended, in the lab's terms: (deadline, "") for a boot or test that ran
    out of time (a result about the kernel, as the local runner's deadlines are), (None,
    message) for LAVA's own trouble (an infrastructure error), (None, "") otherwise."""
    if log.complete:
        return None, ""
    error = f"LAVA {_text(log.job.get('error_type', '?'), 40)} error: " + _text(
        log.job.get("error_msg", ""), MAX_LAVA_TEXT
    )
    for case, why in log.failed_actions():
        timed_out = "timed out" in why or "timeout" in why.lower()
        if timed_out and case in lavalog.TEST_ACTIONS:
            return ("test" if ready else "boot"), ""
        if timed_out and case in lavalog.BOOT_ACTIONS:
            return "boot", ""
    if ready and any(
        "end of file" in why or "Connection closed" in why for _c, why in log.failed_actions()
    ):
        return None, ""  # QEMU ended by itself during the test (a panic, a reboot)
    return None, error


def _cell_dir(run_dir: Path, entry: Mapping[str, Any], cell_id: str) -> Path:
    name = entry.get("dir")
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise UserError(
            f"{run_dir / 'run.json'}: lava cell {_text(cell_id, 200)}: bad 'dir' "
            f"{_text(repr(name), 200)}"
        )
    return run_dir / "cells" / name


def write_cell(run_dir: Path, job: Job) -> CellResult:
    """The cell directory of one finished LAVA job, classified as a local cell is."""
    d = _cell_dir(run_dir, job.entry, job.cell_id)
    record = job.entry.get("record")
    record = dict(record) if isinstance(record, dict) else {"id": job.cell_id}
    lines = job.log.console
    got = lavalog.extract(lines)
    ready = job.entry["boot_id"] in lavalog.ready_ids(lines)
    deadline, infra = _deadline_or_infra(job.log, ready)
    lava_facts = {
        "log": str(job.path),
        "boot_id": job.entry["boot_id"],
        "job_result": _text(job.log.job.get("result"), 40),
        "error_type": _text(job.log.job.get("error_type") or "", 40) or None,
        "error_msg": _text(job.log.job.get("error_msg") or "", MAX_LAVA_TEXT) or None,
        "failed_actions": [_text(f"{c}: {w}", 200) for c, w in job.log.failed_actions()[:20]],
        "records_complete": got.ended,
    }
    staging = run_dir / ".staging" / d.name
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (staging / "lava.log").write_bytes(job.raw)
    (staging / "console.log").write_text(got.console)
    (staging / "result.jsonl").write_bytes(b"".join(r + b"\n" for r in got.records))
    marks = {"lab_host": "lava", "host": "lava", "lava": lava_facts}
    if infra:
        cell = CellResult.infra(staging, record, infra, marks)
        cell = CellResult.from_json(
            staging,
            cell.data,
            {
                **cell.evidence,
                "rule": "lava-incomplete",
                "rule_text": LAVA_INCOMPLETE,
                "evidence": [{"line_no": 0, "ktime": None, "signature": "lava:job", "text": infra}],
            },
        )
    else:
        reader = channel.Reader()
        reader.feed(b"".join(r + b"\n" for r in got.records))
        banner = job.entry.get("banner")
        facts = classify.RunFacts.from_mapping(
            {
                "ready": ready,
                "deadline": deadline,
                "qemu_exit": 0 if got.ended else None,
                "records": list(reader.records),
                "problems": [*got.problems, *reader.problems],
                "expected_banner": banner if isinstance(banner, dict) else None,
            }
        )
        result = classify.classify(got.console, facts)
        expected = tuple(str(e) for e in record.get("expected") or ())
        cell = CellResult.from_json(
            staging,
            {
                **record,
                **runner.recorded_facts(facts),
                "observed": result.outcome,
                "verdict": Verdict.for_outcome(result.outcome, expected),
                "detail": result.detail,
                "timings": {"lava_job": job.log.duration},
                "finished": results.now(),
                **marks,
            },
            result.to_json(),
        )
    cell.write()
    if d.exists():
        shutil.rmtree(d)  # checked by the caller: only an unfinished attempt
    staging.rename(d)
    return CellResult.from_dir(d)


LAVA_INCOMPLETE = "LAVA marked the job incomplete for a reason of its own (not the kernel's)."


def import_logs(
    run_dir: Path, logs: Sequence[Path], log: Log = lambda _m: None
) -> list[CellResult]:
    """Every log is checked before anything is written: a bad one changes nothing."""
    with results.locked_run(run_dir):
        run = results.load_run(run_dir)
        cells = _lava_cells(run_dir, run)
        jobs = [match(run_dir, cells, p) for p in logs]
        seen: dict[str, Path] = {}
        for j in jobs:
            if j.cell_id in seen:
                raise UserError(
                    f"{j.path}: the same cell ({_text(j.cell_id, 200)}) as {seen[j.cell_id]}"
                )
            seen[j.cell_id] = j.path
            d = _cell_dir(run_dir, j.entry, j.cell_id)
            if (d / "cell.json").exists():
                raise UserError(
                    f"{j.path}: cell {_text(j.cell_id, 200)} is already in {run_dir.name} ({d})"
                )
        done = [write_cell(run_dir, j) for j in jobs]
        shutil.rmtree(run_dir / ".staging", ignore_errors=True)
        meta = results.RunMeta.from_json(results.load_run(run_dir))
        finished = results.finished_ids(run_dir)
        planned = results.planned_ids(meta.to_json())
        meta.status = "complete" if set(planned) <= finished else "incomplete"
        if meta.status == "complete":
            meta.finished = results.now()
        meta.write(run_dir)
        for c in done:
            log(f"{c.id}: {c.observed} ({c.verdict})")
        return done
