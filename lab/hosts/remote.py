"""The lab host's side of SSH execution: `python3 -m lab.hosts.remote COMMAND ...`.

Runs from an uploaded bundle (PYTHONPATH=<lab_dir>/bundles/<digest>, see lab.hosts.bundle)
with nothing but python3 and QEMU on the host. The controller side is lab.hosts.ssh.

  exec LAB_DIR   Read one cell request (a JSON line) from stdin, run it with
                 lab.run.execute, write the finished cell directory to stdout as a
                 tar.gz, then its sha256 and size as the last stderr line; the kernel
                 and base image are checked against the sha256 the controller sent
                 before they boot. Log lines go to stderr. stdin stays open while the
                 cell runs: it is the SSH channel, and EOF means the controller is gone
                 (it closed the channel, died, or sshd was killed), so QEMU is killed,
                 the work directory removed and the process exits. No orphaned QEMU.
  facts JSON     Per arch (JSON: name -> ArchSpec dict): the QEMU binary, its version
                 and the accelerator the runner would pick here (lab hosts check).

Exit status of exec: 0 done (tar on stdout); 3 the lab could not run the cell (the
last stderr line is the message: an infra result, like a LabError locally); 4 a
malformed request; 5 the controller went away. Anything else (no status at all,
127 for a missing python) means the host is unusable.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import secrets
import shutil
import sys
import tarfile
import threading
from pathlib import Path
from typing import Any

PROTOCOL = 1
EXIT_OK = 0
EXIT_LAB_ERROR = 3
EXIT_BAD_REQUEST = 4
EXIT_GONE = 5
ERROR_PREFIX = "lab-remote: error: "
RESULT_PREFIX = "result sha256 "  # after "lab-remote: ": the tar.gz's digest and size


def _read_header(fd: int) -> bytes:
    """Bytes up to the first newline (the request); the rest of stdin is the liveness pipe."""
    buf = bytearray()
    while b"\n" not in buf:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        buf += chunk
    return bytes(buf.split(b"\n", 1)[0])


def _watch(fd: int, on_eof: Any) -> None:
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            chunk = b""
        if not chunk:
            on_eof()
            return


def _inside(root: Path, rel: str) -> Path:
    p = (root / rel).resolve()
    if root.resolve() not in p.parents:
        raise ValueError(f"{rel!r} is outside the lab directory")
    return p


def check_image(path: Path, sha256: str) -> str:
    """Why the file does not hold the bytes the controller sent ("" if it does). One that
    differs (a truncated or altered upload) is removed, so the next cell uploads it
    again instead of booting it."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() == sha256:
        return ""
    path.unlink(missing_ok=True)
    return (
        f"{path.name} on the lab host has sha256 {h.hexdigest()[:16]}, the controller's "
        f"{sha256[:16]}: removed; it is uploaded again for the next cell"
    )


def request_problem(req: Any) -> str:
    """What is wrong with an exec request ("" if nothing)."""
    if not isinstance(req, dict):
        return "not a JSON object"
    if req.get("protocol") != PROTOCOL:
        return f"protocol {req.get('protocol')!r}, want {PROTOCOL}"
    for key in ("job", "kernel", "base", "files", "kernel_sha256", "base_sha256"):
        if key not in req:
            return f"no {key!r}"
    for key in ("kernel_sha256", "base_sha256"):
        v = req[key]
        if not (isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)):
            return f"{key!r} is not a sha256 hex digest"
    return ""


def tar_dir(directory: Path) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for path in sorted(directory.rglob("*")):
            tar.add(path, arcname=path.relative_to(directory).as_posix(), recursive=False)
    return raw.getvalue()


def _fail(code: int, message: str) -> int:
    sys.stderr.write(ERROR_PREFIX + " ".join(message.split()) + "\n")
    sys.stderr.flush()
    return code


def exec_cell(lab_dir: Path) -> int:
    from lab import proc

    header = _read_header(0)
    work = lab_dir / "work" / secrets.token_hex(8)

    def gone() -> None:
        # The controller is gone: nobody will read the result. Leave nothing behind.
        proc.kill_all()
        shutil.rmtree(work, ignore_errors=True)
        os._exit(EXIT_GONE)

    threading.Thread(target=_watch, args=(0, gone), name="stdin-watch", daemon=True).start()
    try:
        req = json.loads(header)
        problem = request_problem(req)
        if problem:
            return _fail(EXIT_BAD_REQUEST, f"malformed request: {problem}")
        kernel = _inside(lab_dir, req["kernel"])
        base = _inside(lab_dir, req["base"])
        files = {str(k): (base64.b64decode(v[0]), int(v[1])) for k, v in req["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return _fail(EXIT_BAD_REQUEST, f"malformed request: {exc}")

    from lab.errors import LabError
    from lab.run.execute import execute
    from lab.run.job import CellJob

    def log(message: str) -> None:
        sys.stderr.write(f"lab-remote: {message}\n")
        sys.stderr.flush()

    try:
        try:
            job = CellJob.from_json(req["job"])
        except ValueError as exc:
            return _fail(EXIT_BAD_REQUEST, f"malformed request: {exc}")
        for p, sha in ((kernel, req["kernel_sha256"]), (base, req["base_sha256"])):
            if not p.is_file():
                return _fail(EXIT_LAB_ERROR, f"{p.name} missing on the lab host ({p})")
            problem = check_image(p, sha)
            if problem:
                return _fail(EXIT_LAB_ERROR, problem)
        try:
            execute(job, kernel, base, files, work / "cell", lab_dir / "cache", log)
        except LabError as exc:
            return _fail(EXIT_LAB_ERROR, str(exc))
        except Exception as exc:  # one cell's failure: an infra result, the host stays usable
            return _fail(
                EXIT_LAB_ERROR, f"the lab failed on this cell: {type(exc).__name__}: {exc}"
            )
        data = tar_dir(work / "cell")
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        # The controller checks what it received against this (the last stderr line).
        log(f"{RESULT_PREFIX}{hashlib.sha256(data).hexdigest()} {len(data)}")
        return EXIT_OK
    finally:
        shutil.rmtree(work, ignore_errors=True)


def facts(arches: dict[str, Any], cache_root: Path) -> dict[str, Any]:
    from lab.run.job import arch_from_json
    from lab.vm import accel

    out: dict[str, Any] = {}
    for name, data in arches.items():
        arch = arch_from_json(data)
        binary = shutil.which(arch.qemu.binary)
        entry: dict[str, Any] = {
            "binary": binary,
            "version": accel.qemu_version(arch.qemu.binary) if binary else "",
            "kvm_usable": os.access("/dev/kvm", os.R_OK | os.W_OK),
        }
        choice = accel.static_choice(arch)
        if choice is not None:
            entry["accel"], entry["reason"] = choice.accel, choice.reason
        else:
            key = accel.probe_key(arch)
            memo = cache_root / "probes" / f"accel-{arch.name}-{key}.json"
            try:
                known = json.loads(memo.read_text())
                entry["accel"], entry["reason"] = known["accel"], known["reason"] + " (remembered)"
            except (OSError, ValueError, KeyError):
                entry["accel"] = "probe"
                entry["reason"] = f"KVM is probed with a real guest on the first cell (key {key})"
        out[name] = entry
    return out


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "exec":
        from lab import proc

        # SIGTERM/SIGHUP unwind through `finally`: QEMU groups are killed on the way out.
        proc.install_signal_handlers()
        try:
            return exec_cell(Path(argv[1]))
        except proc.Terminated as exc:
            proc.kill_all()
            return 128 + exc.signum
    if len(argv) == 3 and argv[0] == "facts":
        print(json.dumps(facts(json.loads(argv[2]), Path(argv[1]) / "cache")))
        return 0
    print(
        f"usage: python3 -m lab.hosts.remote exec LAB_DIR | facts LAB_DIR ARCHES_JSON: {argv}",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
