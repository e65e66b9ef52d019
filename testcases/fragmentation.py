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
    "families": ["secretmem"],  # the secretmem series: meaningless on other families
    "timeout": 120,
    "expect": ["* -> pass"],
}

PAGES = 1024
KEYS = ("DirectMap4k", "DirectMap2M", "DirectMap1G")
SPLITS = ("direct_map_level2_splits", "direct_map_level3_splits")


def _snapshot() -> dict[str, int | None]:
    """The counters, None where the kernel does not have one (never a made-up 0)."""
    mi, vs = lg.meminfo(), lg.vmstat()
    snap: dict[str, int | None] = {k: mi.get(k) for k in KEYS}
    snap["level2_splits"] = vs.get(SPLITS[0])
    snap["level3_splits"] = vs.get(SPLITS[1])
    return snap


def _toucher(path: str) -> None:
    fd = lg.memfd_secret()
    os.ftruncate(fd, PAGES * lg.PAGE)
    m = mmap.mmap(fd, PAGES * lg.PAGE, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    for i in range(PAGES):
        m[i * lg.PAGE] = 1
    with open(path, "w") as f:
        json.dump({"during": _snapshot(), "stats": lg.secretmem_stats()}, f)


def _missing(*snaps: dict[str, int | None]) -> list[str]:
    return sorted(
        {k for snap in snaps for k, v in snap.items() if v is None and k != "DirectMap1G"}
    )


def run(t: lg.Context) -> None:
    before = _snapshot()
    # DirectMap1G is absent when the CPU has no GB pages; everything else is x86_64's.
    t.require(
        not _missing(before),
        "counters",
        f"the direct-map counters exist (missing: {_missing(before)})",
        before=before,
    )
    # The positive control needs 2M entries to split.
    t.require(
        (before["DirectMap2M"] or 0) > 0,
        "direct_map_2m",
        f"the direct map has 2M entries (DirectMap2M {before['DirectMap2M']} kB)",
        before=before,
    )
    res = t.task("toucher", _toucher, "/tmp/frag.json", role="worker", timeout=90)
    t.check(res.ok, f"toucher ended {res.status} {res.signal} {res.error}")
    with open("/tmp/frag.json") as f:
        during = json.load(f)
    after = _snapshot()
    t.require(
        not _missing(during["during"], after),
        "counters",
        f"the counters still exist (missing: {_missing(during['during'], after)})",
    )
    delta = {k: (during["during"][k] or 0) - (before[k] or 0) for k in before}
    t.event("direct map", before=before, during=during["during"], after=after, delta=delta)
    pooled = t.params.get("pool") in ("cma", "pmd") or t.params.get("reserve")
    stats = during["stats"]
    if pooled:
        t.require(
            "fallback_pages" in stats,
            "counters",
            f"the lab kernel's fallback_pages counter exists (stats: {stats})",
        )
        if not stats["fallback_pages"]:
            t.check(
                delta["level2_splits"] == 0,
                f"pool pages split {delta['level2_splits']} 2M direct-map entries",
            )
    else:
        # Spec 3(g) U*: +1 level-2 split per distinct 2M region hit (between
        # ceil(N/512) and N, fewer if a region was already split). The positive control
        # that shows the counters are live, which makes the pool variants' 0 mean
        # something.
        t.check(
            delta["level2_splits"] > 0,
            f"{PAGES} secret pages split no 2M direct-map entry (spec 3(g) predicts splits)",
        )
    t.check(
        after["DirectMap4k"] >= during["during"]["DirectMap4k"],
        "6.1 never collapses a split direct map",
    )
    t.observe("pass", before=before, during=during["during"], after=after, delta=delta, stats=stats)
