"""Helpers for the real tier: run the lab CLI, inspect the process table, derive a
lab.toml, and run throwaway OpenSSH servers on 127.0.0.1 as lab hosts."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SSHD = Path("/usr/sbin/sshd")


def lab(
    *args: str, config: Path | None = None, timeout: float = 1800, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "lab", "--config", str(config or REPO / "lab.toml"), *args]
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def lab_popen(
    *args: str, config: Path | None = None, log: Path | None = None
) -> subprocess.Popen[str]:
    """`lab ARGS` in the background, in its own session (so a test can kill its group).

    Output goes to pipes, or to `log` (stdout and stderr) for a long run that nobody
    reads while it goes: a full pipe would block the lab."""
    out = open(log, "w") if log else None  # noqa: SIM115 - the child holds it
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "lab", "--config", str(config or REPO / "lab.toml"), *args],
            cwd=REPO,
            stdout=out or subprocess.PIPE,
            stderr=subprocess.STDOUT if out else subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    finally:
        if out:
            out.close()


def only_run(results: Path) -> Path:
    """The one run directory under a results directory."""
    (run,) = [p for p in results.iterdir() if (p / "run.json").is_file()]
    return run


def run_cells(run: Path) -> dict[str, dict[str, object]]:
    """cell.json of each finished cell by run cell id (plus `_dir`, its directory name)."""
    out = {}
    for d in sorted((run / "cells").iterdir()):
        data = json.loads((d / "cell.json").read_text())
        out[str(data["run_cell_id"])] = {**data, "_dir": d.name}
    return out


def lab_toml_text(testcases: Path | None = None) -> str:
    """The repo's lab.toml with absolute kernels/images dirs, so that a copy elsewhere
    loads the same kernels; `testcases`: another test case directory."""
    return (
        (REPO / "lab.toml")
        .read_text()
        .replace(
            "[lab]\n",
            "[lab]\n"
            f'kernels_dir = "{REPO}/kernels"\n'
            f'images_dir = "{REPO}/images"\n'
            f'testcases_dir = "{testcases or REPO / "testcases"}"\n',
            1,
        )
    )


def children(pid: int) -> list[int]:
    """Direct children of pid, from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def proc_tree(root: int) -> list[int]:
    """root and its descendants, from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += [c for c, p in parents.items() if p == pid]
    return out


def processes_mentioning(text: str, program: str = "") -> list[int]:
    """Processes whose command line contains text (and whose program name starts with
    `program`: pexpect starts QEMU as /usr/bin/qemu-system-...)."""
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == os.getpid():
            continue
        c = cmdline(int(p))
        if text in c and os.path.basename(c.split(" ", 1)[0]).startswith(program):
            out.append(int(p))
    return out


def qemu_processes() -> list[int]:
    return [
        int(p)
        for p in os.listdir("/proc")
        if p.isdigit() and cmdline(int(p)).startswith("qemu-system")
    ]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# --- throwaway OpenSSH servers as lab hosts ------------------------------------------------


def have_sshd() -> bool:
    return SSHD.exists() and shutil.which("ssh-keygen") is not None


def keygen(path: Path, comment: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sshd:
    name: str
    dir: Path
    port: int
    host_pub: str  # "ssh-ed25519 AAAA..." (no comment)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_pub}\n"

    def start(self) -> None:
        log = open(self.dir / "sshd.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(self.dir / "sshd_config")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"sshd {self.name} exited: {(self.dir / 'sshd.log').read_text()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"sshd {self.name} did not listen on {self.port}")

    def kill(self) -> list[int]:
        """SIGKILL the listener and every sshd session process under it (a host gone)."""
        if self.proc is None:
            return []
        victims = [p for p in proc_tree(self.proc.pid) if comm(p) == "sshd"]
        for pid in victims:  # the listener first: no new connections
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        return victims

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        elif self.proc is not None:
            for pid in [p for p in proc_tree(self.proc.pid) if comm(p) == "sshd"]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def start_pair(root: Path, client_pub: Path) -> list[Sshd]:
    """Two sshd (a, b) on free loopback ports, each with its own host key and config."""
    # sshd refuses to start without its privilege separation directory.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    out = []
    for name in ("a", "b"):
        d = root / f"sshd-{name}"
        d.mkdir()
        keygen(d / "ssh_host_ed25519_key", f"lab-test-host-{name}")
        shutil.copy(client_pub, d / "authorized_keys")
        port = free_port()
        (d / "sshd_config").write_text(
            textwrap.dedent(f"""\
            Port {port}
            ListenAddress 127.0.0.1
            HostKey {d}/ssh_host_ed25519_key
            PidFile {d}/sshd.pid
            AuthorizedKeysFile {d}/authorized_keys
            PermitRootLogin prohibit-password
            PubkeyAuthentication yes
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            UsePAM no
            StrictModes no
            AllowAgentForwarding no
            AllowTcpForwarding no
            X11Forwarding no
            PrintMotd no
            MaxStartups 64
            MaxSessions 32
            ClientAliveInterval 5
            Subsystem sftp internal-sftp
            """)
        )
        pub = (d / "ssh_host_ed25519_key.pub").read_text().split()
        s = Sshd(name, d, port, f"{pub[0]} {pub[1]}")
        s.start()
        out.append(s)
    return out


def write_lab(
    tmp: Path,
    servers: list[Sshd],
    client_key: Path,
    known_hosts: Path | None = None,
    testcases: Path | None = None,
    extra: str = "",
    **per_host: dict[str, object],
) -> Path:
    """lab_toml_text(testcases) + `extra` + a [[hosts]] entry per server, as tmp/lab.toml."""
    text = lab_toml_text(testcases) + extra
    if known_hosts is None:
        known_hosts = tmp / "known_hosts"
        known_hosts.write_text("".join(s.known_hosts_line for s in servers))
    for s in servers:
        entry: dict[str, object] = {
            "name": s.name,
            "address": "127.0.0.1",
            "port": s.port,
            "user": getpass.getuser(),
            "key_file": str(client_key),
            "known_hosts": str(known_hosts),
            "lab_dir": str(tmp / f"remote-{s.name}"),
            **per_host.get(s.name, {}),
        }
        text += "\n[[hosts]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in entry.items())
    f = tmp / "lab.toml"
    f.write_text(text)
    return f
