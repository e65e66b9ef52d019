#!/usr/bin/env python3
"""Replays a recorded console for the Machine unit tests (the real tier boots QEMU).

Env: LAB_REPLAY=console log to print; LAB_REPLAY_RESULTS=JSON lines to write to the
result file named in QEMU's -chardev file,...,path= argument; LAB_REPLAY_HANG=1 keeps
running after the log (a hung guest).
"""

import os
import sys
import time

path = next((a.split("path=", 1)[1] for a in sys.argv if a.startswith("file,id=result,")), None)
with open(os.environ["LAB_REPLAY"], "rb") as f:
    data = f.read()
results = os.environ.get("LAB_REPLAY_RESULTS", "")
for line in data.splitlines(keepends=True):
    sys.stdout.buffer.write(line)
    sys.stdout.buffer.flush()
    if b"LABREADY" in line and path and results:
        time.sleep(0.05)
        with open(path, "ab") as out:
            out.write(results.encode())
    time.sleep(0.001)
if os.environ.get("LAB_REPLAY_HANG"):
    time.sleep(3600)
