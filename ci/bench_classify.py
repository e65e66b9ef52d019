#!/usr/bin/env python3
"""Classifier benchmark: size, wall time and peak RSS of `lab classify --json` (issue 13).

Prints figures; asserts nothing (timings on a shared machine are noisy; the fast tests
hold only loose bounds). Each case writes its console to a temporary file and runs
`python -m lab classify --json FILE` as its own child process, so that the peak RSS
(`ru_maxrss` from wait4) is that run's alone, the interpreter and `import lab` included;
`cpu` is its user + system time, less disturbed than `wall` by a busy machine (the load
average is printed first).

Cases:
- `oom-5mb`, `oom-50mb`: a memcg OOM storm, the real x86_64 6.1 memcg OOM report of
  tests/data/corpus/x86_64-memcg-oom.log repeated with fresh pids and times (about 4 KB and
  90 lines each), with `Huh VM_FAULT_OOM` and `no killable processes` lines between.
- `line-1mb`: one 1 MB line (a kernel panic line followed by spaces and words).
- `line-1mb-lines`: the 1 MB line among 100 ordinary lines, for the regex on one line.

    python ci/bench_classify.py [--case NAME ...] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

MIB = 1 << 20
REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "data" / "corpus" / "x86_64-memcg-oom.log"


def _report() -> list[str]:
    """The memcg OOM report of the corpus log, its printk stamps removed."""
    body = CORPUS.read_bytes().partition(b"\n\n")[2].decode()
    lines = body.splitlines()
    start = next(i for i, x in enumerate(lines) if "invoked oom-killer" in x)
    end = next(i for i, x in enumerate(lines) if "Killed process" in x)
    return [x.split("] ", 1)[1] for x in lines[start : end + 1] if x.startswith("[")]


def oom_storm(size: int) -> str:
    """A console of about `size` bytes: boot lines, then OOM reports until the size."""
    report = _report()
    out = ["[    0.000000] Linux version 6.1.192+ (lab@lab) #2 SMP", "Run /init as init process"]
    total, t, n = 0, 1.0, 0
    while total < size:
        n += 1
        pid = 1000 + n
        for line in report:
            t += 0.000013
            text = line.replace("PID: 29 ", f"PID: {pid} ").replace("pid=29,", f"pid={pid},")
            text = text.replace("Killed process 29 ", f"Killed process {pid} ")
            out.append(f"[{t:12.6f}] {text}")
            total += len(out[-1]) + 1
        t += 0.001
        out.append(f"[{t:12.6f}] Huh VM_FAULT_OOM leaked out to the #PF handler. Retrying PF")
        out.append(f"[{t:12.6f}] Out of memory and no killable processes...")
        total += len(out[-1]) + len(out[-2]) + 2
    return "\n".join(out) + "\n"


def long_line(size: int) -> str:
    return "[   12.000000] Kernel panic - not syncing: " + "x " * (size // 2) + "\n"


def long_line_among(size: int) -> str:
    normal = "[    1.000000] random: crng init done\n" * 50
    return normal + long_line(size) + normal


CASES: dict[str, tuple[str, Callable[[], str]]] = {
    "oom-5mb": ("memcg OOM storm, 5 MB", lambda: oom_storm(5 * MIB)),
    "oom-50mb": ("memcg OOM storm, 50 MB", lambda: oom_storm(50 * MIB)),
    "line-1mb": ("one 1 MB line", lambda: long_line(MIB)),
    "line-1mb-lines": ("a 1 MB line among 100 lines", lambda: long_line_among(MIB)),
}


def generate(name: str, path: Path) -> None:
    """Write a case's console in a child process: a forked child's peak RSS counts the
    parent's memory at fork time, so the parent never holds a console itself."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import bench_classify as b; "
        "from pathlib import Path; Path(sys.argv[3]).write_text(b.CASES[sys.argv[2]][1]())"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), name, str(path)], check=True
    )


def run(path: Path) -> tuple[float, float, float, str, int]:
    """Wall and CPU seconds, peak RSS (MiB), outcome and kill count of one classify child."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab", "classify", "--json", str(path)],
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - started
    cpu = usage.ru_utime + usage.ru_stime
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        return took, cpu, usage.ru_maxrss / 1024, f"exit {proc.returncode}", 0
    result = json.loads(out)
    kills = result.get("fields", {}).get("kill_count", 0)
    return took, cpu, usage.ru_maxrss / 1024, result["outcome"], kills


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="run only these")
    parser.add_argument("--keep", type=Path, help="write the generated consoles here")
    args = parser.parse_args()
    names = args.case or list(CASES)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(
        f"{'case':<16} {'size':>10} {'lines':>9} {'wall':>8} {'cpu':>8} {'peak RSS':>10}  outcome"
    )
    with tempfile.TemporaryDirectory() as tmp:
        where = args.keep or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        for name in names:
            path = where / f"{name}.log"
            generate(name, path)
            size = path.stat().st_size
            with path.open("rb") as f:
                n_lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(MIB), b""))
            took, cpu, rss, outcome, kills = run(path)
            extra = f" ({kills} kills)" if kills else ""
            print(
                f"{name:<16} {size / MIB:>7.1f} MB {n_lines:>9} {took:>7.2f}s {cpu:>7.2f}s "
                f"{rss:>7.0f} MB  {outcome}{extra}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
