"""The in-guest library test cases import: memfd_secret, tasks, reporting.

Runs inside the guest (Python 3.11 stdlib only; imports nothing from the host's
`lab` package). A test case is a module with a TESTCASE literal dict and a
`run(t: Context)` function; see testcases/README.md.

Records go to the result channel as JSON lines (see agent.py). Risky work (anything
that may die of SIGBUS, spin in a fault loop or be OOM-killed) runs in a *task*: a
forked child, optionally as another user, with its own deadline, whose fate
(exit code, signal, timeout) is recorded.

Every task has a *role* (ROLES), recorded with its pid when it starts (a `spawn`
record) and with its fate when it ends (a `task` record), so the host can decide the
outcome for the task the scenario is about (the victim) and report the others as
context. The agent runs at oom_score_adj -1000 and the test-case process (role
`harness`) at -999: workload tasks are always OOM-killed first (the harness only
when none is left, instead of a "no killable processes" panic). A workload task
gets its own oom_score_adj (0 unless the scenario asks for another value).

Preconditions (`Context.require`) are recorded as `precondition` records whether they
hold or not; one that does not hold ends the test case as a precondition failure (an
infrastructure verdict with its numbers), never as an outcome.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import mmap
import os
import resource
import select
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SYS_MEMFD_SECRET = 447  # x86_64 and arm64 (asm-generic) alike
UNPRIVILEGED = 1000  # user `lab` in the guest image
OTHER_USER = 1001  # a second unprivileged user (no passwd entry needed)
PAGE = mmap.PAGESIZE
PMD_ORDER = 9  # a PMD chunk (2 MiB) with 4 KiB pages, on x86_64 and arm64 alike
PMD_SIZE = PAGE << PMD_ORDER
MAP_FIXED = 0x10  # Linux's value on x86_64 and arm64 (Python's mmap module lacks it)
MAX_RECORD = 30000  # stay below virtio_console's 32 KiB per write(): one record, one write

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class Failure(Exception):
    """A test assertion that did not hold (verdict `fail`)."""


class PreconditionFailed(Exception):
    """The scenario could not be staged (e.g. the pool was not exhausted): no outcome.

    The agent reports it as an infrastructure error naming the check and its numbers.
    """

    def __init__(self, check: str, message: str, data: dict[str, Any]) -> None:
        super().__init__(f"{check}: {message}")
        self.check = check
        self.message = message
        self.data = data


# The role of a task: what it is to the scenario. The outcome is decided for the
# victim; the others are context. "harness" is the test-case process itself (set by
# the agent, never spawned): its death is an infrastructure error.
ROLES = (
    "victim",  # the task whose fate the scenario is about
    "attacker",  # takes a shared resource away from the victim
    "hog",  # creates the memory pressure the victim faults under
    "worker",  # load that is the scenario itself (no single victim: concurrency, ...)
    "probe",  # provokes a documented reaction (SIGBUS past EOF, mlock ENOMEM, recovery)
    "reader",  # tries to read another task's secret
    "holder",  # holds the secret a reader tries to read
)
HARNESS = "harness"
# The agent is never killable. The harness (the test-case process) is killable only when
# no other task is left: its badness, rss - 0.999 x RAM, is below that of any task at a
# higher value, so the OOM killer takes every workload task first; but once they are
# gone it takes the harness instead of panicking "System is deadlocked on memory" (which
# -1000 made happen: x86_64 P1 depletion, arm64 C1/P1 pressure, run 20261130-033017).
# The agent then reports the harness's death: an infrastructure error, with the run's
# records and console intact.
AGENT_OOM_SCORE_ADJ = -1000
HARNESS_OOM_SCORE_ADJ = -999
WORKLOAD_OOM_SCORE_ADJ = 0  # a workload task is as killable as any ordinary task


# --- the syscall and mappings ----------------------------------------------------------


def memfd_secret(flags: int = 0) -> int:
    """memfd_secret(2) via syscall(447); raises OSError with errno on failure."""
    fd = _libc.syscall(SYS_MEMFD_SECRET, ctypes.c_uint(flags))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"memfd_secret: {os.strerror(err)}")
    return int(fd)


def secret_mapping(size: int, fd: int | None = None) -> tuple[int, mmap.mmap]:
    """A MAP_SHARED read/write mapping of a new (or given) secretmem fd of `size` bytes."""
    if fd is None:
        fd = memfd_secret()
        os.ftruncate(fd, size)
    return fd, mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)


def touch(m: mmap.mmap, first_page: int = 0, pages: int | None = None, value: int = 0x5A) -> int:
    """Write one byte per page (faulting each in); returns the number of pages touched."""
    count = (len(m) // PAGE - first_page) if pages is None else pages
    for i in range(first_page, first_page + count):
        m[i * PAGE] = value
    return count


_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
MAP_FAILED = ctypes.c_void_p(-1).value


def raw_mmap(
    fd: int, length: int, prot: int, flags: int, addr: int | None = None, offset: int = 0
) -> int:
    """mmap(2) without Python's size checks (which refuse lengths past the end of a file);
    `addr` with MAP_FIXED in `flags` places it (over part of a mapping made earlier)."""
    addr = _libc.mmap(addr, length, prot, flags, fd, offset)
    if addr is None or addr == MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap: {os.strerror(err)}")
    return int(addr)


def poke(addr: int, value: int = 0x5A) -> None:
    """Store one byte at addr (a fault, if the page is not there yet)."""
    ctypes.memset(addr, value, 1)


def peek(addr: int) -> int:
    return ctypes.c_ubyte.from_address(addr).value


def errno_name(err: int | None) -> str:
    return errno.errorcode.get(err or 0, str(err))


def try_call(func: Callable[[], Any]) -> tuple[Any, str | None]:
    """(result, None) or (None, "EINVAL") — for checking documented error cases."""
    try:
        return func(), None
    except OSError as exc:
        return None, errno_name(exc.errno)


# --- /proc and debugfs --------------------------------------------------------------------


def read_kv(path: str, sep: str | None = None) -> dict[str, int]:
    """key value lines (/proc/meminfo, /proc/vmstat) -> {key: int} (kB stays kB)."""
    out: dict[str, int] = {}
    try:
        with open(path) as f:
            for line in f:
                parts = line.replace(":", " ", 1).split() if sep is None else line.split(sep)
                if len(parts) >= 2 and parts[1].strip().lstrip("-").isdigit():
                    out[parts[0].strip()] = int(parts[1])
    except OSError:
        pass
    return out


def meminfo() -> dict[str, int]:
    return read_kv("/proc/meminfo")


def vmstat() -> dict[str, int]:
    return read_kv("/proc/vmstat")


def secretmem_stats() -> dict[str, int]:
    """The lab patch's debugfs counters (empty on kernels without them)."""
    base = "/sys/kernel/debug/secretmem"
    out: dict[str, int] = {}
    try:
        names = os.listdir(base)
    except OSError:
        return out
    for name in names:
        try:
            with open(f"{base}/{name}") as f:
                out[name] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return out


def own_pages(skip: tuple[int, int] | None = None) -> int:
    """Make every private writable page of this process its own now: write each one
    back to itself, so that copy-on-write (after a fork: the harness and its children
    share everything) and first-touch allocations happen while memory is plentiful.
    Later writes then need no new page: a task that must not allocate once a scenario
    has taken the memory away (a waiting victim, the harness between the depletion and
    the victim's fault) calls this before. `skip`: an (address, length) range to leave
    alone (a reserved area whose pages must not exist: unmapping them later would hand
    memory back). Returns the pages touched."""
    touched = 0
    with open("/proc/self/maps") as f:
        maps = f.read().splitlines()
    for line in maps:
        fields = line.split()
        if len(fields) < 2 or fields[1] != "rw-p":  # never a shared (secret) mapping
            continue
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        for addr in range(lo, hi, PAGE):
            if skip is not None and skip[0] <= addr < skip[0] + skip[1]:
                continue
            ctypes.memmove(addr, addr, 1)
            touched += 1
    return touched


def parse_zoneinfo(text: str) -> list[dict[str, Any]]:
    """/proc/zoneinfo -> one dict per zone, in the kernel's zone order:
    {name, free, min, low, free_cma, protection: [pages per zone index]}.
    A zone without its `pages free`/`min` lines (never in 6.1) is left out."""
    zones: list[dict[str, Any]] = []
    zone: dict[str, Any] | None = None
    for line in text.splitlines():
        words = line.replace(",", " ").replace("(", " ").replace(")", " ").split()
        if len(words) >= 4 and words[0] == "Node" and words[2] == "zone":
            zone = {"name": words[3], "protection": []}
            zones.append(zone)
        elif zone is None or len(words) < 2:
            continue
        elif words[:2] == ["pages", "free"] and words[2:3] and words[2].isdigit():
            zone["free"] = int(words[2])
        elif words[0] in ("min", "low", "high") and words[1].isdigit():
            zone[words[0]] = int(words[1])
        elif words[0] == "nr_free_cma" and words[1].isdigit():
            zone["free_cma"] = int(words[1])
        elif words[0] == "protection:":
            zone["protection"] = [int(w) for w in words[1:] if w.isdigit()]
    return [z for z in zones if "free" in z and "min" in z]


def parse_buddyinfo(text: str) -> dict[str, list[int]]:
    """/proc/buddyinfo -> {zone name: free blocks per order}."""
    out: dict[str, list[int]] = {}
    for line in text.splitlines():
        words = line.replace(",", " ").split()
        if len(words) >= 5 and words[0] == "Node" and words[2] == "zone":
            out[words[3]] = [int(w) for w in words[4:] if w.isdigit()]
    return out


def user_zone_headroom(zones: list[dict[str, Any]]) -> dict[str, int]:
    """Per zone, the pages a user page allocation (GFP_HIGHUSER: its class is ZONE_NORMAL,
    so a lower zone keeps its lowmem reserve for that index) can take before the zone's
    min watermark, as __zone_watermark_ok() counts them (CMA pages are not for it).
    At 0 in every zone, an order-0 allocation reclaims and then runs the OOM killer."""
    names = [z["name"] for z in zones]
    cls = names.index("Normal") if "Normal" in names else len(names) - 1
    out = {}
    for z in zones:
        prot = z["protection"]
        reserve = prot[cls] if cls < len(prot) else 0
        out[z["name"]] = z["free"] - z.get("free_cma", 0) - z["min"] - reserve
    return out


def memory_headroom() -> dict[str, Any]:
    """The page allocator's view, read now: {headroom: pages a user allocation can still
    take without reclaim/OOM (summed over zones), pmd_refill: whether an order-9 chunk
    could still be had (a zone with a free order>=9 block and the watermark room for
    it), zones: per-zone numbers}. Missing files give {} (the caller's precondition)."""
    try:
        with open("/proc/zoneinfo") as f:
            zones = parse_zoneinfo(f.read())
        with open("/proc/buddyinfo") as f:
            buddy = parse_buddyinfo(f.read())
    except OSError:
        return {}
    if not zones:
        return {}
    room = user_zone_headroom(zones)
    blocks = {name: sum(counts[PMD_ORDER:]) for name, counts in buddy.items()}
    pmd = any(blocks.get(n, 0) > 0 and r > (1 << PMD_ORDER) - 1 for n, r in room.items())
    return {
        "headroom": sum(max(0, r) for r in room.values()),
        "pmd_refill": pmd,
        "zones": {
            z["name"]: {
                "free": z["free"],
                "min": z["min"],
                "headroom": room[z["name"]],
                "pmd_blocks": blocks.get(z["name"], 0),
            }
            for z in zones
            if z["name"] in buddy
        },
    }


def banner() -> dict[str, str]:
    """The running kernel's secretmem variant, from the boot banner in the kernel log."""
    try:
        with open("/dev/kmsg", "rb") as f:
            os.set_blocking(f.fileno(), False)
            data = b""
            while True:
                try:
                    chunk = f.read(8192)
                except (BlockingIOError, OSError):
                    break
                if not chunk:
                    break
                data += chunk
    except OSError:
        return {}
    for line in data.decode(errors="replace").splitlines():
        if "secretmem: lab variant" in line:
            words = line.split("secretmem: lab variant", 1)[1].split()
            return dict(w.split("=", 1) for w in words if "=" in w)
    return {}


def kmsg(text: str) -> None:
    """Write a line into the kernel log (it shows on the console with a timestamp)."""
    try:
        with open("/dev/kmsg", "w") as f:
            f.write(f"<5>lab: {text}\n")
    except OSError:
        pass


def set_oom_score_adj(value: int, pid: str = "self") -> None:
    with open(f"/proc/{pid}/oom_score_adj", "w") as f:
        f.write(f"{value}\n")


def get_oom_score_adj(pid: str = "self") -> int | None:
    try:
        with open(f"/proc/{pid}/oom_score_adj") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def sysctl(name: str, value: str | int) -> None:
    with open("/proc/sys/" + name.replace(".", "/"), "w") as f:
        f.write(f"{value}\n")


# --- tasks: risky work in a child -----------------------------------------------------------


def alive(pid: int) -> bool:
    """pid is a live task: not gone, and not a zombie nobody has reaped yet (a task the
    OOM killer killed stays a zombie until its parent waits for it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


class Stages:
    """How far a task got, told to the harness through a pipe made before the fork.

    The task calls mark() before each step (immediately before the fault under
    test, say), so that even a task that then spins or is killed has said where it
    was; the harness reads seen() after the task ended. Works across setuid.
    """

    MAX = 64  # marks kept: a task marks a handful of steps

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        self._buf = b""
        self._seen: list[dict[str, Any]] = []

    def mark(self, stage: str, **data: Any) -> None:
        """In the task: record that it reached `stage` (with a few numbers)."""
        line = json.dumps({"stage": stage, **data}, default=str).encode()[:4000]
        os.write(self._w, line + b"\n")

    def seen(self) -> list[dict[str, Any]]:
        """In the harness: every mark so far, oldest first."""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self._r, 65536):
                self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            with contextlib.suppress(ValueError):
                mark = json.loads(line)
                if isinstance(mark, dict) and len(self._seen) < self.MAX:
                    self._seen.append(mark)
        return list(self._seen)

    def reached(self, stage: str) -> dict[str, Any] | None:
        return next((m for m in self.seen() if m.get("stage") == stage), None)


def check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(
            f"task role {role!r} is not one of {', '.join(ROLES)}"
            + (
                " (the harness is the test-case process; it starts no harness)"
                if role == HARNESS
                else ""
            )
        )


@dataclass
class TaskResult:
    name: str
    pid: int
    status: str  # exited | signaled | timeout
    exit_code: int | None
    signal: str | None
    seconds: float
    value: Any  # what the function returned (JSON), if it returned
    error: str | None  # the exception line, if it raised
    role: str = "worker"

    @property
    def ok(self) -> bool:
        return self.status == "exited" and self.exit_code == 0

    @property
    def sigbus(self) -> bool:
        return self.signal == "SIGBUS"


def _drop_privileges(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def _signame(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"SIG{num}"


class Context:
    """What a test case's run() receives."""

    def __init__(self, name: str, params: dict[str, Any], arch: str, fd: int) -> None:
        self.name = name
        self.params = params  # the variant's parameters (pool, fault, ...)
        self.arch = arch
        self._fd = fd
        self.data: dict[str, Any] = {}
        self.observed: str | None = None
        self.message = ""
        self.about: dict[str, Any] | None = None  # the task the observation is about
        self._pid = os.getpid()  # the harness (a forked task is another process)
        self.started = time.monotonic()

    # reporting
    def send(self, record: dict[str, Any]) -> None:
        raw = json.dumps(record, separators=(",", ":"), default=str)
        if len(raw) > MAX_RECORD:
            raw = json.dumps(
                {
                    "type": record.get("type", "event"),
                    "testcase": self.name,
                    "truncated": True,
                    "head": raw[:2000],
                }
            )
        data = memoryview((raw + "\n").encode())
        while data:
            data = data[os.write(self._fd, data) :]

    def event(self, message: str, **data: Any) -> None:
        self.send(
            {
                "type": "event",
                "testcase": self.name,
                "message": message,
                "t": round(time.monotonic() - self.started, 3),
                "data": data,
            }
        )

    def check(self, condition: bool, message: str) -> None:
        if not condition:
            raise Failure(message)

    def expect_errno(self, func: Callable[[], Any], want: str, what: str) -> None:
        _, got = try_call(func)
        self.check(got == want, f"{what}: expected {want}, got {got or 'success'}")

    def observe(
        self,
        outcome: str,
        message: str = "",
        *,
        about: Handle | TaskResult | None = None,
        **data: Any,
    ) -> None:
        """What userspace saw (a class name: pass, sigbus, fault_livelock, refused, ...),
        with one line saying how, for reports. `about`: the task the observation is
        about (the victim), so the host can hold it against that task's kernel evidence.
        """
        self.observed = outcome
        self.message = message
        self.data.update(data)
        if about is not None:
            self.about = {"name": about.name, "pid": about.pid, "role": about.role}

    def require(self, condition: bool, check: str, message: str, **data: Any) -> None:
        """A precondition of the scenario (the pool is exhausted, the hog is alive, ...).

        Recorded either way, with its numbers; when it does not hold the test case
        ends with PreconditionFailed: the scenario did not happen, so there is no
        outcome to report.
        """
        self.send(
            {
                "type": "precondition",
                "testcase": self.name,
                "check": check,
                "ok": bool(condition),
                "message": message,
                "t": round(time.monotonic() - self.started, 3),
                "data": data,
            }
        )
        if not condition:
            raise PreconditionFailed(check, message, data)

    def require_secretmem(self, res: TaskResult) -> dict[str, Any]:
        """The dict a scenario task returned. A task that returns {"step":
        "memfd_secret", "refused": ...} could not even create a secret file (a kernel
        without secretmem, ENOSYS): no scenario ran, which is no `refused` outcome."""
        value = res.value if isinstance(res.value, dict) else {}
        self.require(
            value.get("step") != "memfd_secret",
            "secretmem_available",
            f"{res.name} could create a secret file ({value.get('refused')})",
        )
        return value

    # tasks
    def _started(
        self, name: str, pid: int, role: str, user: int | None, oom_score_adj: int
    ) -> None:
        self.send(
            {
                "type": "spawn",
                "testcase": self.name,
                "name": name,
                "role": role,
                "pid": pid,
                "uid": os.getuid() if user is None else user,
                "oom_score_adj": oom_score_adj,
                "t": round(time.monotonic() - self.started, 3),
            }
        )

    def spawn(
        self,
        name: str,
        func: Callable[..., Any],
        *args: Any,
        role: str,
        user: int | None = None,
        memlock: int | None = None,
        expect_signal: str | None = None,
        cgroup: str | None = None,
        oom_score_adj: int = WORKLOAD_OOM_SCORE_ADJ,
    ) -> Handle:
        """Start func(*args) in a forked child (own process group); see Handle.

        role: one of ROLES (required: every task says what it is to the scenario).
        oom_score_adj: the task's own value; it must not keep the harness's value, or
        the OOM killer would pick the harness as soon as it.
        """
        check_role(role)
        rfd, wfd = os.pipe()
        # The child must be killable from its first instruction: right after the fork
        # it touches memory (copy-on-write) before it could set its own value, and a
        # child still at the harness's value (it was -1000) can leave the OOM killer
        # nothing to kill ("no killable processes", a panic: x86_64/P1/depletion).
        # So the harness holds the child's value across the fork, then takes its own
        # back (CAP_SYS_RESOURCE, which the guest's root has, allows lowering it).
        harness_adj = get_oom_score_adj()
        set_oom_score_adj(oom_score_adj)
        try:
            pid = os.fork()
        finally:
            if harness_adj is not None and os.getpid() == self._pid:
                set_oom_score_adj(harness_adj)
        if pid == 0:  # child
            code = 0
            try:
                os.close(rfd)
                os.setpgid(0, 0)
                if cgroup is not None:
                    with open(f"{cgroup}/cgroup.procs", "w") as f:
                        f.write("0\n")
                if memlock is not None:
                    resource.setrlimit(resource.RLIMIT_MEMLOCK, (memlock, memlock))
                if user is not None:
                    _drop_privileges(user)
                value = func(*args)
                os.write(wfd, json.dumps({"value": value}, default=str).encode()[:MAX_RECORD])
            except BaseException as exc:  # reported to the parent
                line = traceback.format_exception_only(type(exc), exc)[-1].strip()
                os.write(wfd, json.dumps({"error": line}).encode()[:MAX_RECORD])
                code = 1
            finally:
                os._exit(code)
        os.close(wfd)
        self._started(name, pid, role, user, oom_score_adj)
        return Handle(self, name, pid, rfd, time.monotonic(), expect_signal, role)

    def adopt(self, name: str, pid: int, *, role: str, oom_score_adj: int | None = None) -> Handle:
        """Record a child the test case forked itself (and reset its oom_score_adj
        there); wait() on the Handle records its fate like a task's."""
        check_role(role)
        self._started(name, pid, role, None, oom_score_adj if oom_score_adj is not None else 0)
        return Handle(self, name, pid, None, time.monotonic(), None, role)

    def task(
        self, name: str, func: Callable[..., Any], *args: Any, timeout: float = 30.0, **kw: Any
    ) -> TaskResult:
        """Run func(*args) in a child and wait; killed (status `timeout`) at the deadline.

        expect_signal: the signal this task is meant to die of (e.g. the SIGBUS a
        test provokes on purpose); the record says so, so it is not mistaken for
        the outcome under test. cgroup: a cgroup v2 directory to join first.
        """
        return self.spawn(name, func, *args, **kw).wait(timeout)


class Handle:
    """A running task: wait() for it with a deadline, or kill() it."""

    def __init__(
        self,
        ctx: Context,
        name: str,
        pid: int,
        rfd: int | None,
        started: float,
        expect_signal: str | None,
        role: str,
    ) -> None:
        self.ctx = ctx
        self.name = name
        self.pid = pid
        self._rfd = rfd  # None: an adopted child with no result pipe
        self.started = started
        self.expect_signal = expect_signal
        self.role = role
        self.result: TaskResult | None = None

    def poll(self) -> bool:
        """True once the task has ended (its result is then recorded)."""
        if self.result is not None:
            return True
        done, raw = os.waitpid(self.pid, os.WNOHANG)
        if done:
            self._finish(raw)
        return self.result is not None

    def wait(self, timeout: float) -> TaskResult:
        deadline = time.monotonic() + timeout
        while not self.poll():
            if time.monotonic() >= deadline:
                return self.kill(status="timeout")
            time.sleep(0.02)
        assert self.result is not None
        return self.result

    def kill(self, status: str = "killed") -> TaskResult:
        """SIGKILL the task's process group; status `timeout` or `killed` (by the test)."""
        if self.result is not None:
            return self.result
        with contextlib.suppress(ProcessLookupError):
            # an adopted child may share the harness's process group: kill it alone
            if os.getpgid(self.pid) == self.pid:
                os.killpg(self.pid, signal.SIGKILL)
            else:
                os.kill(self.pid, signal.SIGKILL)
        _, raw = os.waitpid(self.pid, 0)
        self._finish(raw, forced=status)
        assert self.result is not None
        return self.result

    def _finish(self, raw: int, forced: str | None = None) -> None:
        status, exit_code, sig = "exited", None, None
        if forced is not None:
            status = forced
        elif os.WIFSIGNALED(raw):
            status, sig = "signaled", _signame(os.WTERMSIG(raw))
        else:
            exit_code = os.WEXITSTATUS(raw)
        seconds = round(time.monotonic() - self.started, 3)
        payload: dict[str, Any] = {}
        if self._rfd is not None:
            readable, _, _ = select.select([self._rfd], [], [], 0)
            if readable:
                try:
                    payload = json.loads(os.read(self._rfd, MAX_RECORD + 100) or b"{}")
                except ValueError:
                    payload = {}
            os.close(self._rfd)
        self.result = TaskResult(
            self.name,
            self.pid,
            status,
            exit_code,
            sig,
            seconds,
            payload.get("value"),
            payload.get("error"),
            self.role,
        )
        self.ctx.send(
            {
                "type": "task",
                "testcase": self.ctx.name,
                "name": self.name,
                "role": self.role,
                "pid": self.pid,
                "comm": "python3",
                "status": status,
                "signal": sig,
                "si_code": None,
                "exit_code": exit_code,
                "seconds": seconds,
                "error": self.result.error,
                "expected_signal": self.expect_signal,
            }
        )


# --- LKDTM: provoke a crash type (the lkdtm variant family, issue 13) ---------------------

LKDTM_DIRECT = "/sys/kernel/debug/provoke-crash/DIRECT"
MAX_LKDTM_LIST = 1 << 16  # the list of crash types is ~2 KiB


def lkdtm_types() -> list[str]:
    """The crash types this kernel's LKDTM offers: reading any of its debugfs files
    prints "Available crash types:" and one name a line (drivers/misc/lkdtm/core.c)."""
    try:
        with open(LKDTM_DIRECT) as f:
            text = f.read(MAX_LKDTM_LIST)
    except OSError:
        return []
    return [w.strip() for w in text.splitlines()[1:] if w.strip()]


def _lkdtm_write(crashtype: str, cpu: int) -> str:
    # One CPU, the last: a crash type that never returns (a soft lockup) then holds a
    # CPU that is not the reboot CPU (0), so the orderly power-off can still migrate there.
    os.sched_setaffinity(0, {cpu})
    kmsg(f"lkdtm provoke {crashtype}")
    fd = os.open(LKDTM_DIRECT, os.O_WRONLY)
    try:
        written = os.write(fd, crashtype.encode())
    finally:
        os.close(fd)
    return f"write returned {written}"


def _task_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def lkdtm_provoke(
    t: Context,
    crashtype: str,
    *,
    timeout: float = 30.0,
    settle: float = 0.0,
    expect_signal: str | None = None,
) -> None:
    """Write `crashtype` to LKDTM's DIRECT file from a probe task and record its fate.

    The kernel's report on the console decides the cell's class; the probe's fate
    (returned, died of SIGSEGV after an oops, stuck) is context. `settle` > 0: the
    crash type never returns (SOFTLOCKUP spins with preemption off, HUNG_TASK sleeps
    uninterruptibly), so SIGKILL can neither end nor reap the probe; the harness waits
    `settle` seconds for the detectors instead and leaves it. Meanwhile it forks and
    reaps a short-lived child each second: a task's exit queues an RCU callback, so a
    grace period is pending and RCU's stall detector has one to time, as on any busy
    system.
    """
    t.require(
        os.path.exists(LKDTM_DIRECT),
        "lkdtm_available",
        f"{LKDTM_DIRECT} exists (CONFIG_LKDTM, debugfs mounted)",
    )
    offered = lkdtm_types()
    t.require(
        crashtype in offered,
        "lkdtm_crashtype",
        f"this kernel's LKDTM offers {crashtype}",
        offered=len(offered),
    )
    cpu = max(os.sched_getaffinity(0))
    probe = t.spawn(
        f"lkdtm-{crashtype.lower()}",
        _lkdtm_write,
        crashtype,
        cpu,
        role="probe",
        expect_signal=expect_signal,
    )
    if settle <= 0:
        res = probe.wait(timeout)
        t.event(
            f"{crashtype}: probe {res.status}",
            status=res.status,
            signal=res.signal,
            exit_code=res.exit_code,
            value=res.value,
            error=res.error,
        )
        return
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline and not probe.poll():
        child = os.fork()
        if child == 0:
            os._exit(0)
        os.waitpid(child, 0)
        time.sleep(1.0)
    state = "returned" if probe.result is not None else _task_state(probe.pid)
    t.event(f"{crashtype}: probe after {settle:g} s: {state}", state=state, cpu=cpu)
