"""Merge shard runs into one run directory."""

from __future__ import annotations

import collections
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lab import cache, results
from lab.errors import UserError
from lab.report.clean import _dict, _line, _list
from lab.report.render import render

# --- merge ------------------------------------------------------------------------------------


def _matrix_run(run_dir: Path) -> dict[str, Any]:
    meta = results.load_run(run_dir)
    if not isinstance(meta, dict) or not isinstance(meta.get("cells"), list):
        raise UserError(f"{run_dir}: not a matrix run (run.json has no list of cells)")
    cfg = meta.get("config")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("sha256"), str):
        raise UserError(f"{run_dir}: run.json has no config sha256")
    return meta


def _merge_keyed(into: dict[str, Any], label: str, value: Any, what: str, src: Path) -> None:
    """Add a kernel/image entry; the same label must mean the same content-addressed key
    (paths may differ: shards run on different hosts with different cache dirs)."""
    have = into.get(label)
    if have is None:
        into[label] = value
        return
    k1 = have.get("key") if isinstance(have, dict) else have
    k2 = value.get("key") if isinstance(value, dict) else value
    if k1 != k2:
        raise UserError(
            f"{src}: {what} {label} has key {k2}, another run has {k1}; "
            "the runs did not build the same thing"
        )


def _copy_cell(run_dir: Path, src: Path, dest: Path) -> None:
    """Copy a cell directory's regular files and subdirectories; a symlink is left out
    (a copied results tree must not pull e.g. /etc/passwd into the merged run)."""
    dest.mkdir()
    for path in sorted(src.iterdir()):
        if path.is_symlink():
            continue
        if path.is_dir():
            _copy_cell(run_dir, path, dest / path.name)
        elif path.is_file():
            try:
                f = results.open_inside(run_dir, path)
            except ValueError as exc:
                raise UserError(f"merge: {path}: {exc}") from None
            with f, open(dest / path.name, "wb") as out:
                shutil.copyfileobj(f, out)


def merge(runs: Sequence[Path], out: Path) -> Path:
    """Merge shard runs of one config into a new run directory `out`, then render it.

    The new run is assembled next to `out` and renamed into place, so a failed merge
    leaves nothing behind.
    """
    if not runs:
        raise UserError("merge: no runs given")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists; merge writes a new run directory")
    metas = [_matrix_run(r) for r in runs]
    shas = {m["config"]["sha256"] for m in metas}
    if len(shas) > 1:
        listing = ", ".join(
            f"{r.name}: {m['config']['sha256'][:12]}" for r, m in zip(runs, metas, strict=True)
        )
        raise UserError(f"merge: the runs used different configs ({listing})")

    planned: dict[str, dict[str, Any]] = {}
    kernels: dict[str, Any] = {}
    images: dict[str, Any] = {}
    failures: dict[str, Any] = {}
    cells: dict[str, tuple[Path, Mapping[str, Any]]] = {}  # run cell id -> (dir, cell.json)
    for r, m in zip(runs, metas, strict=True):
        for c in m["cells"]:
            if isinstance(c, dict) and isinstance(c.get("id"), str):
                planned.setdefault(c["id"], c)
        for label, k in _dict(m.get("kernels")).items():
            _merge_keyed(kernels, label, k, "kernel", r)
        for arch, i in _dict(m.get("images")).items():
            _merge_keyed(images, arch, i, "image", r)
        for label, msg in _dict(m.get("build_failures")).items():
            failures.setdefault(label, msg)
        records, unreadable = results.scan_cells(r)
        if unreadable:
            u = unreadable[0]
            raise UserError(
                f"merge: {u.dir}: unreadable cell ({_line(u.reason, 300)}); run "
                f"`lab matrix --resume {r}` to run it again, or remove the directory"
            )
        for rec in records:
            rid = rec.run_cell_id
            if rid in cells:
                other, data = cells[rid]
                if data != rec.data:
                    raise UserError(
                        f"merge: cell {rid} has different results in {other.parent.parent} and {r}"
                    )
                continue
            cells[rid] = (rec.dir, rec.data)
    names = collections.Counter(d.name for d, _ in cells.values())
    clash = [n for n, k in names.items() if k > 1]
    if clash:
        raise UserError(f"merge: two different cells use the directory cells/{clash[0]}")

    first = metas[0]
    sel = {k: v for k, v in _dict(first.get("selection")).items() if k != "shard"}
    if all(
        {k: v for k, v in _dict(m.get("selection")).items() if k != "shard"} == sel for m in metas
    ):
        selection: dict[str, Any] = {**sel, "shard": None}
    else:
        # Different selections (e.g. one run per arch): `--resume` re-plans from the
        # union of the patterns, which is a superset when the runs differ in more than
        # one dimension; the originals are kept for the record.
        def union(key: str) -> list[Any]:
            vals = [v for m in metas for v in _list(_dict(m.get("selection")).get(key))]
            return list(dict.fromkeys(v for v in vals if isinstance(v, str)))

        selection = {
            "variants": union("variants"),
            "arches": union("arches"),
            "testcases": union("testcases"),
            "repeat": max(
                n if isinstance(n := _dict(m.get("selection")).get("repeat"), int) else 1
                for m in metas
            ),
            "shard": None,
            "merged_selections": [m.get("selection") for m in metas],
        }
    ids = [str(m.get("run_id") or r.name) for r, m in zip(runs, metas, strict=True)]
    versions = list(dict.fromkeys(str(m.get("lab_version")) for m in metas))
    missing = sorted(set(planned) - set(cells))
    created = [str(m["created"]) for m in metas if m.get("created")]
    finished = [str(m["finished"]) for m in metas if m.get("finished")]
    meta = {
        "run_id": out.name,
        "lab_version": ", ".join(versions),
        "created": min(created) if created else results.now(),
        "finished": max(finished) if finished else results.now(),
        "merged": results.now(),
        "status": "complete" if not missing else "incomplete",
        "host": results.host_info(),
        "hosts": {i: m.get("host") for i, m in zip(ids, metas, strict=True)},
        "config": first["config"],
        "selection": selection,
        "cells": list(planned.values()),
        "kernels": kernels,
        "build_failures": failures,
        "images": images,
        "not_run": missing,
        "durations": {i: m.get("durations") or {} for i, m in zip(ids, metas, strict=True)},
        "merged_from": ids,
    }
    with cache.staging_dir(out) as tmp:
        (tmp / "cells").mkdir()
        for src, _ in cells.values():
            _copy_cell(src.parent.parent, src, tmp / "cells" / src.name)
        cache.fsync_tree(tmp / "cells")
        results.write_run(tmp, meta)
    render(out)
    return out
