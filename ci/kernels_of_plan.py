"""`lab matrix --list --json` -> `kernels=[{"arch": A, "variant": V}, ...]` on one line,
for $GITHUB_OUTPUT (ci/per-kernel.yml's dynamic matrix). Checks the format it knows."""

import json
import sys

with open(sys.argv[1]) as f:
    plan = json.load(f)
if plan.get("format") != 1:
    sys.exit(f"{sys.argv[1]}: format {plan.get('format')!r}, this script reads format 1")
pairs = sorted({(c["arch"], c["variant"]) for c in plan["cells"]})
print("kernels=" + json.dumps([{"arch": a, "variant": v} for a, v in pairs]))
