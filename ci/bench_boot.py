#!/usr/bin/env python3
"""Boot benchmark: median boot-to-ready and boot-to-first-command over N boots per arch.

Prints figures; asserts nothing (timings on shared machines are noisy). Each boot is
`lab boot --exec true --json`; "ready" is QEMU launch -> the guest's ready marker,
"first command" is QEMU launch -> the agent reporting that `true` finished.

    python ci/bench_boot.py [--boots 5] [--arch x86_64 --arch arm64] [--config lab.toml]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boots", type=int, default=5)
    ap.add_argument("--arch", action="append", default=[])
    ap.add_argument("--variant", default="")
    ap.add_argument("--config", default="lab.toml")
    args = ap.parse_args()
    arches = args.arch or ["x86_64", "arm64"]
    print(
        f"{'arch':8} {'accel':5} {'boots':>5} {'ready median':>13} {'first cmd median':>17} "
        f"{'total median':>13}"
    )
    for arch in arches:
        ready, first, total, accel = [], [], [], "?"
        for _ in range(args.boots):
            argv = [
                sys.executable,
                "-m",
                "lab",
                "--config",
                args.config,
                "boot",
                "--arch",
                arch,
                "--exec",
                "true",
                "--json",
            ]
            if args.variant:
                argv += ["--variant", args.variant]
            p = subprocess.run(argv, capture_output=True, text=True)
            if p.returncode != 0:
                print(f"{arch}: boot failed (exit {p.returncode}): {p.stderr.strip()[-300:]}")
                return 1
            info = json.loads(p.stdout)
            accel = info["accel"]
            ready.append(info["timings"]["ready"])
            first.append(info["timings"]["command_done"])
            total.append(info["timings"]["total"])
        print(
            f"{arch:8} {accel:5} {args.boots:>5} {statistics.median(ready):>12.2f}s "
            f"{statistics.median(first):>16.2f}s {statistics.median(total):>12.2f}s"
        )
        print(f"{'':8} ready: {' '.join(f'{x:.2f}' for x in ready)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
