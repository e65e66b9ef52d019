"""The guest library and agent, run on the host: roles, harness protection, preconditions.

lab/guest/labguest.py and lab/guest/agent.py are plain Python (stdlib only), so their
task, record and precondition machinery runs here for real: real forks, real
/proc/PID/oom_score_adj, records read back from a real pipe. Only what needs the
guest (memfd_secret, the virtio port, /dev/kmsg) is left out.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.guest import agent
from lab.guest import labguest as lg

CAP_SYS_RESOURCE = 24


def _has_cap(bit: int) -> bool:
    with open("/proc/self/status") as f:
        eff = next(line.split()[1] for line in f if line.startswith("CapEff:"))
    return bool(int(eff, 16) >> bit & 1)


# Lowering oom_score_adj below the inherited value needs CAP_SYS_RESOURCE (which the
# guest's root has; a container's root may not); raising it does not. With the
# capability the harness gets the real -1000; without, a higher value still shows that
# a workload task sets its own value instead of inheriting the harness's.
HARNESS_ADJ = lg.HARNESS_OOM_SCORE_ADJ if _has_cap(CAP_SYS_RESOURCE) else 300
AGENT_ADJ = lg.AGENT_OOM_SCORE_ADJ if _has_cap(CAP_SYS_RESOURCE) else 300


def _records(rfd: int) -> list[dict[str, Any]]:
    data = b""
    while chunk := os.read(rfd, 65536):
        data += chunk
    return [json.loads(line) for line in data.decode().splitlines()]


def _in_child(body: Callable[[int], None]) -> list[dict[str, Any]]:
    """Run body(fd) in a forked process (its own oom_score_adj and records); return the
    records it wrote to fd."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(rfd)
            body(wfd)
            code = 0
        except BaseException:
            traceback.print_exc()  # pytest shows the child's stderr with the failure
        finally:
            os._exit(code)
    os.close(wfd)
    records = _records(rfd)
    os.close(rfd)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (status, records)
    return records


def _own_adj() -> int | None:
    return lg.get_oom_score_adj()


def _sleep() -> None:
    time.sleep(60)


def test_every_task_is_started_with_a_role_and_its_pid() -> None:
    def body(fd: int) -> None:
        lg.set_oom_score_adj(HARNESS_ADJ)
        t = lg.Context("demo", {}, "x86_64", fd)
        res = t.task("victim", _own_adj, role="victim", timeout=10)
        hog = t.spawn("hog", _sleep, role="hog", oom_score_adj=500)
        # Inherited across the fork (not set later by the child): killable from its
        # first copy-on-write fault; and the harness has its own value back.
        adjs = {"hog": lg.get_oom_score_adj(str(hog.pid)), "harness": lg.get_oom_score_adj()}
        hog.kill()
        t.observe("pass", "done", about=res)
        t.send({"type": "about", "about": t.about, "victim_adj": res.value, "adjs": adjs})

    records = _in_child(body)
    spawns = [r for r in records if r["type"] == "spawn"]
    tasks = [r for r in records if r["type"] == "task"]
    assert [(s["name"], s["role"]) for s in spawns] == [("victim", "victim"), ("hog", "hog")]
    assert [(t["name"], t["role"], t["pid"]) for t in tasks] == [
        (s["name"], s["role"], s["pid"]) for s in spawns
    ]
    assert all(isinstance(s["pid"], int) and s["pid"] > 0 for s in spawns)
    assert [s["oom_score_adj"] for s in spawns] == [0, 500]
    assert tasks[1]["status"] == "killed"
    about = records[-1]
    # The workload task reset its own value: the OOM killer can pick it, not the harness.
    assert about["victim_adj"] == lg.WORKLOAD_OOM_SCORE_ADJ != HARNESS_ADJ
    assert about["about"] == {"name": "victim", "pid": spawns[0]["pid"], "role": "victim"}
    assert about["adjs"] == {"hog": 500, "harness": HARNESS_ADJ}


def test_a_task_without_a_known_role_is_refused() -> None:
    t = lg.Context("demo", {}, "x86_64", -1)
    with pytest.raises(TypeError):
        t.spawn("x", _sleep)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="'bystander' is not one of victim, attacker"):
        t.spawn("x", _sleep, role="bystander")
    with pytest.raises(ValueError, match="the harness is the test-case process"):
        t.spawn("x", _sleep, role="harness")


def test_an_adopted_child_is_recorded_and_reaped() -> None:
    def body(fd: int) -> None:
        t = lg.Context("demo", {}, "x86_64", fd)
        pid = os.fork()
        if pid == 0:
            os._exit(3)
        h = t.adopt("holder", pid, role="holder")
        assert h.wait(10).exit_code == 3

    records = _in_child(body)
    assert [(r["type"], r["name"], r["role"]) for r in records] == [
        ("spawn", "holder", "holder"),
        ("task", "holder", "holder"),
    ]
    assert records[1]["exit_code"] == 3 and records[0]["pid"] == records[1]["pid"]


def test_a_precondition_is_recorded_whether_it_holds_or_not() -> None:
    def body(fd: int) -> None:
        t = lg.Context("demo", {}, "x86_64", fd)
        t.require(True, "hog_alive", "the hog is alive", hog_pid=12)
        try:
            t.require(False, "pool_exhausted", "CmaFree 30720 kB >= 2048 kB", cma_free_kb=30720)
        except lg.PreconditionFailed as exc:
            assert exc.check == "pool_exhausted" and exc.data == {"cma_free_kb": 30720}
        else:
            raise AssertionError("require(False) returned")

    records = _in_child(body)
    assert [(r["check"], r["ok"]) for r in records] == [
        ("hog_alive", True),
        ("pool_exhausted", False),
    ]
    assert records[1]["data"] == {"cma_free_kb": 30720}


@pytest.fixture
def guest_agent(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The agent imports `labguest` from the guest's /lab/lib; here it is ours. Nothing
    may reach the host's kernel log."""
    monkeypatch.setitem(sys.modules, "labguest", lg)
    monkeypatch.setattr(lg, "kmsg", lambda text: None)
    yield


def _run_agent(tmp_path: Path, name: str, body: str) -> list[dict[str, Any]]:
    (tmp_path / f"{name}.py").write_text("import labguest as lg\n" + textwrap.dedent(body))
    job = {"mode": "testcases", "testcases": [{"name": name, "timeout": 20}], "params": {}}

    def run(fd: int) -> None:
        lg.set_oom_score_adj(AGENT_ADJ)  # as main() does before running test cases
        agent.run_testcases(job, agent.Channel(fd), fd, str(tmp_path))

    return _in_child(run)


def test_a_failed_precondition_is_an_infrastructure_error_not_an_outcome(
    tmp_path: Path, guest_agent: None
) -> None:
    records = _run_agent(
        tmp_path,
        "pre",
        """
        def run(t):
            t.observe("fault_livelock", "spun")  # whatever was seen: the scenario did not happen
            t.require(False, "pool_exhausted", "CmaFree 30720 kB", cma_free_kb=30720)
        """,
    )
    (error,) = [r for r in records if r["type"] == "error"]
    assert error["kind"] == "precondition" and error["check"] == "pool_exhausted"
    assert "CmaFree 30720 kB" in error["message"] and error["data"] == {"cma_free_kb": 30720}
    (result,) = [r for r in records if r["type"] == "result"]
    assert result["verdict"] == "error" and result["observed"] is None
    assert result["precondition"] == "pool_exhausted"
    assert result["message"].startswith("precondition failed: pool_exhausted")


def test_the_harness_runs_protected_and_its_death_is_an_infrastructure_error(
    tmp_path: Path, guest_agent: None
) -> None:
    records = _run_agent(
        tmp_path,
        "dies",
        """
        import os, signal
        def run(t):
            t.event("harness", adj=lg.get_oom_score_adj())
            os.kill(os.getpid(), signal.SIGKILL)
        """,
    )
    (spawn,) = [r for r in records if r["type"] == "spawn"]
    assert spawn["role"] == "harness" and spawn["name"] == "testcase:dies"
    (event,) = [r for r in records if r["type"] == "event"]
    # The test-case process runs just above the agent's -1000 (it used to reset itself
    # to 0): never picked while a workload task is left, but when none is, the OOM
    # killer takes it instead of panicking ("no killable processes"), and its death is
    # an infrastructure error the agent reports.
    assert event["data"]["adj"] == HARNESS_ADJ == spawn["oom_score_adj"]
    if _has_cap(CAP_SYS_RESOURCE):
        assert (HARNESS_ADJ, AGENT_ADJ) == (-999, -1000)
    (task,) = [r for r in records if r["type"] == "task"]
    assert (task["role"], task["pid"], task["signal"]) == ("harness", spawn["pid"], "SIGKILL")
    (error,) = [r for r in records if r["type"] == "error"]
    assert error["kind"] == "harness" and error["pid"] == spawn["pid"]
    (result,) = [r for r in records if r["type"] == "result"]
    assert result["verdict"] == "error" and result["observed"] is None


def test_a_passing_test_case_reports_what_its_observation_is_about(
    tmp_path: Path, guest_agent: None
) -> None:
    records = _run_agent(
        tmp_path,
        "ok",
        """
        def run(t):
            res = t.task("victim", lambda: 1, role="victim", timeout=10)
            t.observe("pass", "fine", about=res)
        """,
    )
    (result,) = [r for r in records if r["type"] == "result"]
    (task,) = [r for r in records if r["type"] == "task"]
    assert result["verdict"] == "pass" and "precondition" not in result
    assert result["about"] == {"name": "victim", "pid": task["pid"], "role": "victim"}
    assert not [r for r in records if r["type"] == "error"]


def test_sigkill_of_a_task_is_reported_with_its_role() -> None:
    def body(fd: int) -> None:
        t = lg.Context("demo", {}, "x86_64", fd)
        h = t.spawn("attacker", os.kill, 0, signal.SIGKILL, role="attacker")
        h.wait(10)

    records = _in_child(body)
    task = records[-1]
    assert (task["role"], task["status"], task["signal"]) == ("attacker", "signaled", "SIGKILL")


def _mark_and_die(stages: lg.Stages) -> None:
    stages.mark("faulting", hog_alive=True)
    os.kill(os.getpid(), signal.SIGKILL)


def test_stages_tell_how_far_a_task_got_even_if_it_was_killed() -> None:
    def body(fd: int) -> None:
        t = lg.Context("demo", {}, "x86_64", fd)
        stages = lg.Stages()
        res = t.task("victim", _mark_and_die, stages, role="victim", timeout=10)
        t.send({"type": "seen", "signal": res.signal, "at": stages.reached("faulting")})
        t.send({"type": "seen", "signal": None, "at": stages.reached("faulted")})

    seen = [r for r in _in_child(body) if r["type"] == "seen"]
    assert seen[0] == {
        "type": "seen",
        "signal": "SIGKILL",
        "at": {"stage": "faulting", "hog_alive": True},
    }
    assert seen[1]["at"] is None


def _testcase(name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A test case module from testcases/, importing our labguest as the guest would."""
    import importlib.util

    monkeypatch.setitem(sys.modules, "labguest", lg)
    path = Path(__file__).resolve().parent.parent / "testcases" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"testcase_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CMA = {"pool": "cma", "fallback": False, "reserve": False, "fault": "oom"}


@pytest.mark.parametrize(
    ("meminfo", "stats", "ok", "says"),
    [
        # all 32 chunks of a 64 MiB area in the attacker's pools, no free 2 MiB left
        ({"CmaTotal": 65536, "CmaFree": 1024}, {"pool_pages": 16384}, True, "hold 65536 of 65536"),
        # CmaFree is low but two chunks are not the attacker's: not exhausted
        ({"CmaTotal": 65536, "CmaFree": 1024}, {"pool_pages": 15360}, False, "hold 61440"),
        ({"CmaTotal": 65536, "CmaFree": 4096}, {"pool_pages": 16384}, False, "CmaFree 4096"),
        # a missing counter is a failed precondition, never a 0
        ({"CmaTotal": 65536, "CmaFree": 0}, {}, False, "counters missing: pool_pages"),
        ({"CmaTotal": 65536}, {"pool_pages": 16384}, False, "counters missing: CmaFree"),
    ],
)
def test_depletion_asserts_that_the_cma_area_is_exhausted(
    monkeypatch: pytest.MonkeyPatch,
    meminfo: dict[str, int],
    stats: dict[str, int],
    ok: bool,
    says: str,
) -> None:
    depletion = _testcase("depletion", monkeypatch)
    monkeypatch.setattr(lg, "meminfo", lambda: meminfo)
    monkeypatch.setattr(lg, "secretmem_stats", lambda: stats)
    held, how, _numbers = depletion._exhaustion(CMA, {"files": 32}, 1984, {"pool_pages": 0})
    assert held is ok and says in how


def test_depletion_pool_none_needs_the_attacker_to_hold_its_whole_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    depletion = _testcase("depletion", monkeypatch)
    params = {"pool": "none", "fallback": False, "reserve": False, "fault": "oom"}
    assert depletion._exhaustion(params, {"files": 512}, 512, {})[0] is True
    held, how, numbers = depletion._exhaustion(params, {"files": 37}, 512, {})
    assert held is False and numbers == {"files": 37, "limit": 512} and "37 of the 512" in how


def test_fragmentation_treats_a_missing_split_counter_as_a_failed_precondition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fragmentation = _testcase("fragmentation", monkeypatch)
    monkeypatch.setattr(
        lg, "meminfo", lambda: {"DirectMap4k": 8192, "DirectMap2M": 253952, "DirectMap1G": 0}
    )
    monkeypatch.setattr(lg, "vmstat", lambda: {"direct_map_level3_splits": 0})

    def body(fd: int) -> None:
        t = lg.Context("fragmentation", {"pool": "none"}, "x86_64", fd)
        try:
            fragmentation.run(t)
        except lg.PreconditionFailed as exc:
            t.send({"type": "raised", "check": exc.check})

    records = _in_child(body)
    (pre,) = [r for r in records if r["type"] == "precondition"]
    assert pre["ok"] is False and "level2_splits" in pre["message"]
    assert pre["data"]["before"]["level2_splits"] is None  # not a made-up 0
    assert records[-1] == {"type": "raised", "check": "counters"}
    assert not [r for r in records if r["type"] == "spawn"]  # nothing ran on bad counters


@pytest.mark.parametrize(
    ("body", "rule"),
    [
        (
            """
            def run(t):
                t.require(False, "resource_exhausted", "CmaFree 30720 kB", cma_free_kb=30720)
            """,
            "precondition-failed",
        ),
        (
            """
            import os, signal
            def run(t):
                os.kill(os.getpid(), signal.SIGKILL)
            """,
            "harness-death",
        ),
        (
            """
            def run(t):
                res = t.task("victim", lambda: 1, role="victim", timeout=10)
                t.observe("pass", "fine", about=res)
            """,
            "test-passed",
        ),
    ],
    ids=["precondition", "harness-death", "pass"],
)
def test_the_host_accepts_the_new_records(
    tmp_path: Path, guest_agent: None, body: str, rule: str
) -> None:
    """The records the agent now writes (spawn, precondition, roles, error kinds) pass
    the host's record validation; with no kernel evidence on the console a precondition
    failure and a harness death are infrastructure errors."""
    from lab.classify import RunFacts, classify

    records = _run_agent(tmp_path, "case", body)
    facts = RunFacts(
        ready=True,
        records=({"type": "ready", "boot_id": "b"}, *records, {"type": "done"}),
    )
    result = classify("LABREADY b\n", facts)
    assert result.rule == rule, result
    assert result.outcome == ("pass" if rule == "test-passed" else "infra_error")


ZONEINFO = """Node 0, zone      DMA
  per-node stats
      nr_inactive_anon 27206
  pages free     900
        boost    0
        min      20
        low      25
        high     30
        spanned  4095
        present  3998
        managed  3976
        cma      0
        protection: (0, 230, 230, 230)
      nr_free_pages 900
      nr_free_cma  0
Node 0, zone    DMA32
  pages free     400
        boost    0
        min      350
        low      437
        high     524
        protection: (0, 0, 0, 0)
      nr_free_cma  10
Node 0, zone   Normal
  pages free     0
        boost    0
        min      0
        low      0
        high     0
        spanned  0
        present  0
        managed  0
        cma      0
        protection: (0, 0, 0, 0)
Node 0, zone  Movable
  pages free     0
        min      0
        protection: (0, 0, 0, 0)
"""
BUDDYINFO = (
    "Node 0, zone      DMA      0      0      0      0      0      0      0      0      0      1\n"
    "Node 0, zone    DMA32     40     20     10      0      0      0      0      0      0      0\n"
)


def test_the_watermark_headroom_is_the_page_allocators_own_count() -> None:
    """A user page (GFP_HIGHUSER, class ZONE_NORMAL) may take a lower zone only above its
    min watermark plus the lowmem reserve kept for that class; CMA pages are not for it."""
    zones = lg.parse_zoneinfo(ZONEINFO)
    assert [z["name"] for z in zones] == ["DMA", "DMA32", "Normal", "Movable"]
    room = lg.user_zone_headroom(zones)
    assert room == {"DMA": 900 - 20 - 230, "DMA32": 400 - 10 - 350, "Normal": 0, "Movable": 0}
    assert lg.parse_buddyinfo(BUDDYINFO)["DMA"][9] == 1


def test_an_order9_block_under_the_watermark_cannot_refill_a_pool(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real_open = open

    def fake_open(path: Any, *a: Any, **kw: Any) -> Any:
        if path == "/proc/zoneinfo":
            return real_open(tmp_path / "z", *a, **kw)
        if path == "/proc/buddyinfo":
            return real_open(tmp_path / "b", *a, **kw)
        return real_open(path, *a, **kw)

    (tmp_path / "z").write_text(ZONEINFO)
    (tmp_path / "b").write_text(BUDDYINFO)
    monkeypatch.setattr("builtins.open", fake_open)
    mem = lg.memory_headroom()
    # DMA has a free order-9 block and 650 pages of room: a chunk (512) still fits there
    assert mem["headroom"] == 650 + 40 and mem["pmd_refill"] is True
    (tmp_path / "z").write_text(ZONEINFO.replace("pages free     900", "pages free     700"))
    mem = lg.memory_headroom()
    assert mem["headroom"] == 450 + 40 and mem["pmd_refill"] is False
    assert mem["zones"]["DMA"] == {"free": 700, "min": 20, "headroom": 450, "pmd_blocks": 1}
    (tmp_path / "z").write_text("")
    assert lg.memory_headroom() == {}  # no zones: the caller's failed precondition


P0 = {"pool": "pmd", "fallback": True, "reserve": False, "fault": "oom"}
P1 = {"pool": "pmd", "fallback": False, "reserve": False, "fault": "oom"}


@pytest.mark.parametrize(
    ("params", "mem", "ok", "says"),
    [
        # P0: RAM has run out under the hoard: the victim's 511 pages are not there
        (P0, {"headroom": 60, "pmd_refill": False, "zones": {}}, True, "60 pages above"),
        (P0, {"headroom": 3000, "pmd_refill": False, "zones": {}}, False, "3000 pages"),
        (P0, {"headroom": 60, "pmd_refill": True, "zones": {}}, False, "possible: True"),
        # P1: the refill must fail; free order-0 memory does not matter (spec 3(c))
        (P1, {"headroom": 3000, "pmd_refill": False, "zones": {}}, True, "possible: False"),
        (P1, {"headroom": 600, "pmd_refill": True, "zones": {}}, False, "possible: True"),
        (P1, {}, False, "counters missing"),
    ],
)
def test_depletion_asserts_that_a_pmd_pool_cannot_be_refilled(
    monkeypatch: pytest.MonkeyPatch,
    params: dict[str, Any],
    mem: dict[str, Any],
    ok: bool,
    says: str,
) -> None:
    depletion = _testcase("depletion", monkeypatch)
    monkeypatch.setattr(lg, "memory_headroom", lambda: mem)
    monkeypatch.setattr(lg, "meminfo", lambda: {"MemFree": 3000})
    monkeypatch.setattr(lg, "secretmem_stats", lambda: {"chunks_buddy": 89})
    held, how, numbers = depletion._exhaustion(params, {"files": 90}, 1984, {})
    assert held is ok and says in how, how
    if mem:
        assert numbers["headroom_pages"] == mem["headroom"]


@pytest.mark.parametrize(
    ("params", "mem", "blocks", "stop"),
    [
        (P0, {"headroom": 5000, "pmd_refill": True}, 3, None),
        (P0, {"headroom": 5000, "pmd_refill": False}, 0, None),  # order-0 fallback goes on
        (P0, {"headroom": 64, "pmd_refill": False}, 0, "RAM ran out"),
        (P1, {"headroom": 5000, "pmd_refill": True}, 3, None),
        (P1, {"headroom": 5000, "pmd_refill": False}, 0, "no order-9 chunk"),
        # a chunk would leave too little room for the refill's own allocations
        (P1, {"headroom": 540, "pmd_refill": True}, 1, "no room for another chunk"),
    ],
)
def test_the_pmd_attacker_stops_by_the_allocators_numbers_not_by_the_oom_killer(
    monkeypatch: pytest.MonkeyPatch,
    params: dict[str, Any],
    mem: dict[str, Any],
    blocks: int,
    stop: str | None,
) -> None:
    depletion = _testcase("depletion", monkeypatch)
    monkeypatch.setattr(lg, "memory_headroom", lambda: mem)
    monkeypatch.setattr(depletion, "_free_pmd_blocks", lambda: blocks)
    got = depletion._exhausted(params)
    assert (got is None) if stop is None else (got is not None and stop in got), got
