#!/usr/bin/env python3
"""Hostile-input benchmark: time and peak RSS of the guest-output parsers (issue 15).

Prints figures; asserts nothing (timings on shared machines are noisy; the fast
tests in tests/test_hostile_*.py hold the bounds). Each case runs in its own child
process so that its peak RSS (`ru_maxrss`) is its own; the "baseline" row is the
child's RSS after importing lab and building the input, without running the case.
A case that runs past --timeout is killed and shown as `>TIMEOUT`.

    python ci/bench_hostile.py [--timeout 120] [--case NAME ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

MIB = 1 << 20

# Each case: name -> (description, code run in the child). `setup` builds the input
# (not timed); `run` is what is measured.
CASES: dict[str, tuple[str, str, str]] = {
    "baseline": (
        "import lab, nothing else",
        "import lab.classify, lab.vm.channel, lab.vm.machine",
        "pass",
    ),
    "panic-30k": (
        "classify one line 'Kernel panic - not syncing: ' + 30k spaces + 'x'",
        "from lab import classify\n"
        "console = 'Kernel panic - not syncing: ' + ' ' * 30_000 + 'x\\n'",
        "classify.classify(console)",
    ),
    "line-1mb": (
        "classify one 1 MB line: 'secretmem: lab variant ' + spaces + 'x' (adversarial)",
        "from lab import classify\nconsole = 'secretmem: lab variant ' + ' ' * (1 << 20) + 'x\\n'",
        "classify.classify(console)",
    ),
    "line-1mb-random": (
        "classify one 1 MB line of random printable text",
        "import random, string\nfrom lab import classify\n"
        "rnd = random.Random(1)\n"
        "console = ''.join(rnd.choices(string.printable[:94] + ' ', k=1 << 20)) + '\\n'",
        "classify.classify(console)",
    ),
    "console-32mib": (
        "feed 32 MiB of newline-less console through ConsoleLog (64 KiB writes)",
        "import tempfile, time, pathlib\nfrom lab.vm.machine import ConsoleLog\n"
        "d = pathlib.Path(tempfile.mkdtemp())\n"
        "log = ConsoleLog(d / 'console.log', d / 'console.timed.log', time.monotonic())\n"
        "chunk = b'A' * 65536",
        "for _ in range(32 * 16):\n    log.write(chunk)\nlog.close()",
    ),
    "channel-32mib": (
        'feed 32 MiB of \'{"type":"x"}\' records through channel.Reader (1 MiB feeds)',
        "from lab import channel\nr = channel.Reader()\n"
        'line = b\'{"type":"x"}\\n\'\n'
        "chunk = line * ((1 << 20) // len(line))",
        "for _ in range((32 << 20) // len(chunk)):\n    r.feed(chunk)",
    ),
}

CHILD = """
import json, resource, sys, time
{setup}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
{run}
t1 = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"seconds": t1 - t0, "rss_before_kib": before, "peak_kib": peak}}))
"""


def run_case(name: str, timeout: float) -> dict[str, float] | None:
    _, setup, run = CASES[name]
    code = CHILD.format(setup=setup, run=run)
    try:
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
    except subprocess.TimeoutExpired:
        return None
    except subprocess.CalledProcessError as exc:
        print(f"{name}: the child failed:\n{exc.stderr}", file=sys.stderr)
        return {}
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per case")
    ap.add_argument("--case", action="append", choices=sorted(CASES), default=[])
    args = ap.parse_args()
    names = args.case or list(CASES)
    print(f"python {sys.version.split()[0]}; timeout {args.timeout:.0f}s per case")
    print(f"{'case':16} {'seconds':>9} {'peak RSS MiB':>13} {'input-built MiB':>16}  what")
    for name in names:
        started = time.monotonic()
        res = run_case(name, args.timeout)
        what = CASES[name][0]
        if res is None:
            took = time.monotonic() - started
            print(f"{name:16} {'>' + format(took, '.0f'):>9} {'-':>13} {'-':>16}  {what} (killed)")
            continue
        if not res:
            print(f"{name:16} {'error':>9} {'-':>13} {'-':>16}  {what}")
            continue
        print(
            f"{name:16} {res['seconds']:9.3f} {res['peak_kib'] / 1024:13.1f} "
            f"{res['rss_before_kib'] / 1024:16.1f}  {what}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
