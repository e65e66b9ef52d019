"""The lab's on-disk cache: content-addressed directories, atomic writes, locks.

Layout under the cache root:
  src/<source-id>/tree          pristine kernel sources (never written after extraction)
  patched/<id>-<series>/tree    hard-link copies with a patch series applied
  trees/<tree-key>/             out-of-tree build directories shared by variants
  kernels/<key>/                build outputs, keyed by every input (see lab/build/)
  images/, probes/              guest images and host probes
  locks/                        lock files (flock), one per resource
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def digest(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return hashlib.sha256(data).hexdigest()


def digest_json(obj: Any) -> str:
    """A stable hash of JSON-able data (sorted keys, no whitespace variance)."""
    return digest(json.dumps(obj, sort_keys=True, separators=(",", ":")))


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def locked(
    lock_file: Path, shared: bool = False, on_wait: Callable[[], None] | None = None
) -> Iterator[None]:
    """Hold an flock on lock_file (created if needed) for the duration; `on_wait` is
    called once if another holder makes us wait (to say so: builds take minutes)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)


def try_lock(lock_file: Path) -> int | None:
    """Take an exclusive flock without waiting; return the fd or None if busy."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, for a moment, in
    every thread)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


_UMASK = _umask()
FILE_MODE = 0o666 & ~_UMASK  # what open() gives a new file (0644 under umask 022)


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in directory durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every regular file and directory under root (symlinks are not followed):
    what a marker written after it (cell.json, a rename) promises is then on disk."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a file so readers see the old or the new content, never a torn one, even
    after a power loss. Its mode honours the umask (mkstemp alone would give 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), FILE_MODE)
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


@contextlib.contextmanager
def staging_dir(final: Path) -> Iterator[Path]:
    """A scratch directory next to `final`, renamed onto it on success.

    If `final` appeared meanwhile (another process won the race), the scratch
    copy is dropped: both hold the same content-addressed data.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp's 0700 would hide a merged run
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def memo_get(memo: Path, key: str) -> str | None:
    """A remembered value (e.g. a file's digest) from a small JSON map, if known."""
    try:
        known: dict[str, str] = read_json(memo)
    except (FileNotFoundError, ValueError):
        return None
    return known.get(key)


def memo_put(memo: Path, lock_file: Path, key: str, value: str) -> None:
    """Remember key -> value; read-modify-write under a lock so writers do not race."""
    with locked(lock_file):
        try:
            known: dict[str, str] = read_json(memo)
        except (FileNotFoundError, ValueError):
            known = {}
        known[key] = value
        write_json(memo, known)
