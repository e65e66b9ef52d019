"""SSH lab hosts, controller side: Fabric connections, uploads, remote cells, checks.

A lab host needs python3 >= 3.11 and QEMU; everything else travels from here:

  <lab_dir>/bundles/<digest>/               the lab and its pure-Python deps (lab.hosts.bundle)
  <lab_dir>/kernels/<key>/<image>           kernel images, content-addressed
  <lab_dir>/images/<arch>/<key>/base.cpio.gz  base initramfs, content-addressed
  <lab_dir>/cache/                          the host's own probes (KVM)
  <lab_dir>/work/<token>/                   one running cell (removed when it ends)

Uploads go to a temporary name, are checked by sha256 and renamed into place, so a
file at its final path is complete; a file present with the same sha256 is never sent
again. Per cell, the job and its overlay files travel on the SSH channel's stdin as
one JSON line, and the finished cell directory comes back as a tar.gz on stdout
(lab.hosts.remote). What a host sends back is untrusted: bounded, checked against the cell
that was asked for, and any problem is that cell's infra_error (see store_cell). The
channel stays open while the cell runs: closing it (Ctrl-C, a lost controller) makes
the host kill QEMU.

Security: key authentication with the configured key only (no agent, no
~/.ssh/id_* discovery, no passwords, no ~/.ssh/config), host keys checked against
known_hosts (strict by default), and every remote command built as an argument list
and quoted with shlex.join, so no lab.toml value reaches a remote shell unquoted.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import tarfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import fabric
import invoke.exceptions
import paramiko

from lab import __version__, cache, results
from lab.build import Kernel
from lab.config import LabConfig
from lab.config.hosts import Host
from lab.errors import InfraError, LabError, UserError, printable
from lab.hosts import bundle, remote
from lab.image import BaseImage
from lab.outcome import Verdict
from lab.run import matrix, runner

CONNECT_TIMEOUT = 10  # seconds for TCP connect, SSH banner and authentication each
KEEPALIVE = 5  # seconds between SSH keepalives on a connection
HEARTBEAT = 10  # seconds between checks that the host still answers
DEAD_AFTER = 30.0  # a keepalive unanswered this long: the connection is dead
MIN_PYTHON = (3, 11)
CELL_SLACK = 120.0  # seconds beyond a cell's own deadlines (initrd, upload of results)
# What a host may send back for one cell (its data is untrusted: bounded on arrival).
MAX_RESULT = 256 << 20  # bytes of the cell's tar.gz on stdout
MAX_STDERR = 64 << 10  # bytes of stderr kept (the tail)
MAX_MEMBER = 256 << 20  # bytes of one file in the cell (console.log is the big one)
MAX_EXTRACTED = 512 << 20  # bytes of all its files
MAX_MEMBERS = 64  # files and directories in it
MAX_FIELD = 64 << 10  # characters of one string field of its cell.json

# Errors of a broken or closed connection (paramiko, sockets, invoke's runner).
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    paramiko.SSHException,
    EOFError,
    OSError,
    invoke.exceptions.CommandTimedOut,
    invoke.exceptions.ThreadException,
)

# Runs with the host's python3 before the lab is there (any python3: it must be able
# to report that the version is too old). Arguments come after `-c BOOTSTRAP`.
BOOTSTRAP = r"""
import json, os, platform, shutil, subprocess, sys, tarfile
def version(binary):
    try:
        out = subprocess.run([binary, "--version"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, timeout=20,
                             universal_newlines=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.strip().splitlines()[0] if out.strip() else ""
def sha256(path):
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
def verify(dest, want):
    # "" when dest holds the bundle whose BUNDLE manifest has sha256 `want`.
    manifest = os.path.join(dest, "BUNDLE")
    if not os.path.isfile(manifest) or sha256(manifest) != want:
        return "its BUNDLE manifest is missing or not this lab's"
    with open(manifest) as f:
        for line in f.read().splitlines()[1:]:
            digest, _, name = line.partition("  ")
            path = os.path.join(dest, name)
            bad = name.startswith("/") or ".." in name.split("/")
            if bad or not os.path.isfile(path) or sha256(path) != digest:
                return "file " + name + " differs from the manifest"
    return ""
cmd = sys.argv[1]
if cmd == "hello":
    lab = os.path.realpath(os.path.expanduser(sys.argv[2]))
    for sub in ("bundles", "kernels", "images", "work", "cache"):
        os.makedirs(os.path.join(lab, sub), exist_ok=True)
    qemu = {}
    for b in sys.argv[3:]:
        path = shutil.which(b)
        qemu[b] = {"path": path, "version": version(b) if path else ""}
    print(json.dumps({
        "python": list(sys.version_info[:3]), "executable": sys.executable,
        "lab_dir": lab, "machine": platform.machine(), "node": platform.node(),
        "kvm_usable": os.access("/dev/kvm", os.R_OK | os.W_OK),
        "free_bytes": shutil.disk_usage(lab).free, "qemu": qemu}))
elif cmd == "sha256":
    print(sha256(sys.argv[2]) if os.path.isfile(sys.argv[2]) else "-")
elif cmd == "verify":
    problem = verify(sys.argv[2], sys.argv[3])
    if problem:
        sys.exit(problem)
elif cmd == "unpack":
    src, dest, want = sys.argv[2], sys.argv[3], sys.argv[4]
    tmp = dest + ".tmp-" + str(os.getpid())
    try:
        with tarfile.open(src) as t:
            for m in t.getmembers():
                bad = m.name.startswith("/") or ".." in m.name.split("/")
                if bad or not (m.isfile() or m.isdir()):
                    sys.exit("refusing tar member " + repr(m.name))
            kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            t.extractall(tmp, **kw)
        problem = verify(tmp, want)
        if problem:
            sys.exit("the uploaded bundle is not the one sent: " + problem)
        if os.path.isdir(dest) and verify(dest, want):
            shutil.rmtree(dest)  # a damaged copy: replaced
        try:
            os.rename(tmp, dest)
        except OSError:
            if not os.path.isdir(dest):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        os.unlink(src)
else:
    sys.exit("unknown bootstrap command " + cmd)
"""


class HostKeyError(UserError):
    """The host's key is unknown (strict policy) or changed: the host is refused."""


# --- connecting ----------------------------------------------------------------------


class _UnknownHostKey(paramiko.SSHException):  # type: ignore[misc]
    def __init__(self, hostname: str, key: Any) -> None:
        super().__init__(f"{hostname}: host key not in known_hosts")
        self.hostname = hostname
        self.key = key


class _StrictPolicy(paramiko.RejectPolicy):  # type: ignore[misc]
    """OpenSSH's StrictHostKeyChecking=yes: the key must already be in known_hosts."""

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        raise _UnknownHostKey(hostname, key)


class _AcceptNewPolicy(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    """StrictHostKeyChecking=accept-new: remember a key seen for the first time.

    A changed key never reaches a policy: paramiko raises BadHostKeyException first."""

    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        line = paramiko.hostkeys.HostKeyEntry([hostname], key).to_line()
        self.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.known_hosts, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # other lab processes may append at once
            f.write(line)


def _where(host: Host) -> str:
    return f"host {host.name} ({host.target})"


def _connect_error(host: Host, exc: BaseException) -> LabError:
    """One line naming the host and what to do; never key material."""
    where = _where(host)
    if isinstance(exc, paramiko.BadHostKeyException):
        kh = host.known_hosts
        return HostKeyError(
            f"{where}: REFUSED: its {exc.key.get_name()} host key has CHANGED "
            f"(server offers {exc.key.fingerprint}, {kh} has {exc.expected_key.fingerprint}); "
            "someone may be intercepting the connection, or the host was reinstalled: "
            f"verify the new key, then run `ssh-keygen -f {kh} -R '{host.known_hosts_name}'` "
            "and add the new key to known_hosts"
        )
    if isinstance(exc, _UnknownHostKey):
        return HostKeyError(
            f"{where}: REFUSED: its {exc.key.get_name()} host key ({exc.key.fingerprint}) "
            f'is not in {host.known_hosts} and host_key_policy is "strict"; verify the '
            f"fingerprint, then add the key (ssh-keyscan -p {host.port} {host.address} "
            f'>> {host.known_hosts}) or set host_key_policy = "accept-new"'
        )
    if isinstance(exc, paramiko.PasswordRequiredException):
        return LabError(
            f"{where}: key_file {host.key_file} is passphrase-protected; the lab uses "
            "unencrypted keys only (no prompts, no agent): give the lab a dedicated key"
        )
    if isinstance(exc, paramiko.AuthenticationException):
        return LabError(
            f"{where}: key authentication failed: the server did not accept key_file "
            f"{host.key_file} (the lab offers only that key: no agent, no passwords)"
        )
    return LabError(f"{where}: {describe(exc)}")


def describe(exc: BaseException) -> str:
    """A transport error as a short phrase."""
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        inner = list(exc.errors.values())
        if inner and all(getattr(e, "errno", None) == errno.ECONNREFUSED for e in inner):
            return "cannot connect: connection refused"
        return f"cannot connect: {'; '.join(str(e) for e in inner) or exc}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the address: {exc.strerror}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer within {CONNECT_TIMEOUT}s"
    if isinstance(exc, invoke.exceptions.CommandTimedOut):
        return f"a remote command did not finish within {exc.timeout}s"
    if isinstance(exc, EOFError):
        return "connection closed by the host"
    if isinstance(exc, OSError) and exc.strerror:
        return f"connection failed: {exc.strerror}"
    text = str(exc).strip() or type(exc).__name__
    return f"SSH error: {text}"


def connect(host: Host) -> Any:
    """An open fabric.Connection with the host key checked per policy."""
    if not host.key_file.is_file() or not os.access(host.key_file, os.R_OK):
        raise UserError(f"{_where(host)}: key_file {host.key_file}: missing or unreadable")
    # An explicit empty SSHConfig: ~/.ssh/config and /etc/ssh/ssh_config are not read,
    # so lab.toml alone decides address, user, key and proxies (none).
    config = fabric.Config(ssh_config=paramiko.SSHConfig())
    conn = fabric.Connection(
        host.address,
        user=host.user,
        port=host.port,
        config=config,
        connect_timeout=CONNECT_TIMEOUT,
        forward_agent=False,
        connect_kwargs={
            "key_filename": [str(host.key_file)],
            "allow_agent": False,
            "look_for_keys": False,
            "banner_timeout": CONNECT_TIMEOUT,
            "auth_timeout": CONNECT_TIMEOUT,
            "channel_timeout": CONNECT_TIMEOUT,
        },
    )
    client = conn.client
    if host.known_hosts.is_file():
        try:
            client.get_host_keys().load(str(host.known_hosts))
        except (OSError, paramiko.SSHException) as exc:
            raise UserError(f"{_where(host)}: known_hosts {host.known_hosts}: {exc}") from None
    client.set_missing_host_key_policy(
        _StrictPolicy() if host.host_key_policy == "strict" else _AcceptNewPolicy(host.known_hosts)
    )
    try:
        conn.open()
    except Exception as exc:
        conn.close()
        raise _connect_error(host, exc) from None
    conn.transport.set_keepalive(KEEPALIVE)
    return conn


class _Heartbeat(threading.Thread):
    """Closes a connection whose host stopped answering (a silent network partition:
    no RST, so TCP alone would notice only after many minutes). Closing it fails every
    channel and SFTP call on it at once."""

    def __init__(self, conn: Any) -> None:
        super().__init__(name="ssh-heartbeat", daemon=True)
        self.conn = conn
        self.stopped = threading.Event()
        self.dead = ""

    def run(self) -> None:
        while not self.stopped.wait(HEARTBEAT):
            t = self.conn.transport
            if t is None or not t.is_active():
                return
            answered = threading.Event()

            def ask(t: Any = t, answered: threading.Event = answered) -> None:
                try:
                    t.global_request("keepalive@openssh.com", wait=True)
                finally:
                    answered.set()

            threading.Thread(target=ask, name="ssh-keepalive", daemon=True).start()
            if not answered.wait(DEAD_AFTER) and not self.stopped.is_set():
                self.dead = f"no answer to SSH keepalives for {DEAD_AFTER:.0f}s"
                t.close()
                return


def run(conn: Any, argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
    """A short remote command, argv quoted with shlex.join: (status, stdout, stderr)."""
    result = conn.run(shlex.join(argv), hide=True, warn=True, in_stream=False, timeout=timeout)
    return int(result.exited), str(result.stdout), str(result.stderr)


def _tail(text: str, lines: int = 3) -> str:
    """The last lines of a host's output for a message: one line, control characters
    escaped (a host must not drive the terminal or CI log that shows it)."""
    tail = [x.strip() for x in text.strip().splitlines()[-lines:] if x.strip()]
    return " | ".join(printable(x, 300, one_line=True) for x in tail)


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
            raise runner.HostDown(host, f"the cell did not finish within {budget:.0f}s")
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
    return runner.HostDown(
        host, f"the host-side lab exited with status {status}: {_tail(err) or 'no output'}"
    )


def result_problem(err: str, received: str) -> str:
    """Why the tar.gz received is not the one the host sent ("" if it is): the host's
    last stderr line names its sha256 and size."""
    lines = err.strip().splitlines()
    if lines and lines[-1] == f"lab-remote: {remote.RESULT_PREFIX}{received}":
        return ""
    return f"arrived damaged or incomplete (received sha256 and size {received})"


# What runner.execute on a host reports about the run, with the JSON types allowed;
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


# --- running cells on a host ------------------------------------------------------------


class RemoteWorker:
    """One SSH lab host as a runner.Worker: `slots` cells at once, one connection each."""

    def __init__(
        self,
        cfg: LabConfig,
        host: Host,
        conn: Any,
        info: Hello,
        bundle_dir: str,
        log: Callable[[str], None],
    ) -> None:
        self.cfg = cfg
        self.host = host
        self.name = host.name
        self.slots = host.capacity
        self.info = info
        self.lab_dir = info.lab_dir
        self.bundle_dir = bundle_dir
        self.log = log
        self.arches = frozenset(
            a for a, b in qemu_binaries(cfg, host).items() if (info.qemu.get(b) or {}).get("path")
        )
        self.cells = 0
        self._lock = threading.Lock()
        self._idle: list[Any] = [conn]  # the preflight connection serves the first slot
        self._open: list[tuple[Any, _Heartbeat]] = []
        self._local = threading.local()
        self._items: dict[str, threading.Lock] = {}
        self._present: set[str] = set()
        self._sha256: dict[str, str] = {}  # rel -> sha256 of the local file
        self._lost = ""
        self._aborted = False
        self._track(conn)

    # -- Worker protocol --

    def serves(self, arch: str) -> bool:
        return arch in self.arches

    def lost(self) -> str:
        return self._lost

    def abort(self) -> None:
        """Close every connection: each host-side lab sees EOF and kills its QEMU."""
        self._aborted = True
        self.close()

    def close(self) -> None:
        with self._lock:
            conns, self._open = self._open, []
            self._idle = []
        for conn, beat in conns:
            beat.stopped.set()
            # Closing a dead connection may fail; it is gone either way.
            with contextlib.suppress(Exception):
                conn.close()

    def run(
        self,
        p: matrix.Planned,
        kernel: Kernel,
        base: BaseImage,
        directory: Path,
        requeued_from: tuple[str, ...],
    ) -> results.CellResult:
        if self._lost:
            raise runner.HostDown(self.name, self._lost, ran=False)
        job, files = runner.prepare_cell(self.cfg, p.cell, kernel, base, p.id, p.repeat)
        images = (
            f"kernels/{kernel.key}/{kernel.image.name}",
            f"images/{p.cell.arch.name}/{base.key}/base.cpio.gz",
        )
        staging = directory.parent.parent / ".staging"
        staging.mkdir(parents=True, exist_ok=True)
        fetched = staging / f"{directory.name}.{secrets.token_hex(4)}.tar.gz"
        try:
            try:
                conn = self._conn()
                k = self._ensure(conn, images[0], kernel.image)
                b = self._ensure(conn, images[1], base.path)
                with open(fetched, "wb") as sink:
                    status, err, received = self._exec(conn, job, files, k, b, sink)
            except runner.HostDown as exc:
                self._mark_lost(exc.reason)
                raise
            except LabError:
                raise
            except TRANSPORT_ERRORS as exc:
                reason = self._reason(exc)
                self._mark_lost(reason)
                raise runner.HostDown(self.name, reason) from None
            if status == remote.EXIT_OK:
                problem = result_problem(err, received)
                if problem:
                    raise InfraError(f"the cell from lab host {self.name} {problem}")
                with self._lock:
                    self.cells += 1
                return store_cell(self.name, fetched, directory, requeued_from, job.record)
        finally:
            fetched.unlink(missing_ok=True)
        if status < 0:
            failure: LabError = runner.HostDown(
                self.name, self._reason(None) or "the connection closed while the cell ran"
            )
        else:
            failure = exit_problem(self.name, status, err)
        if isinstance(failure, runner.HostDown):
            self._mark_lost(failure.reason)
        else:
            with self._lock:  # e.g. an image removed there for its sha256: check again
                self._present.difference_update(images)
        raise failure

    # -- internals --

    def _track(self, conn: Any) -> None:
        beat = _Heartbeat(conn)
        beat.start()
        with self._lock:
            self._open.append((conn, beat))

    def _mark_lost(self, reason: str) -> None:
        with self._lock:
            first = not self._lost and not self._aborted
            if not self._lost:
                self._lost = reason
        if first:
            self.log(f"lab: host {self.name} lost ({reason}); it gets no more cells")

    def _reason(self, exc: BaseException | None) -> str:
        with self._lock:
            dead = next((b.dead for _, b in self._open if b.dead), "")
        if dead:
            return dead
        return describe(exc) if exc is not None else ""

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                try:
                    conn = connect(self.host)
                except LabError as exc:
                    raise runner.HostDown(self.name, str(exc).split(": ", 1)[-1]) from None
                self._track(conn)
            self._local.conn = conn
        if conn.transport is None or not conn.transport.is_active():
            raise runner.HostDown(self.name, self._reason(None) or "the connection closed")
        return conn

    def _remote_sha256(self, conn: Any, path: str) -> str:
        argv = [self.host.python, "-c", BOOTSTRAP, "sha256", path]
        code, out, err = run(conn, argv, timeout=300)
        if code != 0:
            raise InfraError(f"{_where(self.host)}: cannot hash {path}: {_tail(err) or code}")
        return out.strip()

    def _ensure(self, conn: Any, rel: str, local: Path) -> tuple[str, str]:
        """Upload a content-addressed file once (temp name, checked, then renamed): its
        remote path and sha256. Present means the same sha256 there, not the same size."""
        final = f"{self.lab_dir}/{rel}"
        with self._lock:
            item = self._items.setdefault(rel, threading.Lock())
        with item:  # one upload per host even when several slots need the file at once
            want = self._sha256.get(rel) or cache.file_digest(local)
            self._sha256[rel] = want
            if rel in self._present:
                return final, want
            if self._remote_sha256(conn, final) != want:
                started = time.monotonic()
                sftp = conn.sftp()
                parent = PurePosixPath(rel).parent
                _sftp_makedirs(sftp, self.lab_dir, parent)
                tmp = f"{self.lab_dir}/{parent}/.{local.name}.{secrets.token_hex(4)}.tmp"
                sftp.put(str(local), tmp, confirm=True)
                got = self._remote_sha256(conn, tmp)
                if got != want:
                    sftp.remove(tmp)
                    raise InfraError(
                        f"{_where(self.host)}: the upload of {rel} arrived with sha256 "
                        f"{printable(got[:16], one_line=True)}, sent {want[:16]}"
                    )
                sftp.posix_rename(tmp, final)
                self.log(
                    f"lab: host {self.name}: uploaded {rel} "
                    f"({local.stat().st_size / 2**20:.1f} MiB, "
                    f"{time.monotonic() - started:.1f}s)"
                )
            self._present.add(rel)
        return final, want

    def _budget(self, job: runner.CellJob) -> float:
        b = job.boot
        return float(
            b["ready_timeout"]
            + b["shutdown_timeout"]
            + b["kvm_probe_timeout"]
            + job.test_timeout
            + CELL_SLACK
        )

    def _exec(
        self,
        conn: Any,
        job: runner.CellJob,
        files: Mapping[str, tuple[bytes, int]],
        kernel: tuple[str, str],
        base: tuple[str, str],
        sink: BinaryIO,
    ) -> tuple[int, str, str]:
        request = {
            "protocol": remote.PROTOCOL,
            "job": job.to_json(),
            "kernel": os.path.relpath(kernel[0], self.lab_dir),
            "kernel_sha256": kernel[1],
            "base": os.path.relpath(base[0], self.lab_dir),
            "base_sha256": base[1],
            "files": {k: [base64.b64encode(d).decode(), m] for k, (d, m) in files.items()},
        }
        argv = [
            "env",
            f"PYTHONPATH={self.bundle_dir}",
            self.host.python,
            "-m",
            "lab.hosts.remote",
            "exec",
            self.lab_dir,
        ]
        chan = conn.transport.open_session(timeout=CONNECT_TIMEOUT)
        try:
            chan.exec_command(shlex.join(argv))
            chan.sendall(json.dumps(request).encode() + b"\n")
            # stdin stays open: it is how the host knows we are still here.
            return pump(chan, sink, self._budget(job), self.name)
        finally:
            chan.close()


def open_worker(cfg: LabConfig, host: Host, log: Callable[[str], None]) -> RemoteWorker:
    """Connect, check python and QEMU, make sure the bundle is there: a ready worker."""
    conn = connect(host)
    try:
        binaries = qemu_binaries(cfg, host)
        info = hello(conn, host, binaries.values())
        bundle_dir, uploaded = ensure_bundle(conn, host, info.lab_dir)
    except TRANSPORT_ERRORS as exc:
        conn.close()
        raise InfraError(f"{_where(host)}: {describe(exc)}") from None
    except BaseException:
        conn.close()
        raise
    if uploaded:
        log(f"lab: host {host.name}: uploaded the lab bundle to {bundle_dir}")
    worker = RemoteWorker(cfg, host, conn, info, bundle_dir, log)
    for arch, b in binaries.items():
        if arch not in worker.arches:
            log(f"lab: host {host.name}: {b} not found there; it runs no {arch} cells")
    return worker


def each_host(hosts: Sequence[Host], func: Callable[[Host], None]) -> None:
    """Run func for every host at once (connections are slow, not CPU-bound). The joins
    poll so that Ctrl-C and SIGTERM still reach the main thread while hosts answer."""
    threads = [threading.Thread(target=func, args=(h,), daemon=True) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)


def open_workers(
    cfg: LabConfig, hosts: Sequence[Host], log: Callable[[str], None]
) -> tuple[list[RemoteWorker], dict[str, str]]:
    """Workers for the hosts that answer (in parallel), and why the others were dropped."""
    results: dict[str, RemoteWorker | str] = {}

    def one(h: Host) -> None:
        try:
            results[h.name] = open_worker(cfg, h, log)
        except LabError as exc:
            results[h.name] = str(exc)

    each_host(hosts, one)
    workers = [w for h in hosts if isinstance(w := results.get(h.name), RemoteWorker)]
    failed = {h.name: r for h in hosts if isinstance(r := results.get(h.name, "no answer"), str)}
    for name, why in failed.items():
        log(f"lab: warning: not using host {name}: {why}")
    return workers, failed


# --- lab hosts check ---------------------------------------------------------------------


@dataclass(frozen=True)
class CheckLine:
    label: str
    ok: bool
    detail: str


def check(cfg: LabConfig, host: Host, upload: bool = True) -> list[CheckLine]:
    """Per host: reachable, python, lab bundle, QEMU + accelerator per arch, free disk."""
    started = time.monotonic()
    try:
        conn = connect(host)
    except LabError as exc:
        return [CheckLine("reachable", False, str(exc))]
    lines: list[CheckLine] = []
    try:
        key = conn.transport.get_remote_server_key()
        lines.append(
            CheckLine(
                "reachable",
                True,
                f"yes ({time.monotonic() - started:.2f}s); {key.get_name()} host key "
                f"{key.fingerprint} matches {host.known_hosts}",
            )
        )
        binaries = qemu_binaries(cfg, host)
        try:
            info = hello(conn, host, binaries.values())
        except LabError as exc:
            lines.append(CheckLine("python", False, str(exc)))
            return lines
        lines.append(CheckLine("python", True, f"{info.python_version} ({info.executable})"))
        digest = bundle.build().digest
        if upload:
            bundle_dir, uploaded = ensure_bundle(conn, host, info.lab_dir)
            state = "uploaded now" if uploaded else "present"
            lines.append(CheckLine("lab bundle", True, f"{state}: lab {__version__}, {bundle_dir}"))
            present = True
        else:
            present = bundle_present(conn, host, info.lab_dir)
            lines.append(
                CheckLine(
                    "lab bundle",
                    True,
                    f"present: lab {__version__}, {digest}"
                    if present
                    else f"absent (lab {__version__}, {digest}): uploaded on first use",
                )
            )
        facts: dict[str, Any] = {}
        if present and binaries:
            arches = {a: dataclasses.asdict(cfg.arches[a]) for a in binaries}
            argv = [
                "env",
                f"PYTHONPATH={info.lab_dir}/bundles/{digest}",
                host.python,
                "-m",
                "lab.hosts.remote",
                "facts",
                info.lab_dir,
                json.dumps(arches),
            ]
            code, out, err = run(conn, argv, timeout=60)
            if code == 0:
                try:
                    answer = results.loads_bounded(out.encode(), 1 << 20, 4)
                except ValueError:
                    answer = None
                facts = answer if isinstance(answer, dict) else {}
            else:
                lines.append(CheckLine("lab", False, f"lab.hosts.remote failed: {_tail(err)}"))
        kvm = "yes" if info.kvm_usable else "no"
        for arch, b in binaries.items():
            q = info.qemu.get(b) or {}
            if not q.get("path"):
                lines.append(CheckLine(arch, False, f"{b} not found on the host"))
                continue
            f = facts.get(arch)
            accel = f"; accel {f.get('accel')}: {f.get('reason')}" if isinstance(f, dict) else ""
            lines.append(
                CheckLine(
                    arch,
                    True,
                    f"{q['path']}: {q['version'] or 'version unknown'}; "
                    f"/dev/kvm usable: {kvm}{accel}",
                )
            )
        gib = info.free_bytes / 2**30
        lines.append(CheckLine("free disk", gib >= 2, f"{gib:.1f} GiB in {info.lab_dir}"))
        if host.build:
            lines.append(
                CheckLine(
                    "build host",
                    True,
                    "declared; kernels are still built here and shipped "
                    "(remote builds: docs/scaling.md)",
                )
            )
    except TRANSPORT_ERRORS as exc:
        lines.append(CheckLine("connection", False, describe(exc)))
    finally:
        conn.close()
    return lines
