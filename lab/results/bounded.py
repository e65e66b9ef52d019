"""Reading a results tree that may come from elsewhere (a CI artefact, a shard from another
host): what is read from it is bounded in size and nesting and confined to it."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

MAX_CELL_JSON = 4 << 20  # cell.json, evidence.json
MAX_RUN_JSON = 64 << 20  # run.json (lists every planned cell)
MAX_DEPTH = 64  # nesting of any JSON read from a results tree or a lab host


def _depth(value: Any) -> int:
    """The nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d)
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def loads_bounded(raw: bytes, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """Parse untrusted JSON bytes. Raises ValueError naming what is wrong (too large,
    truncated or malformed, nested too deeply); never RecursionError or TypeError."""
    if len(raw) > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes")
    if not raw.strip():
        raise ValueError("empty (truncated?)")
    try:
        value = json.loads(raw)
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth} levels") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at byte {exc.pos}; truncated?)") from None
    if _depth(value) > max_depth:
        raise ValueError(f"nested deeper than {max_depth} levels")
    return value


def open_inside(root: Path, path: Path) -> BinaryIO:
    """A regular file under root, opened for reading. Raises ValueError when it resolves
    outside root (a symlink out of a copied results tree, e.g. to /etc/passwd) or is
    not a regular file (a FIFO would block); OSError when it cannot be opened."""
    real_root = root.resolve()
    real = path.resolve()
    if real_root not in real.parents:
        raise ValueError(f"resolves outside {root} (a symlink?)")
    f = os.fdopen(os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb")
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise ValueError("not a regular file")
    return f


def read_inside(root: Path, path: Path, max_bytes: int, whole: bool = True) -> bytes:
    """open_inside's file, at most max_bytes: larger is a ValueError if `whole`,
    otherwise its first max_bytes are returned."""
    with open_inside(root, path) as f:
        size = os.fstat(f.fileno()).st_size
        if whole and size > max_bytes:
            raise ValueError(f"{size} bytes, larger than {max_bytes}")
        return f.read(max_bytes)


def regular_file(root: Path, path: Path) -> bool:
    """path is a regular file inside root, symlinks resolved (what report links to)."""
    try:
        real = path.resolve()
    except OSError:
        return False
    return root.resolve() in real.parents and real.is_file()
