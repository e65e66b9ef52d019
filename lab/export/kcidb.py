"""A run as KCIDB I/O data (schema v5.3): checkouts, builds and tests. Pure.

The mapping (docs/reports.md):
  checkout  one per kernel source + patch series: patchset_hash in KCIDB's formula
            (sha256 over the patches' newline-terminated sha256s), the source in comment
  build     one per kernel (arch x variant): architecture, config_name = variant,
            status PASS, or FAIL with the first compiler error for a kernel that did
            not build; the variant's parameters and the image/config digests in misc
  test      one per cell run: path lab.<test case>; status PASS when the outcome was
            expected, FAIL when not, ERROR for an infrastructure error, MISS for a
            planned cell that did not run. KCIDB has no outcome classes: the class
            (observed, expected, rule) is kept in misc, the evidence in log_excerpt.

The input is a results tree, which may come from anywhere: every string is bounded
and stripped of NUL (KCIDB forbids it), identifiers are reduced to KCIDB's patterns.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lab.results import CellResult

VERSION = {"major": 5, "minor": 3}
MAX_EXCERPT = 16384  # KCIDB's log_excerpt maxLength
MAX_TEXT = 1000  # other free text (comments, misc strings)
ORIGIN = re.compile(r"[a-z0-9_]+")
STATUS = {"expected": "PASS", "unexpected": "FAIL", "infra": "ERROR"}
# lab.ktap statuses: an expected failure passed; a TODO ran without a verdict.
SUBTEST_STATUS = {"pass": "PASS", "fail": "FAIL", "skip": "SKIP", "xfail": "PASS",
                  "todo": "DONE", "timeout": "ERROR", "error": "ERROR"}  # fmt: skip
MAX_SUBTESTS = 1000  # per cell


def _text(value: Any, limit: int = MAX_TEXT) -> str:
    return str(value if value is not None else "").replace("\0", "")[:limit]


def _path_part(name: Any) -> str:
    """A KCIDB path component: [a-zA-Z0-9_-]+."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", _text(name, 200)) or "unnamed"


def _table(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def patchset_hash(patch_sha256s: Sequence[str]) -> str:
    """KCIDB's formula; "" when no patches were applied."""
    if not patch_sha256s:
        return ""
    return hashlib.sha256("".join(f"{h}\n" for h in patch_sha256s).encode()).hexdigest()


def _checkout(origin: str, run: Mapping[str, Any], kernel: Mapping[str, Any]) -> dict[str, Any]:
    source = _table(kernel.get("source"))
    series = [p for p in kernel.get("series") or [] if isinstance(p, dict)]
    shas = [
        str(p.get("sha256")) for p in series if re.fullmatch(r"[0-9a-f]{64}", str(p.get("sha256")))
    ]
    phash = patchset_hash(shas)
    ident = _text(source.get("identity") or source.get("description") or "unknown")
    digest = hashlib.sha256(f"{ident}\n{phash}".encode()).hexdigest()
    out: dict[str, Any] = {
        "id": f"{origin}:{digest[:24]}",
        "origin": origin,
        "comment": _text(source.get("description") or ident),
        "patchset_hash": phash,
        "valid": True,  # a kernel of it was configured (its patches applied)
        "misc": {
            "source": ident,
            "series": sorted({_text(p.get("series"), 200) for p in series}),
            "patches": [_text(p.get("patch"), 300) for p in series],
        },
    }
    if isinstance(run.get("created"), str):
        out["start_time"] = run["created"]
    return out


def convert(
    run: Mapping[str, Any],
    cells: Iterable[CellResult],
    planned: Sequence[str],
    origin: str = "lab",
) -> dict[str, Any]:
    """KCIDB data for run.json `run`, its finished `cells` and its planned run cell ids."""
    if not ORIGIN.fullmatch(origin):
        raise ValueError(f"origin {origin!r}: KCIDB origins are [a-z0-9_]+")
    run_id = _text(run.get("run_id") or "run", 200)
    kernels = {str(k): _table(v) for k, v in _table(run.get("kernels")).items()}
    failures = {str(k): _text(v) for k, v in _table(run.get("build_failures")).items()}
    checkouts: dict[str, dict[str, Any]] = {}
    builds: dict[str, dict[str, Any]] = {}
    for label, k in sorted(kernels.items()):
        co = _checkout(origin, run, k)
        checkouts.setdefault(co["id"], co)
        arch, _, variant = label.partition("/")
        key = _text(k.get("key"), 64)
        build: dict[str, Any] = {
            "id": f"{origin}:{key or run_id + ':' + label}",
            "checkout_id": co["id"],
            "origin": origin,
            "architecture": _text(arch, 100),
            "config_name": _text(variant, 200),
            "status": "PASS",
            "command": _text(k.get("reproducer")),
            "misc": {
                "label": _text(label, 200),
                "key": key,
                "image_sha256": _text(k.get("image_sha256"), 64),
                "config_sha256": _text(k.get("config_sha256"), 64),
            },
        }
        total = _table(k.get("durations")).get("total")
        if isinstance(total, int | float) and not isinstance(total, bool) and total >= 0:
            build["duration"] = float(total)
        compiler = _table(k.get("toolchain")).get("gcc_version")
        if compiler:
            build["compiler"] = _text(compiler, 200)
        builds[label] = build

    def unbuilt(label: str) -> dict[str, Any]:
        """A build the run has no kernel record of (it failed, or was never reached):
        its checkout is the run's only one, or one standing for "this run's sources"."""
        if label not in builds:
            if len(kernels) == 1 or len(checkouts) == 1:
                checkout = next(iter(checkouts))
            else:
                checkout = f"{origin}:{run_id}:sources"
                checkouts.setdefault(
                    checkout, {"id": checkout, "origin": origin, "comment": f"run {run_id}"}
                )
            arch, _, variant = label.partition("/")
            builds[label] = {
                "id": f"{origin}:{run_id}:{_text(label, 200)}",
                "checkout_id": checkout,
                "origin": origin,
                "architecture": _text(arch, 100),
                "config_name": _text(variant, 200),
            }
        return builds[label]

    for label, why in sorted(failures.items()):
        unbuilt(label).update(status="FAIL", log_excerpt=_text(why, MAX_EXCERPT))
    tests: list[dict[str, Any]] = []
    done: set[str] = set()
    for c in cells:
        label = f"{c.data.get('arch')}/{c.data.get('variant')}"
        build_id = unbuilt(label)["id"]
        done.add(c.run_cell_id)
        test: dict[str, Any] = {
            "id": f"{origin}:{run_id}:{_text(c.run_cell_id, 300)}",
            "build_id": build_id,
            "origin": origin,
            "path": f"lab.{_path_part(c.data.get('testcase'))}",
            "status": STATUS.get(c.verdict, "ERROR"),
            "comment": _text(f"{c.run_cell_id}: {c.observed}: {c.detail}"),
            "misc": {
                "observed": c.observed,
                "expected": list(c.expected),
                "verdict": _text(c.verdict, 40),
                "rule": _text(c.rule, 200),
                "expected_rule": _text(c.data.get("expected_rule"), 300),
                "repeat": c.data.get("repeat") if isinstance(c.data.get("repeat"), int) else 1,
                "reproducer": _text(c.data.get("reproducer")),
                "lab": _text(_table(c.provenance.get("lab")).get("describe"), 200),
                "testcase_sha256": _text(c.provenance.get("testcase_sha256"), 64),
            },
        }
        excerpt = "\n".join(_text(e.get("text"), 2000) for e in c.lines)
        if excerpt:
            test["log_excerpt"] = excerpt[:MAX_EXCERPT]
        seconds = c.timings.get("cell")
        if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds >= 0:
            test["duration"] = float(seconds)
        env: dict[str, Any] = {
            "comment": _text(f"{c.host} {c.data.get('accel') or ''}".strip(), 200)
        }
        if c.data.get("qemu_version"):
            env["misc"] = {"qemu": _text(c.data.get("qemu_version"), 200)}
        test["environment"] = env
        tests.append(test)
        tests += _subtests(test, c.data.get("subtests"))
    for rid in planned:
        if rid in done:
            continue
        arch, variant, rest = [*rid.split("/", 2), "", ""][:3]
        tests.append(
            {
                "id": f"{origin}:{run_id}:{_text(rid, 300)}",
                "build_id": unbuilt(f"{arch}/{variant}")["id"],
                "origin": origin,
                "path": f"lab.{_path_part(rest.split('#')[0])}",
                "status": "MISS",
                "comment": _text(f"{rid}: planned, not run"),
            }
        )
    return {
        "version": dict(VERSION),
        "checkouts": list(checkouts.values()),
        "builds": list(builds.values()),
        "tests": tests,
    }


def _subtests(cell_test: Mapping[str, Any], subtests: Any) -> list[dict[str, Any]]:
    """A selftest cell's KTAP subtests (cell.json `subtests`, lab.ktap) as tests under
    the cell's path: lab.<test case>.<subtest path>."""
    out: list[dict[str, Any]] = []
    for i, st in enumerate(subtests[:MAX_SUBTESTS] if isinstance(subtests, list) else []):
        if not isinstance(st, dict) or not isinstance(st.get("name"), str):
            continue
        path = ".".join(_path_part(p) for p in st["name"].split(".")[:20])
        status = SUBTEST_STATUS.get(str(st.get("status")), "ERROR")
        test: dict[str, Any] = {
            "id": f"{cell_test['id']}:{i + 1}",
            "build_id": cell_test["build_id"],
            "origin": cell_test["origin"],
            "path": f"{cell_test['path']}.{path}",
            "status": status,
            "misc": {"ktap_status": _text(st.get("status"), 40)},
        }
        if st.get("reason"):
            test["comment"] = _text(st.get("reason"))
        out.append(test)
    return out
