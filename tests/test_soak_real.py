"""Soak test (issue 15): 50 cells of `lab matrix` under random faults, bounded in time.

One run of x86_64/U0 cells (four cheap test cases of a few memfd_secret calls each, and
`flood`, which writes FLOOD_KIB KiB to the console without a newline; 10 repeats each)
on 2 local slots and two loopback SSH lab hosts, while:

- a watcher thread SIGKILLs QEMU processes of the run at random points of their life;
- lab host b dies (its sshd, listener and sessions, SIGKILLed) while it runs a cell;
- lab gets SIGTERM part-way, then `lab matrix --resume RUN` finishes the run (b is
  still dead: the resume finds it unusable and goes on without it).

Then: every planned cell has a cell.json with a verdict; no QEMU or lab process of the
run is left; no cell finished before the SIGTERM is lost or changed by the resume; a
cell whose QEMU was killed before the agent's `done` record is an infra_error whose
evidence names QEMU's death; every other cell (re-queued ones included) has the
outcome and verdict of a clean run of the five distinct cells. One summary line gives
the counts. Random choices come from a seed that is printed; LAB_SOAK_SEED=N replays
them (the faults' timing still depends on the machine).

Why a QEMU killed mid-cell must be infra_error: the lab did not kill it (cell.json
`qemu_killed` is false, `qemu_exit` is 137), so nothing about the kernel under test
can be concluded (classify rule `qemu-signaled`); killed after `done` (while powering
off), the test case's result stands.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import signal
import subprocess
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from realtools import (
    Sshd,
    cmdline,
    comm,
    have_sshd,
    keygen,
    lab,
    lab_popen,
    only_run,
    processes_mentioning,
    run_cells,
    start_pair,
    write_lab,
)

from lab.classify import CLASSES

pytestmark = [
    pytest.mark.real,
    pytest.mark.skipif(not have_sshd(), reason="needs openssh-server and ssh-keygen"),
]

SEED = int(os.environ.get("LAB_SOAK_SEED") or secrets.randbits(32))
CELLS = 50
# Console bytes of one flood cell, none of them a newline. Under TCG (this machine's
# KVM probe fails) the guest's serial port moves about 35 KB/s, so several MiB would take
# minutes per cell; 256 KiB is one line 128 times classify.MAX_TEXT, and the lab keeps
# the whole console (no cap below 64 MiB), so the cell ends as a pass like `quick`.
# LAB_SOAK_FLOOD_KIB sets another size (with KVM, several MiB fit the budget).
FLOOD_KIB = int(os.environ.get("LAB_SOAK_FLOOD_KIB") or 256)
# Four cheap test cases (a few memfd_secret calls each) and the flood: 10 repeats of each
# make the 50 cells, 10 of them floods.
CHEAP = {
    "quick": """
        def run(t):
            size = 4 * lg.PAGE
            fd = lg.memfd_secret()
            os.ftruncate(fd, size)
            m = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            m[:] = b"\\x5a" * size
            t.check(m[:] == b"\\x5a" * size, "read back what was written")
            m.close()
            os.close(fd)
            t.observe("pass")
        """,
    "errno": """
        def run(t):
            fd = lg.memfd_secret()
            t.expect_errno(lambda: os.read(fd, 1), "EINVAL", "read(2) on the fd")
            t.expect_errno(lambda: os.write(fd, b"x"), "EINVAL", "write(2) on the fd")
            t.expect_errno(lambda: lg.memfd_secret(0x1), "EINVAL", "unknown flags")
            os.close(fd)
            t.observe("pass")
        """,
    "cloexec": """
        import fcntl

        def run(t):
            fd = lg.memfd_secret(os.O_CLOEXEC)
            t.check(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC, "FD_CLOEXEC is set")
            os.close(fd)
            t.observe("pass")
        """,
    "resize": """
        def run(t):
            fd = lg.memfd_secret()
            os.ftruncate(fd, lg.PAGE)
            t.check(os.fstat(fd).st_size == lg.PAGE, "ftruncate set the size")
            t.expect_errno(lambda: os.ftruncate(fd, 2 * lg.PAGE), "EINVAL", "a second ftruncate")
            os.close(fd)
            t.observe("pass")
        """,
}
FLOOD = f"""
    def run(t):
        chunk = (b"flood: no newline here; " * 3000)[:65536]
        left = {FLOOD_KIB} << 10
        fd = os.open("/dev/console", os.O_WRONLY | os.O_NOCTTY)
        try:
            while left:
                left -= os.write(fd, chunk[: min(left, len(chunk))])
        finally:
            os.close(fd)
        t.event("flooded the console", kib={FLOOD_KIB})
        t.observe("pass")
    """
HEADER = "import mmap\nimport os\n\nimport labguest as lg\n"
TESTCASES = {**{n: (body, 30) for n, body in CHEAP.items()}, "flood": (FLOOD, 120)}
REPEAT = CELLS // len(TESTCASES)
SELECT = ["-a", "x86_64", "-V", "U0", *(a for t in TESTCASES for a in ("-t", t))]
BUDGET = 330.0  # seconds for the whole faulty run (the clean run comes on top)


@dataclass
class Kill:
    pid: int
    argv: str  # QEMU's command line: names the attempt's directory
    phase: str  # "run" or "resume"


class QemuKiller(threading.Thread):
    """SIGKILLs a random QEMU of the run every few seconds, at a random point of its life,
    at most `budget[phase]` times in each phase (the first run, then the resume)."""

    def __init__(self, root: str, rng: random.Random, budget: dict[str, int]) -> None:
        super().__init__(name="qemu-killer", daemon=True)
        self.root = root
        self.rng = rng
        self.budget = budget
        self.phase = "run"
        self.kills: list[Kill] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.rng.uniform(3.0, 12.0)):
            phase = self.phase
            if sum(k.phase == phase for k in self.kills) >= self.budget[phase]:
                continue
            # The KVM probe is not a cell: killing it would only make the host use TCG.
            victims = [
                p
                for p in processes_mentioning(self.root, "qemu-system")
                if "kvm-probe" not in cmdline(p)
            ]
            if not victims:
                continue
            pid = self.rng.choice(victims)
            argv = cmdline(pid)
            # Boot takes 2-10 s under TCG here, a quick test case a second or two.
            if self.stopped.wait(self.rng.uniform(0.0, 8.0)) or cmdline(pid) != argv:
                continue  # it ended by itself meanwhile
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                self.kills.append(Kill(pid, argv, phase))


def _write_testcases(root: Path) -> Path:
    tcs = root / "testcases"
    tcs.mkdir()
    for name, (body, timeout) in TESTCASES.items():
        meta = {"name": name, "purpose": "soak test", "timeout": timeout, "expect": ["* -> pass"]}
        text = f"TESTCASE = {meta!r}\n{HEADER}" + textwrap.dedent(body)
        (tcs / f"{name}.py").write_text(text)
    return tcs


@pytest.fixture(scope="module")
def soak_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[Sshd]]]:
    root = tmp_path_factory.mktemp("soak")
    key = root / "id_lab"
    keygen(key, "lab-soak-client")
    pair = start_pair(root, key.with_suffix(".pub"))
    try:
        yield write_lab(root, pair, key, testcases=_write_testcases(root)), pair
    finally:
        for s in pair:
            s.stop()


@pytest.fixture(scope="module")
def clean(soak_lab: tuple[Path, list[Sshd]]) -> dict[str, dict[str, object]]:
    """The distinct cells once, locally, without faults: the reference outcomes."""
    cfg, _ = soak_lab
    results = cfg.parent / "clean"
    p = lab("matrix", *SELECT, "-j", "2", "--results", str(results), config=cfg, timeout=300)
    assert p.returncode in (0, 1), p.stderr[-3000:]
    cells = run_cells(only_run(results))
    assert sorted(cells) == sorted(f"x86_64/U0/{t}" for t in TESTCASES)
    return cells


def _finished(results: Path) -> dict[str, bytes]:
    """cell.json bytes of each finished cell, by directory name."""
    out = {}
    for f in results.glob("*/cells/*/cell.json"):
        with contextlib.suppress(OSError):
            out[f.parent.name] = f.read_bytes()
    return out


def _leftovers(root: Path) -> list[str]:
    """Processes of this test's lab (QEMU, lab, host-side labs), not its sshd."""
    return [
        f"{p} {cmdline(p)[:200]}"
        for p in processes_mentioning(str(root))
        if comm(p) != "sshd" and p != os.getpid()
    ]


def _stop(p: subprocess.Popen[str], log: Path) -> str:
    """Kill what is left of a lab_popen(..., log=log) run; its output."""
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    return log.read_text(errors="replace")


def _evidence_text(run: Path, cell: dict[str, object]) -> str:
    ev = json.loads((run / "cells" / str(cell["_dir"]) / "evidence.json").read_text())
    return " | ".join([str(ev.get("detail", ""))] + [str(e["text"]) for e in ev["evidence"]])


def _agent_done(run: Path, cell: dict[str, object]) -> bool:
    """Did the agent's `done` record arrive (the test case had finished)?"""
    f = run / "cells" / str(cell["_dir"]) / "result.jsonl"
    return f.is_file() and '"type":"done"' in f.read_text(errors="replace").replace(" ", "")


def test_soak_faults_end_in_verdicts_and_resume_equals_clean(
    soak_lab: tuple[Path, list[Sshd]], clean: dict[str, dict[str, object]]
) -> None:
    cfg, (_a, b) = soak_lab
    root = cfg.parent
    results = root / "soak"
    rng = random.Random(SEED)
    print(f"\nsoak: seed {SEED} (replay: LAB_SOAK_SEED={SEED})", flush=True)
    host_after = rng.randint(1, 6)  # cells finished before host b may die
    sigterm_after = rng.randint(15, 25)  # cells finished before lab gets SIGTERM
    killer = QemuKiller(str(root), rng, {"run": rng.randint(3, 6), "resume": rng.randint(3, 6)})
    started = time.monotonic()
    deadline = started + BUDGET
    p = lab_popen(
        "matrix", *SELECT, "--repeat", str(REPEAT), "-j", "2", "--hosts", "all",
        "--results", str(results), config=cfg, log=root / "run.log",
    )  # fmt: skip
    killer.start()
    b_dir = str(root / "remote-b")
    b_killed_at = -1
    before_term: dict[str, bytes] = {}
    try:
        while p.poll() is None:
            assert time.monotonic() < deadline, "the faulty run did not reach its SIGTERM"
            done = _finished(results)
            if b_killed_at < 0 and len(done) >= host_after:
                if processes_mentioning(b_dir, "qemu-system"):
                    time.sleep(rng.uniform(0.0, 1.5))  # somewhere in the cell
                    if processes_mentioning(b_dir, "qemu-system"):
                        assert len(b.kill()) >= 2  # listener and sessions: the host is gone
                        b_killed_at = len(done)
                assert len(done) < 40, "no cell ever ran on host b"
            if b_killed_at >= 0 and len(done) >= sigterm_after:
                before_term = done
                os.kill(p.pid, signal.SIGTERM)
                p.wait(timeout=60)
                break
            time.sleep(0.1)
    finally:
        err1 = _stop(p, root / "run.log")
    assert "Traceback" not in err1, err1[-4000:]
    assert p.returncode == 128 + signal.SIGTERM, f"rc {p.returncode}: {err1[-3000:]}"
    assert "lab: host b lost" in err1, err1[-3000:]
    run = only_run(results)
    kept = _finished(results)  # what the interrupted run left: finished cells only
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted" and info["not_run"], info["status"]

    killer.phase = "resume"
    r = lab_popen(
        "matrix", "--resume", str(run), "-j", "2", "--hosts", "all",
        config=cfg, log=root / "resume.log",
    )  # fmt: skip
    overran = False
    try:
        r.wait(timeout=max(30.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        overran = True  # killed below; the checks still say what was done by then
    finally:
        killer.stopped.set()
        err2 = _stop(r, root / "resume.log")
        killer.join(10)
    wall = time.monotonic() - started
    assert "Traceback" not in err2, err2[-4000:]
    assert overran or r.returncode in (0, 1, 2), f"rc {r.returncode}: {err2[-3000:]}"

    # No process of the run is left (host-side labs may need a moment after EOF).
    left = _leftovers(root)
    until = time.monotonic() + 30
    while left and time.monotonic() < until:
        time.sleep(0.5)
        left = _leftovers(root)
    qemu_left = [x for x in left if "qemu-system" in x]

    info = json.loads((run / "run.json").read_text())
    planned = sorted(c["id"] for c in info["cells"])
    final = run_cells(run)
    final_raw = _finished(results)
    lost = [d for d in kept if d not in final_raw]
    changed = [d for d in kept if d in final_raw and final_raw[d] != kept[d]]
    lost_before_term = [d for d in before_term if d not in kept]

    # Which final cells carry a QEMU the watcher killed: match its arguments with the
    # cell's qemu.argv (argv[0] differs: pexpect runs the resolved path). Each attempt's
    # paths differ remotely; a local re-run after the SIGTERM reuses them, but then the
    # cell's QEMU did not die of SIGKILL.
    args_of = {
        rid: (run / "cells" / str(c["_dir"]) / "qemu.argv").read_text().split()[1:]
        for rid, c in final.items()
        if (run / "cells" / str(c["_dir"]) / "qemu.argv").is_file()
    }
    killed: dict[str, Kill] = {}
    for k in killer.kills:
        for rid, args in args_of.items():
            if args == k.argv.split()[1:] and final[rid].get("qemu_exit") == 128 + signal.SIGKILL:
                killed[rid] = k
    absorbed = len(killer.kills) - len(killed)  # attempts discarded (SIGTERM, host lost)

    problems: list[str] = []
    if planned != sorted(final):
        problems.append(f"planned vs finished differ: {sorted(set(planned) ^ set(final))}")
    for rid, c in final.items():
        if c.get("observed") not in CLASSES or c.get("verdict") not in (
            "expected",
            "unexpected",
            "infra",
        ):
            problems.append(f"{rid}: no verdict: {c.get('observed')!r} {c.get('verdict')!r}")
    requeued = {rid for rid, c in final.items() if c.get("requeued_from")}
    killed_mid_test = 0
    for rid, c in sorted(final.items()):
        want = clean[str(c["id"])]
        if rid in requeued and c.get("requeued_from") != ["b"]:
            problems.append(f"{rid}: requeued_from {c.get('requeued_from')}, expected ['b']")
        if rid in killed and not _agent_done(run, c):
            killed_mid_test += 1
            text = _evidence_text(run, c)
            if c["observed"] != "infra_error" or c["verdict"] != "infra":
                problems.append(
                    f"{rid}: QEMU killed (exit {c.get('qemu_exit')}, qemu_killed "
                    f"{c.get('qemu_killed')}) but observed {c['observed']}/{c['verdict']}: {text}"
                )
            elif "SIGKILL" not in text and "status 137" not in text:
                problems.append(
                    f"{rid}: infra_error whose evidence does not name QEMU's death: {text}"
                )
        elif (c["observed"], c["verdict"]) != (want["observed"], want["verdict"]):
            why = (
                f" (QEMU killed after the agent's done record, kill in {killed[rid].phase})"
                if rid in killed
                else ""
            )
            problems.append(
                f"{rid}: {c['observed']}/{c['verdict']} but the clean run has "
                f"{want['observed']}/{want['verdict']}{why}: {_evidence_text(run, c)}"
            )
    if info["status"] != "complete":
        problems.append(f"run.json status {info['status']!r}, not_run {info.get('not_run')}")

    phases = Counter(k.phase for k in killer.kills)
    verdicts = Counter(str(c["verdict"]) for c in final.values())
    outcomes = Counter(str(c["observed"]) for c in final.values())
    hosts = Counter(str(c.get("lab_host", "local")) for c in final.values())
    print(
        f"soak: seed={SEED} cells={len(final)}/{len(planned)} | faults: "
        f"qemu_killed={len(killer.kills)} (run {phases['run']}, resume {phases['resume']}; "
        f"final cells {len(killed)}, mid-test "
        f"{killed_mid_test}, attempts discarded {absorbed}), "
        f"flood={sum(1 for c in final.values() if c['testcase'] == 'flood')}x{FLOOD_KIB}KiB, "
        f"host_lost=1 (after {b_killed_at} cells; requeued {len(requeued)}), "
        f"sigterm=1 (after {len(before_term)} cells, kept {len(kept)}) | "
        f"verdicts: {dict(sorted(verdicts.items()))} outcomes: {dict(sorted(outcomes.items()))} "
        f"where: {dict(sorted(hosts.items()))} | qemu_left={len(qemu_left)} "
        f"procs_left={len(left)} cells_lost={len(lost) + len(lost_before_term)} "
        f"changed={len(changed)} | wall={wall:.0f}s",
        flush=True,
    )
    for line in problems:
        print(f"soak: problem: {line}", flush=True)
    assert not overran, f"the resumed run overran the soak budget of {BUDGET:.0f}s"
    assert not left, left
    assert not lost and not lost_before_term and not changed, (lost, lost_before_term, changed)
    assert not problems, "\n".join(problems)
    assert wall < BUDGET + 30, f"the soak run took {wall:.0f}s"
