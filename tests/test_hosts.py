"""SSH lab hosts against real OpenSSH servers on 127.0.0.1 (no mocks).

Two sshd run from a throwaway sshd_config each (own host keys, a throwaway client key
in AuthorizedKeysFile, no passwords, no PAM), in their own process groups, killed at
teardown. Fast tier: [[hosts]] parsing, `lab hosts check`, the lab bundle uploaded
once, a changed host key refused, remote commands quoted. Real tier (boots QEMU): a
matrix over local + two hosts equals the local-only run; killing one sshd mid-run
re-queues its cells, each cell appears once, and no QEMU is left behind.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import realtools
from realtools import Sshd, have_sshd
from realtools import cmdline as _cmdline
from realtools import comm as _comm
from realtools import free_port as _free_port
from realtools import keygen as _keygen
from realtools import only_run as _run_dir
from realtools import proc_tree as _proc_tree
from realtools import processes_mentioning as _processes_mentioning
from realtools import run_cells as _cells
from realtools import start_pair as _start_pair

from lab import cache, classify, results
from lab.config import LabConfig, hosts, load
from lab.errors import LabError
from lab.hosts import bundle, ssh
from lab.hosts import connect as hosts_connect
from lab.hosts import transfer as hosts_transfer
from lab.run import matrix, testcase
from lab.run.job import Artifacts
from lab.run.matrix import Planned
from lab.run.schedule import schedule
from lab.run.workers import HostDown, Stop

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not have_sshd(), reason="needs openssh-server and ssh-keygen")


# --- real sshd fixtures (helpers in realtools) -------------------------------------------


@pytest.fixture(scope="module")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("client") / "id_lab"
    _keygen(key, "lab-test-client")
    return key


@pytest.fixture(scope="module")
def sshds(tmp_path_factory: pytest.TempPathFactory, client_key: Path) -> Iterator[list[Sshd]]:
    pair = _start_pair(tmp_path_factory.mktemp("sshd"), client_key.with_suffix(".pub"))
    yield pair
    for s in pair:
        s.stop()


# --- lab.toml for the tests --------------------------------------------------------------

# A development family next to the repo's variants (LAB_HOSTS_VARIANTS=hostsdev-*):
# dev.config.j2 flips one symbol and no patch applies, so its kernels build quickly.
DEV_FAMILY = """
[variants.hostsdev]
name = "hostsdev-cpa{{ cpa }}"
configs = ["dev.config.j2"]
cmdline = "secretmem.enable=1"
[variants.hostsdev.axes]
cpa = ["y", "n"]
"""
# Which variants the real tests run (globs): by default those of the PR smoke matrix
# (ci/smoke.yml), whose kernels the real tier builds anyway.
VARIANTS = os.environ.get("LAB_HOSTS_VARIANTS", "U0,C1")


# The repo's lab.toml (absolute kernels/images/testcases dirs), the family, [[hosts]] a and b.
write_lab = functools.partial(realtools.write_lab, extra=DEV_FAMILY)


def lab(config: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lab", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.startswith("lab:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def host_section(out: str, name: str) -> str:
    m = re.search(rf"^host {name} \(.*?(?=^host |\Z)", out, re.S | re.M)
    assert m, out
    return m.group(0)


# --- fast: configuration ------------------------------------------------------------------


def test_hosts_parse_defaults_and_paths(tmp_path: Path) -> None:
    f = tmp_path / "lab.toml"
    raw = [{"name": "big", "address": "lab1.example.org", "key_file": "keys/id"}]
    (h,) = hosts.parse(raw, f, ["x86_64", "arm64"])
    assert h.port == 22 and h.capacity == 1 and h.arches == () and not h.build
    assert h.host_key_policy == "strict" and h.lab_dir == "~/.cache/lab-remote"
    assert h.python == "python3" and h.user == getpass.getuser()
    assert h.key_file == tmp_path / "keys" / "id"
    assert h.known_hosts == Path.home() / ".ssh" / "known_hosts"
    assert h.serves("arm64") and h.known_hosts_name == "lab1.example.org"
    (h2,) = hosts.parse([{**raw[0], "port": 2222, "arches": ["arm64"]}], f, ["x86_64", "arm64"])
    assert h2.known_hosts_name == "[lab1.example.org]:2222"
    assert h2.serves("arm64") and not h2.serves("x86_64")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"adress": "x"}, "[hosts[0]]: unknown key 'adress'; valid keys here: address, arches,"),
        (
            {"host_key_policy": "yolo"},
            "hosts[0].host_key_policy: 'yolo' is not valid; choose one of: strict, accept-new",
        ),
        ({"arches": ["riscv"]}, "hosts[0].arches: unknown arch 'riscv'; valid: x86_64, arm64"),
        ({"capacity": 0}, "hosts[0].capacity: 0 is too small; must be >= 1"),
        ({"port": 70000}, "hosts[0].port: 70000 is too large"),
        ({"name": "local"}, "hosts[0].name: 'local' is reserved"),
        ({"build": "yes"}, "hosts[0].build: expected true or false, got a string"),
    ],
)
def test_hosts_parse_errors(tmp_path: Path, entry: dict[str, object], message: str) -> None:
    base = {"name": "a", "address": "127.0.0.1", "key_file": "/k"}
    with pytest.raises(LabError) as exc:
        hosts.parse([{**base, **entry}], tmp_path / "lab.toml", ["x86_64", "arm64"])
    assert str(exc.value).startswith(f"{tmp_path / 'lab.toml'}: ")
    assert message in str(exc.value)


def test_hosts_parse_duplicates_and_selection(tmp_path: Path) -> None:
    f = tmp_path / "lab.toml"
    one = {"name": "a", "address": "h", "key_file": "/k"}
    with pytest.raises(LabError, match="duplicate host name 'a'"):
        hosts.parse([one, one], f)
    hs = hosts.parse([one, {**one, "name": "b"}], f)
    assert [h.name for h in hosts.select(hs, "all", f)] == ["a", "b"]
    assert [h.name for h in hosts.select(hs, "b,a,b", f)] == ["b", "a"]
    with pytest.raises(LabError, match=r"unknown host 'c'; valid: all, a, b"):
        hosts.select(hs, "a,c", f)


def test_cli_errors_are_one_line(tmp_path: Path, sshds: list[Sshd], client_key: Path) -> None:
    f = write_lab(tmp_path, sshds, client_key, a={"adress": "x"})
    msg = one_line_error(lab(f, "hosts", "check"))
    assert "[hosts[0]]: unknown key 'adress'" in msg
    f = write_lab(tmp_path, sshds, client_key)
    msg = one_line_error(lab(f, "matrix", "-t", "api", "--hosts", "a,nosuch"))
    assert "unknown host 'nosuch'; valid: all, a, b" in msg
    f = write_lab(tmp_path, sshds, client_key, a={"key_file": str(tmp_path / "nokey")})
    out = lab(f, "hosts", "check", "--hosts", "a")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"key_file {tmp_path / 'nokey'}: missing or unreadable" in out.stdout


# --- fast: against the two sshd ----------------------------------------------------------


def test_hosts_check_reports_each_host(tmp_path: Path, sshds: list[Sshd], client_key: Path) -> None:
    f = write_lab(tmp_path, sshds, client_key, a={"arches": ["x86_64"], "capacity": 2})
    out = lab(f, "hosts", "check")
    assert out.returncode == 0, out.stdout + out.stderr
    a, b = host_section(out.stdout, "a"), host_section(out.stdout, "b")
    assert "capacity 2; arches x86_64" in a and "arches all" in b
    for sec in (a, b):
        assert "FAIL" not in sec, sec
        assert re.search(r"ok\s+reachable\s+yes \(.*ssh-ed25519 host key SHA256:", sec), sec
        assert re.search(r"ok\s+python\s+3\.1[1-9]", sec), sec
        assert re.search(r"ok\s+lab bundle\s+uploaded now: lab ", sec), sec
        assert re.search(r"ok\s+x86_64\s+/\S+qemu-system-x86_64: QEMU emulator version", sec)
        assert "/dev/kvm usable: " in sec and "accel " in sec
        assert re.search(r"ok\s+free disk\s+[0-9.]+ GiB in " + re.escape(str(tmp_path)), sec)
    assert "arm64" not in a  # not served: not checked
    assert re.search(r"ok\s+arm64\s+/\S+qemu-system-aarch64: .*accel tcg: guest arm64", b)


def test_bundle_uploaded_once_then_skipped(
    tmp_path: Path, sshds: list[Sshd], client_key: Path
) -> None:
    f = write_lab(tmp_path, sshds, client_key)
    (h, _) = hosts.parse(load(f).extra["hosts"], f)
    conn = hosts_connect.connect(h)
    try:
        info = hosts_transfer.hello(conn, h, [])
        assert info.lab_dir == str(tmp_path / "remote-a")
        assert not hosts_transfer.bundle_present(conn, h, info.lab_dir)
        where, uploaded = hosts_transfer.ensure_bundle(conn, h, info.lab_dir)
        assert uploaded and where == f"{info.lab_dir}/bundles/{bundle.build().digest}"
        marker = Path(where) / bundle.MANIFEST
        stamp = marker.stat().st_mtime_ns
        assert hosts_transfer.ensure_bundle(conn, h, info.lab_dir) == (where, False)
        assert marker.stat().st_mtime_ns == stamp  # not rewritten
        # Only the finished directory is left: no temporary names.
        assert sorted(p.name for p in (Path(info.lab_dir) / "bundles").iterdir()) == [
            bundle.build().digest
        ]
    finally:
        conn.close()
    out = lab(f, "hosts", "check", "--hosts", "a")
    assert re.search(r"ok\s+lab bundle\s+present: ", out.stdout), out.stdout
    # What the host runs imports neither rich nor fabric; the bundle alone suffices
    # (python -S: no site-packages at all).
    probe = subprocess.run(
        ["env", "-i", f"PYTHONPATH={where}", "/usr/bin/python3", "-S", "-c",
         "import sys, lab.hosts.remote, lab.run.execute; "
         "print(sorted({m.split('.')[0] for m in sys.modules} & "
         "{'rich', 'fabric', 'paramiko', 'pexpect', 'jinja2'}))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert probe.stdout.strip() == "['jinja2', 'pexpect']"


def test_changed_host_key_is_refused(tmp_path: Path, sshds: list[Sshd], client_key: Path) -> None:
    a, b = sshds
    _keygen(tmp_path / "impostor", "impostor")
    old = " ".join((tmp_path / "impostor.pub").read_text().split()[:2])
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{a.port} {old}\n" + b.known_hosts_line)
    for policy in ("strict", "accept-new"):
        f = write_lab(tmp_path, sshds, client_key, known_hosts=kh, a={"host_key_policy": policy})
        out = lab(f, "hosts", "check")
        assert out.returncode == 2
        sec = host_section(out.stdout, "a")
        lines = [x for x in sec.splitlines() if "FAIL" in x]
        assert len(lines) == 1, sec
        line = lines[0]
        assert f"host a (root@127.0.0.1:{a.port})" in line or "host a (" in line
        assert "REFUSED: its ssh-ed25519 host key has CHANGED" in line
        assert f"ssh-keygen -f {kh} -R '[127.0.0.1]:{a.port}'" in line
        assert "FAIL" not in host_section(out.stdout, "b")
        assert kh.read_text().count(f"[127.0.0.1]:{a.port}") == 1  # nothing added
    # A matrix run drops the host with the same one line, and goes on without it.
    with pytest.raises(LabError, match="host key has CHANGED"):
        ssh.open_worker(load(f), hosts.parse(load(f).extra["hosts"], f)[0], lambda _m: None)


def test_unknown_host_key_strict_or_accept_new(
    tmp_path: Path, sshds: list[Sshd], client_key: Path
) -> None:
    a, _b = sshds
    kh = tmp_path / "kh" / "known_hosts"
    f = write_lab(tmp_path, sshds, client_key, known_hosts=kh)
    out = lab(f, "hosts", "check", "--hosts", "a")
    assert out.returncode == 2
    assert f'is not in {kh} and host_key_policy is "strict"' in out.stdout
    assert not kh.exists()
    f = write_lab(tmp_path, sshds, client_key, known_hosts=kh, a={"host_key_policy": "accept-new"})
    out = lab(f, "hosts", "check", "--hosts", "a", "--no-upload")
    assert out.returncode == 0, out.stdout
    assert re.search(r"ok\s+lab bundle\s+absent .*uploaded on first use", out.stdout)
    assert kh.read_text().split() == a.known_hosts_line.split()
    out = lab(f, "hosts", "check", "--hosts", "a", "--no-upload")  # now known: no new line
    assert out.returncode == 0 and kh.read_text().count("\n") == 1


def test_connection_errors_name_host_and_cause(
    tmp_path: Path, sshds: list[Sshd], client_key: Path
) -> None:
    stranger = tmp_path / "stranger"
    _keygen(stranger, "not authorized")
    locked = tmp_path / "locked"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", str(locked)], check=True
    )
    f = write_lab(
        tmp_path,
        sshds,
        client_key,
        a={"key_file": str(stranger)},
        b={"key_file": str(locked)},
    )
    text = f.read_text() + textwrap.dedent(f"""
        [[hosts]]
        name = "c"
        address = "127.0.0.1"
        port = {_free_port()}
        key_file = "{client_key}"
        """)
    f.write_text(text)
    out = lab(f, "hosts", "check")
    assert out.returncode == 2 and "Traceback" not in out.stdout + out.stderr
    a, b, c = (host_section(out.stdout, n) for n in "abc")
    assert f"key authentication failed: the server did not accept key_file {stranger}" in a
    assert f"key_file {locked} is passphrase-protected" in b
    assert "cannot connect: connection refused" in c
    for sec in (a, b, c):
        assert len(sec.strip().splitlines()) == 2, sec  # the header and one FAIL line
    assert "secret" not in out.stdout + out.stderr


def test_silent_host_is_detected_by_heartbeat(
    tmp_path: Path, sshds: list[Sshd], client_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host that stops answering without closing TCP (a partition, a hung machine):
    unanswered keepalives close the connection, so in-flight cells fail over."""
    monkeypatch.setattr(hosts_connect, "HEARTBEAT", 0.3)
    monkeypatch.setattr(hosts_connect, "DEAD_AFTER", 1.5)
    a = sshds[0]
    f = write_lab(tmp_path, sshds, client_key)
    conn = hosts_connect.connect(hosts.parse(load(f).extra["hosts"], f)[0])
    beat = hosts_connect._Heartbeat(conn)
    beat.start()
    assert a.proc is not None
    frozen: list[int] = []
    try:
        time.sleep(1.0)
        assert not beat.dead and conn.transport.is_active()  # answers while it runs
        # Sessions of earlier tests may be exiting right now: skip those that are gone.
        frozen = [p for p in _proc_tree(a.proc.pid) if _comm(p) == "sshd"]
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        beat.join(10)
        assert beat.dead == "no answer to SSH keepalives for 2s"
        assert not conn.transport.is_active()
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        beat.stopped.set()
        conn.close()


def test_remote_commands_are_quoted(tmp_path: Path, sshds: list[Sshd], client_key: Path) -> None:
    """lab.toml values reach the host as single arguments, never as shell syntax."""
    evil = tmp_path / "dir with space;$(touch PWNED-1)'`touch PWNED-2`"
    f = write_lab(
        tmp_path,
        sshds,
        client_key,
        a={"lab_dir": str(evil)},
        b={"python": 'python3 -c \'open("PWNED-3", "w")\''},
    )
    out = lab(f, "hosts", "check")
    a_out, b_out = host_section(out.stdout, "a"), host_section(out.stdout, "b")
    assert "FAIL" not in a_out, a_out
    assert (evil / "bundles").is_dir()  # the literal directory name
    assert 'cannot run python "python3 -c \'open(\\"PWNED-3\\"' in b_out or (
        "cannot run python" in b_out and "status 127" in b_out
    ), b_out
    home = Path.home()
    for n in (1, 2, 3):
        for where in (home, tmp_path, REPO):
            assert not (where / f"PWNED-{n}").exists()


# --- fast: the scheduler's fault rules (in-process workers; no QEMU, no SSH) ----------


@dataclass
class FakeWorker:
    """A Worker that either finishes cells at once or loses its host on the first."""

    name: str
    arches: tuple[str, ...] = ("x86_64", "arm64")
    fail: bool = False
    slots: int = 1
    ran: list[str] = field(default_factory=list)
    gone: str = ""

    def serves(self, arch: str) -> bool:
        return arch in self.arches

    def lost(self) -> str:
        return self.gone

    def abort(self) -> None:
        pass

    def run(
        self, p: Planned, inputs: object, d: Path, tried: tuple[str, ...]
    ) -> results.CellResult:
        if self.gone:
            raise HostDown(self.name, self.gone, ran=False)
        self.ran.append(p.id)
        if self.fail:
            time.sleep(0.1)
            self.gone = "connection closed"
            raise HostDown(self.name, self.gone)
        d.mkdir(parents=True)
        cache.write_json(d / "evidence.json", {"detail": "fake"})
        record = {"id": p.cell.id, "run_cell_id": p.id, "observed": "pass", "verdict": "expected"}
        extra = {"requeued_from": list(tried)} if tried else {}
        cache.write_json(d / "cell.json", {**record, "lab_host": self.name, **extra})
        return results.CellResult.from_dir(d)


def _plan(arches: list[str], repeat: int) -> tuple[LabConfig, list[Planned]]:
    cfg = load(REPO / "lab.toml")
    tcs = testcase.discover(cfg.testcases_dir, classify.CLASSES)
    cells = matrix.plan(
        cfg, tcs, matrix.MatrixSpec(), [cfg.variants[0].name], arches, ["api"], repeat
    )
    return cfg, cells


def _schedule(
    tmp: Path, cfg: LabConfig, cells: list[Planned], workers: list[FakeWorker]
) -> tuple[dict[str, dict[str, object]], list[str]]:
    done: list[str] = []
    schedule(
        cfg,
        cells,
        tmp,
        Artifacts({c.kernel: None for c in cells}, {c.cell.arch.name: None for c in cells}),  # type: ignore[misc]
        workers,
        Stop(),
        on_done=lambda p, _r, _e: done.append(p.id),
    )
    # Each planned cell exactly once, in its own directory, and nothing else.
    assert sorted(done) == sorted(c.id for c in cells)
    assert sorted(p.name for p in (tmp / "cells").iterdir()) == sorted(c.dirname for c in cells)
    return _cells(tmp), done


def test_lost_host_cells_are_requeued_once(tmp_path: Path) -> None:
    cfg, cells = _plan([], repeat=3)
    bad, good = FakeWorker("bad", fail=True, slots=2), FakeWorker("good")
    got, _ = _schedule(tmp_path, cfg, cells, [bad, good])
    assert 1 <= len(bad.ran) <= 2  # its slots took a cell each at most; then it was gone
    for rid, c in got.items():
        assert c["observed"] == "pass" and c["lab_host"] == "good", rid
        assert c.get("requeued_from") == (["bad"] if rid in bad.ran else None), rid


def test_second_loss_is_an_infra_error_naming_the_host(tmp_path: Path) -> None:
    cfg, cells = _plan(["x86_64"], repeat=1)
    b1, b2 = FakeWorker("b1", ("x86_64",), fail=True), FakeWorker("b2", ("x86_64",), fail=True)
    got, _ = _schedule(tmp_path, cfg, cells, [b1, b2, FakeWorker("arm", ("arm64",))])
    (c,) = got.values()
    first, second = (b1, b2) if b1.ran == [c["run_cell_id"]] and len(b2.ran) else (b2, b1)
    assert c["observed"] == "infra_error" and c["verdict"] == "infra"
    assert c["lab_host"] == second.name and c["requeued_from"] == [first.name]
    assert f"lab host {second.name}: connection closed" in str(c["detail"])
    assert f"re-queued from {first.name}" in str(c["detail"])


def test_cell_nobody_can_serve_any_more(tmp_path: Path) -> None:
    cfg, cells = _plan(["x86_64"], repeat=1)
    bad = FakeWorker("bad", ("x86_64",), fail=True)
    got, _ = _schedule(tmp_path, cfg, cells, [bad, FakeWorker("arm", ("arm64",))])
    (c,) = got.values()
    assert c["observed"] == "infra_error" and c["requeued_from"] == ["bad"]
    assert "no usable worker left for x86_64 cells (bad: connection closed)" in str(c["detail"])


# --- real: matrices over the hosts ----------------------------------------------------------


def _files(run: Path, cell: dict[str, object]) -> list[str]:
    # kvm-probe.result: left by the KVM probe in whichever cell probed first on a
    # machine (each lab host probes once for itself), locally as well as remotely.
    d = run / "cells" / str(cell["_dir"])
    return sorted(p.name for p in d.iterdir() if p.name != "kvm-probe.result")


@pytest.mark.real
def test_matrix_over_hosts_matches_local(
    tmp_path: Path, sshds: list[Sshd], client_key: Path
) -> None:
    from lab import report

    # b runs the system python3 (no pexpect, jinja2, ... installed): the bundle suffices.
    f = write_lab(
        tmp_path, sshds, client_key, a={"arches": ["x86_64"]}, b={"python": "/usr/bin/python3"}
    )
    select = ["-V", VARIANTS, "-t", "api,memlock"]
    local = lab(f, "matrix", *select, "-j", "2", "--results", str(tmp_path / "local"), timeout=3600)
    assert local.returncode in (0, 1), local.stderr[-3000:]
    spread = lab(
        f, "matrix", *select, "-j", "1", "--hosts", "all", "--results",
        str(tmp_path / "spread"), timeout=3600,
    )  # fmt: skip
    assert spread.returncode == local.returncode, spread.stderr[-3000:]
    a_run, b_run = _run_dir(tmp_path / "local"), _run_dir(tmp_path / "spread")
    assert report.compare(a_run, b_run) == []
    la, sb = _cells(a_run), _cells(b_run)
    assert set(la) == set(sb) and len(la) >= 4
    for rid, cell in la.items():
        other = sb[rid]
        assert (cell["observed"], cell["verdict"]) == (other["observed"], other["verdict"]), rid
        assert "lab_host" not in cell and "requeued_from" not in other
        assert _files(a_run, cell) == _files(b_run, other), rid
        assert set(other) - set(cell) <= {"lab_host"}, rid
    where = {rid: c.get("lab_host", "local") for rid, c in sb.items()}
    assert {"a", "b"} <= set(where.values()), where
    assert all(rid.startswith("x86_64/") for rid, h in where.items() if h == "a"), where
    run = json.loads((b_run / "run.json").read_text())
    assert {n: h["status"] for n, h in run["hosts"].items()} == {"a": "ok", "b": "ok"}
    assert not (b_run / ".staging").exists()


@pytest.mark.real
def test_host_lost_mid_run(tmp_path: Path, client_key: Path) -> None:
    pair = _start_pair(tmp_path, client_key.with_suffix(".pub"))
    _a, b = pair
    try:
        f = write_lab(tmp_path, pair, client_key, b={"capacity": 2})
        b_dir = str(tmp_path / "remote-b")
        run = subprocess.Popen(
            [sys.executable, "-m", "lab", "--config", str(f), "matrix", "-V", VARIANTS,
             "-t", "api,memlock", "-j", "1", "--hosts", "all",
             "--results", str(tmp_path / "res")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        )  # fmt: skip
        deadline = time.monotonic() + 600
        while not _processes_mentioning(b_dir, "qemu-system"):
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "no cell ever ran on host b"
            time.sleep(0.05)
        killed = b.kill()  # listener and session processes: the host is gone
        assert len(killed) >= 2
        _out, stderr = run.communicate(timeout=3600)
        assert run.returncode in (0, 1), stderr[-4000:]
        assert "Traceback" not in stderr
        assert "lab: host b lost" in stderr, stderr[-4000:]
        rd = _run_dir(tmp_path / "res")
        planned = json.loads((rd / "run.json").read_text())["cells"]
        cells = _cells(rd)
        # Each planned cell exactly once, in the directory the plan names; nothing else.
        assert sorted(p["id"] for p in planned) == sorted(cells)
        assert sorted(Path(p["dir"]).name for p in planned) == sorted(
            p.name for p in (rd / "cells").iterdir()
        )
        assert not (rd / ".staging").exists()
        requeued = {rid: c for rid, c in cells.items() if c.get("requeued_from")}
        assert requeued, "the cells in flight on b were not re-queued"
        for rid, c in requeued.items():
            assert c["requeued_from"] == ["b"], rid
            assert c.get("lab_host", "local") in ("local", "a"), rid
            assert c["observed"] != "infra_error", rid
        status = json.loads((rd / "run.json").read_text())["hosts"]
        assert status["a"]["status"] == "ok" and status["b"]["status"].startswith("lost: ")
        # The host-side labs saw their channels close and killed their QEMU.
        deadline = time.monotonic() + 30
        while _processes_mentioning(str(tmp_path), "qemu-system") or _processes_mentioning(b_dir):
            assert time.monotonic() < deadline, [
                _cmdline(p) for p in _processes_mentioning(str(tmp_path))
            ]
            time.sleep(0.2)
    finally:
        for s in pair:
            s.stop()
