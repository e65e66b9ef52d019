"""Connecting to a lab host: host-key policies, connect, the heartbeat, running a command."""

from __future__ import annotations

import errno
import fcntl
import os
import shlex
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fabric
import invoke.exceptions
import paramiko

from lab.config.hosts import Host
from lab.errors import LabError, UserError, printable

CONNECT_TIMEOUT = 10  # seconds for TCP connect, SSH banner and authentication each
KEEPALIVE = 5  # seconds between SSH keepalives on a connection
HEARTBEAT = 10  # seconds between checks that the host still answers
DEAD_AFTER = 30.0  # a keepalive unanswered this long: the connection is dead
MIN_PYTHON = (3, 11)
CELL_SLACK = 120.0  # seconds beyond a cell's own deadlines (initrd, upload of results)

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
