"""What is on the host and what comes back: hello, the bundle, a cell's results (untrusted)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import shutil
import tarfile
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from lab import cache, results
from lab.config import LabConfig
from lab.config.hosts import Host
from lab.errors import InfraError, LabError, UserError, printable
from lab.hosts import bundle, remote
from lab.hosts.connect import BOOTSTRAP, MIN_PYTHON, _tail, _where, run
from lab.outcome import Verdict
from lab.run.workers import HostDown

# What a host may send back for one cell (its data is untrusted: bounded on arrival).
MAX_RESULT = 256 << 20  # bytes of the cell's tar.gz on stdout
MAX_STDERR = 64 << 10  # bytes of stderr kept (the tail)
MAX_MEMBER = 256 << 20  # bytes of one file in the cell (console.log is the big one)
MAX_EXTRACTED = 512 << 20  # bytes of all its files
MAX_MEMBERS = 64  # files and directories in it
MAX_FIELD = 64 << 10  # characters of one string field of its cell.json
# --- what is on the host ---------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    python: tuple[int, ...]
    executable: str
    lab_dir: str  # absolute, "~" expanded by the host
    machine: str
    kvm_usable: bool
    free_bytes: int
    qemu: Mapping[str, Mapping[str, Any]]  # binary -> {"path": str | None, "version": str}

    @property
    def python_version(self) -> str:
        return ".".join(str(x) for x in self.python)


def qemu_binaries(cfg: LabConfig, host: Host) -> dict[str, str]:
    """arch name -> QEMU binary, for the arches the host serves."""
    return {a: spec.qemu.binary for a, spec in cfg.arches.items() if host.serves(a)}


def hello(conn: Any, host: Host, binaries: Iterable[str]) -> Hello:
    """Create lab_dir and report python, QEMU, /dev/kvm and free disk (any python3)."""
    argv = [host.python, "-c", BOOTSTRAP, "hello", host.lab_dir, *sorted(set(binaries))]
    code, out, err = run(conn, argv, timeout=60)
    if code != 0:
        raise UserError(
            f"{_where(host)}: cannot run python {host.python!r} there "
            f"(status {code}: {_tail(err) or 'no output'})"
        )
    try:
        d = results.loads_bounded(out.strip().splitlines()[-1].encode(), 1 << 20, 4)
        if not isinstance(d["python"], list) or not isinstance(d["qemu"], dict):
            raise TypeError
        h = Hello(
            python=tuple(int(x) for x in d["python"]),
            executable=printable(str(d["executable"]), 300, one_line=True),
            lab_dir=str(d["lab_dir"]),
            machine=printable(str(d["machine"]), 40, one_line=True),
            kvm_usable=bool(d["kvm_usable"]),
            free_bytes=int(d["free_bytes"]),
            qemu={
                str(b): {
                    "path": q["path"] if isinstance(q.get("path"), str) else None,
                    "version": printable(str(q.get("version") or ""), 200, one_line=True),
                }
                for b, q in d["qemu"].items()
                if isinstance(q, dict)
            },
        )
    except (ValueError, KeyError, IndexError, TypeError):
        raise InfraError(f"{_where(host)}: unexpected answer from python: {_tail(out)}") from None
    if h.python < MIN_PYTHON:
        raise UserError(
            f"{_where(host)}: {h.executable} is Python {h.python_version}; the lab needs "
            f'>= {".".join(map(str, MIN_PYTHON))} (set python = "..." in its [[hosts]] entry)'
        )
    return h


def _manifest_sha256(b: bundle.Bundle) -> str:
    return hashlib.sha256(b.manifest()).hexdigest()


def bundle_present(conn: Any, host: Host, lab_dir: str) -> bool:
    """The bundle is on the host with every file's sha256 as in its manifest (a file
    of the right name, or even of the right size, is not enough)."""
    b = bundle.build()
    argv = [host.python, "-c", BOOTSTRAP, "verify", f"{lab_dir}/bundles/{b.digest}"]
    code, _out, _err = run(conn, [*argv, _manifest_sha256(b)], 120)
    return code == 0


def ensure_bundle(conn: Any, host: Host, lab_dir: str) -> tuple[str, bool]:
    """The bundle's directory on the host, and whether it was uploaded just now."""
    b = bundle.build()
    dest = f"{lab_dir}/bundles/{b.digest}"
    if bundle_present(conn, host, lab_dir):
        return dest, False
    tmp = f"{lab_dir}/bundles/.{b.digest}.{secrets.token_hex(4)}.tar.gz"
    conn.sftp().putfo(io.BytesIO(b.tar_gz()), tmp, confirm=True)
    argv = [host.python, "-c", BOOTSTRAP, "unpack", tmp, dest, _manifest_sha256(b)]
    code, _out, err = run(conn, argv, 120)
    if code != 0:
        raise InfraError(f"{_where(host)}: unpacking the lab bundle failed: {_tail(err)}")
    return dest, True


def _sftp_makedirs(sftp: Any, root: str, rel: PurePosixPath) -> None:
    path = root
    for part in rel.parts:
        path = f"{path}/{part}"
        try:
            sftp.mkdir(path)
        except OSError:
            sftp.stat(path)  # raises if it still does not exist


def extract_cell(src: Path, dest: Path, host: str) -> None:
    """A cell directory from a host: regular files and directories inside dest only,
    streamed to disk with a cap per file, in total and on the number of files (a small
    gzip bomb must not fill the controller's memory or disk)."""
    dest.mkdir(parents=True)
    where = f"the cell directory from lab host {host}"
    total = 0
    try:
        with tarfile.open(src, mode="r:gz") as tar:
            for i, m in enumerate(tar):
                if i >= MAX_MEMBERS:
                    raise InfraError(f"{where} has more than {MAX_MEMBERS} files; refused")
                rel = PurePosixPath(m.name)
                if rel.is_absolute() or ".." in rel.parts:
                    raise InfraError(f"refusing path {printable(m.name, 200, True)} in {where}")
                target = dest / rel
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif m.isfile() and (f := tar.extractfile(m)) is not None:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    size = 0
                    with open(target, "wb") as out:
                        while block := f.read(1 << 16):
                            size += len(block)
                            total += len(block)
                            if size > MAX_MEMBER:
                                raise InfraError(
                                    f"{where}: {printable(m.name, 200, True)} is larger than "
                                    f"{MAX_MEMBER} bytes; refused"
                                )
                            if total > MAX_EXTRACTED:
                                raise InfraError(f"{where} holds more than {MAX_EXTRACTED} bytes")
                            out.write(block)
                # anything else (links, devices) is not part of a cell: skipped
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise InfraError(f"{where} is unreadable: {printable(str(exc), 300, True)}") from None


def pump(chan: Any, sink: BinaryIO, budget: float, host: str) -> tuple[int, str, str]:
    """Read a running cell's channel until the host-side lab exits: stdout (the cell's
    tar.gz) to sink, at most MAX_RESULT bytes; the last MAX_STDERR bytes of stderr.
    Returns (exit status, stderr tail, sha256 of stdout)."""
    digest = hashlib.sha256()
    size = 0
    err = bytearray()
    deadline = time.monotonic() + budget
    while True:
        busy = False
        if chan.recv_ready():
            data = chan.recv(1 << 16)
            size += len(data)
            if size > MAX_RESULT:
                raise InfraError(
                    f"lab host {host} sent more than {MAX_RESULT >> 20} MiB for one cell; refused"
                )
            sink.write(data)
            digest.update(data)
            busy = True
        if chan.recv_stderr_ready():
            err += chan.recv_stderr(1 << 16)
            del err[:-MAX_STDERR]  # the tail is what tells
            busy = True
        if not busy and chan.exit_status_ready():
            break  # data sent before the exit status is already buffered
        if time.monotonic() > deadline:
            raise HostDown(host, f"the cell did not finish within {budget:.0f}s")
        if not busy:
            time.sleep(0.05)
    return int(chan.exit_status), err.decode(errors="replace"), f"{digest.hexdigest()} {size}"


def exit_problem(host: str, status: int, err: str) -> LabError:
    """What a failed host-side lab means: the cell could not run there (LabError: an
    infra result), or the host is unusable (HostDown). Host text is escaped."""
    last = err.strip().splitlines()[-1] if err.strip() else ""
    if status in (remote.EXIT_LAB_ERROR, remote.EXIT_BAD_REQUEST) and last.startswith(
        remote.ERROR_PREFIX
    ):
        message = printable(last.removeprefix(remote.ERROR_PREFIX), 500, one_line=True)
        return LabError(f"{message} (on lab host {host})")
    return HostDown(
        host, f"the host-side lab exited with status {status}: {_tail(err) or 'no output'}"
    )


def result_problem(err: str, received: str) -> str:
    """Why the tar.gz received is not the one the host sent ("" if it is): the host's
    last stderr line names its sha256 and size."""
    lines = err.strip().splitlines()
    if lines and lines[-1] == f"lab-remote: {remote.RESULT_PREFIX}{received}":
        return ""
    return f"arrived damaged or incomplete (received sha256 and size {received})"


# What lab.run.execute on a host reports about the run, with the JSON types allowed;
# everything else in cell.json is the controller's (job.record) or recomputed here.
_NONE = type(None)
HOST_FIELDS: dict[str, tuple[type, ...]] = {
    "observed": (str,),
    "detail": (str,),
    "accel": (str,),
    "accel_reason": (str,),
    "cmdline": (str,),
    "timings": (dict,),
    "qemu_exit": (int, _NONE),
    "qemu_killed": (bool,),
    "host": (str,),
    "finished": (str,),
    "ready": (bool,),
    "deadline": (str, _NONE),
    "banner": (dict, _NONE),
}
IDENTITY = ("id", "run_cell_id", "arch", "variant", "testcase")
_CLASS_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")


def _shown(value: object) -> str:
    return printable(json.dumps(value)[:80] if not isinstance(value, str) else repr(value[:80]))


def _host_record(data: Any, asked: Mapping[str, Any]) -> dict[str, Any]:
    """cell.json from a host, checked against the cell that was asked for; the stored
    record takes identity, expectation and display fields (reproducer) from `asked`
    and recomputes the verdict. Raises ValueError naming the first problem."""
    if not isinstance(data, dict):
        raise ValueError(f"cell.json is a JSON {type(data).__name__}, not an object")
    for key in IDENTITY:
        if data.get(key) != asked.get(key):
            raise ValueError(
                f"cell.json {key!r} is {_shown(data.get(key))}, "
                f"but the cell asked for is {asked.get(key)!r}"
            )
    out: dict[str, Any] = {}
    for key, types in HOST_FIELDS.items():
        if key not in data:
            continue
        v = data[key]
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            raise ValueError(f"cell.json {key!r} has the wrong type ({type(v).__name__})")
        if isinstance(v, str) and len(v) > MAX_FIELD:
            raise ValueError(f"cell.json {key!r} is longer than {MAX_FIELD} characters")
        out[key] = v
    observed = out.get("observed")
    if not isinstance(observed, str) or not _CLASS_NAME.fullmatch(observed):
        raise ValueError(f"cell.json 'observed' is {_shown(observed)}, not an outcome class")
    timings = out.get("timings", {})
    if len(timings) > 16 or not all(
        isinstance(t, int | float | _NONE) and not isinstance(t, bool) for t in timings.values()
    ):
        raise ValueError("cell.json 'timings' is not a small object of numbers")
    banner = out.get("banner") or {}
    if len(banner) > 32 or not all(isinstance(v, str) for v in banner.values()):
        raise ValueError("cell.json 'banner' is not a small object of strings")
    expected = tuple(asked.get("expected") or ())
    return {**out, **asked, "verdict": Verdict.for_outcome(observed, expected)}


def _host_evidence(ev: Any, observed: str) -> Mapping[str, Any]:
    if not isinstance(ev, dict):
        raise ValueError(f"evidence.json is a JSON {type(ev).__name__}, not an object")
    if ev.get("outcome", observed) != observed:
        raise ValueError(f"evidence.json says {_shown(ev.get('outcome'))}, cell.json {observed}")
    for key in ("detail", "rule", "rule_text"):
        if not isinstance(ev.get(key, ""), str):
            raise ValueError(f"evidence.json {key!r} is not a string")
    items = ev.get("evidence", [])
    if not isinstance(items, list) or not all(isinstance(e, dict) for e in items):
        raise ValueError("evidence.json 'evidence' is not a list of objects")
    return ev


def _read_json(root: Path, name: str) -> Any:
    return results.loads_bounded(
        results.read_inside(root, root / name, results.MAX_CELL_JSON), results.MAX_CELL_JSON
    )


def store_cell(
    host: str,
    src: Path,
    directory: Path,
    requeued_from: tuple[str, ...],
    asked: Mapping[str, Any],
) -> results.CellResult:
    """Check a cell fetched from a host (tar.gz at src) against `asked` (the job
    record), stage it outside cells/, mark it, then rename it into place: a half
    fetched or unusable cell never lands in cells/. Raises LabError (one line)."""
    staging = directory.parent.parent / ".staging" / f"{directory.name}.{secrets.token_hex(4)}"
    try:
        extract_cell(src, staging, host)
        try:
            record = _host_record(_read_json(staging, "cell.json"), asked)
            ev = _host_evidence(_read_json(staging, "evidence.json"), record["observed"])
        except (OSError, ValueError) as exc:
            why = printable(str(exc), 300, one_line=True)
            raise InfraError(f"the cell from lab host {host} is unusable: {why}") from None
        record["lab_host"] = host
        if requeued_from:
            record["requeued_from"] = list(requeued_from)
        results.CellResult.from_json(staging, record, ev).write()
        if directory.exists():
            shutil.rmtree(directory)
        os.rename(staging, directory)
        cache.fsync_dir(directory.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return results.CellResult.from_json(directory, record, ev)
