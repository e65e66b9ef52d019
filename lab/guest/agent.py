"""The lab's guest agent: runs the job in /lab/job.json, reports on a virtio port.

Runs inside the guest (Python 3.11 stdlib only; imports nothing from the host's
`lab` package). Started by /init after the ready marker. Results go to the
virtio-serial port named `lab.result` as JSON lines, never to the console, so
kernel messages can not corrupt them. Record types:

  {"type": "ready", "boot_id": ..., "uptime": s, "agent_pid": n, "oom_score_adj": n}
  {"type": "output", "stream": "stdout"|"stderr", "data": text}      (exec)
  {"type": "exit", "status": n}                                       (exec)
  {"type": "spawn", "name", "role", "pid", "uid", "oom_score_adj"}    (test cases)
  {"type": "task", "name", "role", "pid", "status", ...}              (test cases)
  {"type": "precondition", "check", "ok", "message", "data"}          (test cases)
  {"type": "event"|"result"|..., ...}                                 (test cases)
  {"type": "error", "message": text, "kind": ...}                     (infrastructure)
  {"type": "done"}

In test-case mode the agent runs at oom_score_adj -1000 and each test-case process
(role "harness") at -999, so the OOM scenarios they stage kill workload tasks first,
and the harness (not a panic) only when nothing else is left.
A harness that dies anyway, or a scenario whose precondition did not hold, is an
"error" record: an infrastructure failure, never an outcome of the scenario.

The host treats all of it as untrusted, bounded data.

With `"channel": "console"` in the job (jobs exported for LAVA, which keeps only the
console) the same records are printed on the console instead, one framed line each:
`LABREC <seq> <crc32 of the JSON, 8 hex> <JSON>`. Kernel messages can interleave with a
line (printk and tty writes share the UART), so the agent prints every record again
after `done` (tagged LABREP) and ends with `LABREC-END <count>`: the host keeps the
first copy of each sequence number whose checksum holds, and knows from the end line
whether any is missing. Test-case processes write their records into a SOCK_SEQPACKET
socket (one message per record, as on the virtio port); the agent frames them.
"""

from __future__ import annotations

import binascii
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

PORT_NAME = "lab.result"
JOB = "/lab/job.json"
CONSOLE_TAG = b"LABREC"  # prefix of a record framed on the console (channel "console")
REPLAY_TAG = b"LABREP"  # the same record printed again after `done`


def find_port(name: str = PORT_NAME) -> str | None:
    """The /dev node of the virtio-serial port with this name (no udev in the guest)."""
    base = "/sys/class/virtio-ports"
    try:
        ports = sorted(os.listdir(base))
    except FileNotFoundError:
        return None
    for port in ports:
        try:
            with open(f"{base}/{port}/name") as f:
                if f.read().strip() == name:
                    return f"/dev/{port}"
        except OSError:
            continue
    return None


class Channel:
    """JSON lines to the host; one lock so threads never interleave records."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    def send(self, record: dict[str, Any]) -> None:
        data = memoryview((json.dumps(record, separators=(",", ":")) + "\n").encode())
        with self._lock:
            # virtio_console takes at most 32 KiB per write(): loop until all is out.
            while data:
                data = data[os.write(self._fd, data) :]


def frame(seq: int, payload: bytes, tag: bytes = CONSOLE_TAG) -> bytes:
    """One record as a console line: tag, sequence number, CRC-32 of the JSON, the JSON."""
    return b"%s %d %08x %s\n" % (tag, seq, binascii.crc32(payload), payload)


class ConsoleChannel:
    """Records framed on the console (see the module docstring); remembered for replay."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._sent: list[bytes] = []  # the payloads, by sequence number

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def send_raw(self, payload: bytes) -> None:
        with self._lock:
            self._write(frame(len(self._sent), payload))
            self._sent.append(payload)

    def send(self, record: dict[str, Any]) -> None:
        self.send_raw(json.dumps(record, separators=(",", ":")).encode())

    def replay(self) -> None:
        """Every record again (another tag: a LAVA monitor matching LABREC lines counts
        each result once), then the end line with the count."""
        with self._lock:
            for seq, payload in enumerate(self._sent):
                self._write(frame(seq, payload, REPLAY_TAG))
            self._write(b"%s-END %d\n" % (CONSOLE_TAG, len(self._sent)))


Sink = Channel | ConsoleChannel  # where the agent's records go


def pump(sock: socket.socket, channel: ConsoleChannel) -> None:
    """Frame what test-case processes send until every writer has closed the socket."""
    while True:
        try:
            message = sock.recv(65536)
        except OSError:
            return
        if not message:
            return
        for line in message.splitlines():
            if line.strip():
                channel.send_raw(line.strip())


def _uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def _pump(pipe: IO[bytes], stream: str, channel: Sink) -> None:
    while True:
        chunk = os.read(pipe.fileno(), 65536)
        if not chunk:
            return
        channel.send({"type": "output", "stream": stream, "data": chunk.decode(errors="replace")})


def run_exec(job: dict[str, Any], channel: Sink) -> int:
    """Run a shell command, streaming its output; report its exit status."""
    proc = subprocess.Popen(
        ["/bin/sh", "-c", str(job["command"])],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd="/root",
    )
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, "stdout", channel), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, "stderr", channel), daemon=True),
    ]
    for t in pumps:
        t.start()
    status = proc.wait()
    for t in pumps:
        t.join()
    # A shell killed by a signal: report it the way sh would (128 + signal).
    return status if status >= 0 else 128 - status


def _labguest() -> Any:
    """The guest library; the overlay of a test case run always carries it."""
    sys.path.insert(0, "/lab/lib")
    import labguest

    return labguest


TESTCASES = "/lab/testcases"


def _testcase_child(
    spec: dict[str, Any], job: dict[str, Any], fd: int, testcases: str = TESTCASES
) -> int:
    """Runs in a forked child: import the test case module and call run(ctx)."""
    import importlib.util
    import traceback

    labguest = _labguest()
    name = str(spec["name"])
    ctx = labguest.Context(name, dict(job.get("params", {})), str(job.get("arch", "")), fd)
    verdict, message = "pass", ""
    precondition: str | None = None
    try:
        mod_spec = importlib.util.spec_from_file_location(
            f"testcase_{name}", f"{testcases}/{name}.py"
        )
        if mod_spec is None or mod_spec.loader is None:
            raise ImportError(f"no test case module {testcases}/{name}.py")
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
        module.run(ctx)
    except labguest.PreconditionFailed as exc:
        # The scenario did not happen: no outcome, whatever was observed so far.
        verdict, message, precondition = "error", f"precondition failed: {exc}", exc.check
        ctx.observed = None
        ctx.send(
            {
                "type": "error",
                "kind": "precondition",
                "testcase": name,
                "check": exc.check,
                "message": f"{name}: {message}",
                "data": exc.data,
            }
        )
    except labguest.Failure as exc:
        verdict, message = "fail", str(exc)
    except Exception as exc:
        verdict = "error"
        message = traceback.format_exception_only(type(exc), exc)[-1].strip()
    observed = ctx.observed if ctx.observed else ("pass" if verdict == "pass" else None)
    if verdict == "pass" and not message:
        message = ctx.message
    result: dict[str, Any] = {
        "type": "result",
        "testcase": name,
        "verdict": verdict,
        "observed": observed,
        "message": message,
        "data": ctx.data,
        "seconds": round(time.monotonic() - ctx.started, 3),
    }
    if ctx.about is not None:
        result["about"] = ctx.about
    if precondition is not None:
        result["precondition"] = precondition
    ctx.send(result)
    return 0


def run_testcases(job: dict[str, Any], channel: Sink, fd: int, testcases: str = TESTCASES) -> int:
    """Each test case in its own process group, with its own deadline."""
    lg = _labguest()
    worst = 0
    for spec in job.get("testcases", []):
        name = str(spec.get("name"))
        timeout = float(spec.get("timeout", 60))
        channel.send({"type": "testcase", "name": name, "phase": "start", "uptime": _uptime()})
        lg.kmsg(f"testcase {name} start")
        started = time.monotonic()
        # The harness runs at HARNESS_OOM_SCORE_ADJ (-999: killed only when no workload
        # task is left), from its first instruction: the agent holds that value across
        # the fork and takes its own back. Without the capability to lower it again the
        # agent keeps its value for both (the spawn record says which).
        agent_adj = lg.get_oom_score_adj()
        with contextlib.suppress(OSError):
            lg.set_oom_score_adj(lg.HARNESS_OOM_SCORE_ADJ)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.setpgid(0, 0)
                code = _testcase_child(spec, job, fd, testcases)
            finally:
                os._exit(code)
        if agent_adj is not None:
            with contextlib.suppress(OSError):
                lg.set_oom_score_adj(agent_adj)
        channel.send(
            {
                "type": "spawn",
                "testcase": name,
                "name": f"testcase:{name}",
                "role": lg.HARNESS,
                "pid": pid,
                "uid": os.getuid(),
                "oom_score_adj": lg.get_oom_score_adj(str(pid)),
                "t": 0.0,
            }
        )
        status: int | None = None
        while time.monotonic() - started < timeout:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = raw
                break
            time.sleep(0.05)
        seconds = round(time.monotonic() - started, 3)
        if status is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            channel.send(
                {
                    "type": "result",
                    "testcase": name,
                    "verdict": "error",
                    "observed": None,
                    "timeout": True,
                    "seconds": seconds,
                    "message": f"test case overran its timeout of {timeout:.0f}s",
                }
            )
            worst = max(worst, 2)
        elif os.WIFSIGNALED(status):
            sig = signal.Signals(os.WTERMSIG(status)).name
            channel.send(
                {
                    "type": "task",
                    "testcase": name,
                    "name": f"testcase:{name}",
                    "role": lg.HARNESS,
                    "pid": pid,
                    "comm": "python3",
                    "status": "signaled",
                    "signal": sig,
                    "si_code": None,
                    "exit_code": None,
                    "seconds": seconds,
                }
            )
            # The harness is not part of the scenario: its death says nothing about the
            # kernel under test, only that this run could not measure it.
            channel.send(
                {
                    "type": "error",
                    "kind": "harness",
                    "testcase": name,
                    "pid": pid,
                    "message": f"the harness of {name} (pid {pid}) died of {sig}",
                }
            )
            channel.send(
                {
                    "type": "result",
                    "testcase": name,
                    "verdict": "error",
                    "observed": None,
                    "seconds": seconds,
                    "message": f"test case process (harness) killed by {sig}",
                }
            )
            worst = max(worst, 2)
        lg.kmsg(f"testcase {name} end")
    return worst


def run_shell() -> int:
    """An interactive shell on the console; the guest powers off when it exits."""
    return subprocess.call(["setsid", "cttyhack", "/bin/sh", "-l"])


def main() -> int:
    try:
        with open(JOB) as f:
            job: dict[str, Any] = json.load(f)
    except (OSError, ValueError):
        job = {"mode": "shell"}
    mode = job.get("mode", "shell")
    if mode == "shell":
        return run_shell()
    if job.get("channel") == "console":
        return run_on_console(job, mode)
    path = find_port()
    if path is None:
        print("lab agent: no virtio port named lab.result", file=sys.stderr)
        return 3
    fd = os.open(path, os.O_WRONLY)
    try:
        return serve(job, mode, Channel(fd), fd)
    finally:
        os.close(fd)


def run_on_console(job: dict[str, Any], mode: str) -> int:
    """The records on the console (LAVA): test cases write to a socket the agent pumps."""
    channel = ConsoleChannel(sys.stdout.fileno())
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    thread = threading.Thread(target=pump, args=(reader, channel), daemon=True)
    thread.start()

    def drain() -> None:
        # Every test case has ended: what they sent comes before `done`. A workload task
        # that outlived its test case may still hold the socket open, so the wait is bounded.
        writer.close()
        thread.join(10)

    try:
        return serve(job, mode, channel, writer.fileno(), drain)
    finally:
        writer.close()
        channel.replay()


def serve(
    job: dict[str, Any],
    mode: str,
    channel: Sink,
    fd: int,
    before_done: Callable[[], None] = lambda: None,
) -> int:
    """Run the job, reporting on `channel`; test cases write their records to `fd`."""
    adj, adj_error = None, None
    if mode == "testcases":
        # The harness must survive the OOM scenarios it stages.
        lg = _labguest()
        try:
            lg.set_oom_score_adj(lg.AGENT_OOM_SCORE_ADJ)
        except OSError as exc:
            adj_error = f"the agent could not set oom_score_adj -1000: {exc}"
        adj = lg.get_oom_score_adj()
    channel.send(
        {
            "type": "ready",
            "boot_id": job.get("boot_id"),
            "uptime": _uptime(),
            "t": time.monotonic(),
            "agent_pid": os.getpid(),
            "oom_score_adj": adj,  # None: not a test-case run
        }
    )
    if mode == "exec":
        status = run_exec(job, channel)
        channel.send({"type": "exit", "status": status})
    elif adj_error is not None:
        # An unprotected harness could be the OOM killer's pick: measure nothing.
        channel.send({"type": "error", "kind": "harness", "message": adj_error})
        status = 3
    elif mode == "testcases":
        status = run_testcases(job, channel, fd)
    else:
        channel.send({"type": "error", "message": f"unknown mode {mode!r}"})
        status = 3
    before_done()
    channel.send({"type": "done"})
    return status


if __name__ == "__main__":
    sys.exit(main())
