"""The lab as a bundle for SSH lab hosts: the `lab` package and its pure-Python deps.

A lab host needs only python3 and QEMU. What runs there (lab.hosts.remote -> lab.run.execute)
imports pexpect (+ ptyprocess) and, through lab.config, jinja2 (+ markupsafe, whose
pure-Python fallback is used: compiled extensions are left out so one bundle serves
any CPU). It does not import rich or fabric; they are not shipped.

The bundle is content-addressed: its digest covers every file's path and bytes, so
a host keeps one directory per lab version and an unchanged lab is never re-sent.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

from lab.errors import InfraError

PACKAGES = ("lab", "pexpect", "ptyprocess", "jinja2", "markupsafe")
MANIFEST = "BUNDLE"  # written into the bundle root; its presence marks a complete upload


@dataclass(frozen=True)
class Bundle:
    digest: str  # 16 hex digits of sha256 over (path, bytes) of every file
    files: tuple[tuple[str, bytes], ...]  # (path inside the bundle, content), sorted

    @property
    def size(self) -> int:
        return sum(len(b) for _, b in self.files)

    def tar_gz(self) -> bytes:
        """A reproducible tar.gz (fixed mtimes, owners and modes)."""
        raw = io.BytesIO()
        with (
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for name, data in (*self.files, (MANIFEST, self.manifest())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o644
                info.mtime = 0
                tar.addfile(info, io.BytesIO(data))
        return raw.getvalue()

    def manifest(self) -> bytes:
        lines = [f"{hashlib.sha256(b).hexdigest()}  {n}" for n, b in self.files]
        return (f"lab bundle {self.digest}\n" + "\n".join(lines) + "\n").encode()


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise InfraError(f"cannot bundle {name!r} for lab hosts: the package is not installed")
    return Path(locations[0])


@functools.lru_cache(maxsize=1)
def build() -> Bundle:
    files: list[tuple[str, bytes]] = []
    for pkg in PACKAGES:
        root = _package_dir(pkg)
        for path in sorted(root.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            files.append((f"{pkg}/{path.relative_to(root).as_posix()}", path.read_bytes()))
    files.sort()
    h = hashlib.sha256()
    for name, data in files:
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return Bundle(h.hexdigest()[:16], tuple(files))
