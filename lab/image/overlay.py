"""The per-run overlay appended to the base image, and reading an image back."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from lab.errors import LabError
from lab.image import cpio
from lab.image.recipe import BaseImage

# ---------------------------------------------------------------------------------------------
# Per-run overlay


def build_overlay(files: Mapping[str, tuple[bytes, int]]) -> bytes:
    """A small gzip'd newc archive with `files` (guest path -> (content, permission bits)) and
    their parent directories. Appended after the base image it adds or replaces those files
    (the kernel truncates an existing file and rewrites it; a directory entry re-applies mode
    0755 to an existing directory). Deterministic: same mapping, same bytes."""
    try:
        entries = cpio.tree_entries(files)
    except cpio.CpioError as exc:
        raise LabError(f"overlay: {exc}") from None
    return cpio.gzip_bytes(cpio.write_newc(entries))


def write_initrd(base: BaseImage | Path, overlay: bytes, dest: Path) -> Path:
    """Write base + overlay as one initrd file, atomically (tmp file + rename in dest's dir).

    gzip members concatenate, and the kernel unpacks each archive in order."""
    base_path = base.path if isinstance(base, BaseImage) else base
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, base_path.open("rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
            out.write(overlay)
        Path(tmp_name).chmod(0o644)
        Path(tmp_name).replace(dest)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp_name).unlink()
        raise
    return dest


def list_image(path: Path) -> list[cpio.Entry]:
    """Entries of a (possibly base + overlay) gzip'd initrd, in archive order."""
    return cpio.read_newc(cpio.gunzip_all(path.read_bytes()))
