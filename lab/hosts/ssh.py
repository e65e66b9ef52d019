"""SSH lab hosts, controller side: RemoteWorker runs cells on a host (connect, transfer, check).

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
import json
import os
import secrets
import shlex
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from lab import cache, results
from lab.config import LabConfig
from lab.config.hosts import Host
from lab.errors import InfraError, LabError, printable
from lab.hosts import remote
from lab.hosts.connect import (
    BOOTSTRAP,
    CELL_SLACK,
    CONNECT_TIMEOUT,
    TRANSPORT_ERRORS,
    _Heartbeat,
    _tail,
    _where,
    connect,
    describe,
    run,
)
from lab.hosts.transfer import (
    Hello,
    _sftp_makedirs,
    ensure_bundle,
    exit_problem,
    hello,
    pump,
    qemu_binaries,
    result_problem,
    store_cell,
)
from lab.run import matrix
from lab.run.job import CellJob, Inputs, prepare_cell
from lab.run.workers import HostDown

# --- running cells on a host ------------------------------------------------------------


class RemoteWorker:
    """One SSH lab host as a Worker: `slots` cells at once, one connection each."""

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

    def summary(self) -> dict[str, Any]:
        """The cells the host finished and, if it was lost, why (run.json `hosts`)."""
        return {"cells": self.cells, **({"status": f"lost: {self._lost}"} if self._lost else {})}

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
        inputs: Inputs,
        directory: Path,
        requeued_from: tuple[str, ...],
    ) -> results.CellResult:
        if self._lost:
            raise HostDown(self.name, self._lost, ran=False)
        job, files = prepare_cell(self.cfg, p.cell, inputs, p.id, p.repeat)
        kernel, base = inputs.kernel, inputs.base
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
            except HostDown as exc:
                self._mark_lost(exc.reason)
                raise
            except LabError:
                raise
            except TRANSPORT_ERRORS as exc:
                reason = self._reason(exc)
                self._mark_lost(reason)
                raise HostDown(self.name, reason) from None
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
            failure: LabError = HostDown(
                self.name, self._reason(None) or "the connection closed while the cell ran"
            )
        else:
            failure = exit_problem(self.name, status, err)
        if isinstance(failure, HostDown):
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
                    raise HostDown(self.name, str(exc).split(": ", 1)[-1]) from None
                self._track(conn)
            self._local.conn = conn
        if conn.transport is None or not conn.transport.is_active():
            raise HostDown(self.name, self._reason(None) or "the connection closed")
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

    def _budget(self, job: CellJob) -> float:
        b = job.boot
        return float(
            b.ready_timeout
            + b.shutdown_timeout
            + b.kvm_probe_timeout
            + job.test_timeout
            + CELL_SLACK
        )

    def _exec(
        self,
        conn: Any,
        job: CellJob,
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
