"""The lab's guest agent: runs the job in /lab/job.json, reports on a virtio port.

Runs inside the guest (Python 3.11 stdlib only; imports nothing from the host's
`lab` package). Started by /init after the ready marker. Results go to the
virtio-serial port named `lab.result` as JSON lines, never to the console, so
kernel messages can not corrupt them. Record types:

  {"type": "ready", "boot_id": ..., "uptime": s}
  {"type": "output", "stream": "stdout"|"stderr", "data": text}      (exec)
  {"type": "exit", "status": n}                                       (exec)
  {"type": "event"|"result"|..., ...}                                 (test cases)
  {"type": "done"}

The host treats all of it as untrusted, bounded data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import IO, Any

PORT_NAME = "lab.result"
JOB = "/lab/job.json"


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


def _uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def _pump(pipe: IO[bytes], stream: str, channel: Channel) -> None:
    while True:
        chunk = os.read(pipe.fileno(), 65536)
        if not chunk:
            return
        channel.send({"type": "output", "stream": stream, "data": chunk.decode(errors="replace")})


def run_exec(job: dict[str, Any], channel: Channel) -> int:
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
    path = find_port()
    if path is None:
        print("lab agent: no virtio port named lab.result", file=sys.stderr)
        return 3
    fd = os.open(path, os.O_WRONLY)
    try:
        channel = Channel(fd)
        channel.send(
            {
                "type": "ready",
                "boot_id": job.get("boot_id"),
                "uptime": _uptime(),
                "t": time.monotonic(),
            }
        )
        if mode == "exec":
            status = run_exec(job, channel)
            channel.send({"type": "exit", "status": status})
        else:
            channel.send({"type": "error", "message": f"unknown mode {mode!r}"})
            status = 3
        channel.send({"type": "done"})
    finally:
        os.close(fd)
    return status


if __name__ == "__main__":
    sys.exit(main())
