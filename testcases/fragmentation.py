"""fragmentation (x86_64): what secret pages do to the kernel's direct map."""

import json
import mmap
import os

import labguest as lg

TESTCASE = {
    "name": "fragmentation",
    "purpose": "DirectMap4k/2M/1G and direct-map split counters before, after touching 1024 "
    "secret pages, and after the process exits; pool variants must not split 2M "
    "mappings for pool pages",
    "arches": ["x86_64"],
    "timeout": 120,
    "expect": ["* -> pass"],
}

PAGES = 1024
KEYS = ("DirectMap4k", "DirectMap2M", "DirectMap1G")


def _snapshot() -> dict[str, int]:
    mi, vs = lg.meminfo(), lg.vmstat()
    snap = {k: mi.get(k, 0) for k in KEYS}
    snap["level2_splits"] = vs.get("direct_map_level2_splits", 0)
    snap["level3_splits"] = vs.get("direct_map_level3_splits", 0)
    return snap


def _toucher(path: str) -> None:
    fd = lg.memfd_secret()
    os.ftruncate(fd, PAGES * lg.PAGE)
    m = mmap.mmap(fd, PAGES * lg.PAGE, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    for i in range(PAGES):
        m[i * lg.PAGE] = 1
    with open(path, "w") as f:
        json.dump({"during": _snapshot(), "stats": lg.secretmem_stats()}, f)


def run(t: lg.Context) -> None:
    before = _snapshot()
    res = t.task("toucher", _toucher, "/tmp/frag.json", role="worker", timeout=90)
    t.check(res.ok, f"toucher ended {res.status} {res.signal} {res.error}")
    with open("/tmp/frag.json") as f:
        during = json.load(f)
    after = _snapshot()
    delta = {k: during["during"][k] - before[k] for k in before}
    t.event("direct map", before=before, during=during["during"], after=after, delta=delta)
    pooled = t.params.get("pool") in ("cma", "pmd") or t.params.get("reserve")
    stats = during["stats"]
    if pooled and not stats.get("fallback_pages"):
        t.check(
            delta["level2_splits"] == 0,
            f"pool pages split {delta['level2_splits']} 2M direct-map entries",
        )
    t.check(
        after["DirectMap4k"] >= during["during"]["DirectMap4k"],
        "6.1 never collapses a split direct map",
    )
    t.observe("pass", before=before, during=during["during"], after=after, delta=delta, stats=stats)
