"""The base image: the cache and the build."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lab import cache
from lab.errors import InfraError, LabError
from lab.image import cpio
from lab.image.apt import AptDir, _prepare_apt, apt_resolve, apt_update, fetch_debs
from lab.image.deb import deb_entries
from lab.image.pyc import compile_pyc
from lab.image.recipe import (
    BUILDER_VERSION,
    BaseImage,
    DebFile,
    ImageRecipe,
    Log,
    _no_log,
    host_pyc_tag,
    recipe_key,
)
from lab.image.tree import add_skeleton, merge, trim

# ---------------------------------------------------------------------------------------------
# The cache and the build


def _image_dir(cache_root: Path, deb_arch: str) -> Path:
    return cache_root / "images" / deb_arch


def _locked(lock_path: Path, log: Log) -> contextlib.AbstractContextManager[None]:
    """The arch's image lock (base build, other guest-arch packages)."""
    return cache.locked(
        lock_path, on_wait=lambda: log(f"waiting for another image build ({lock_path})")
    )


def _load_cached(final: Path, key: str) -> BaseImage | None:
    try:
        manifest = json.loads((final / "manifest.json").read_text())
        image = final / "base.cpio.gz"
        if manifest.get("key") != key or image.stat().st_size != manifest["compressed_size"]:
            return None
        return _image_from_manifest(image, manifest, cache_hit=True)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _image_from_manifest(path: Path, m: Mapping[str, Any], cache_hit: bool) -> BaseImage:
    return BaseImage(
        path=path,
        key=m["key"],
        deb_arch=m["deb_arch"],
        sha256=m["sha256"],
        packages=tuple(DebFile(**p) for p in m["packages"]),
        file_count=m["file_count"],
        uncompressed_size=m["uncompressed_size"],
        compressed_size=m["compressed_size"],
        build_seconds=m["build_seconds"],
        pyc=m["pyc"],
        cache_hit=cache_hit,
    )


def read_init(recipe: ImageRecipe) -> bytes:
    try:
        return recipe.init_script.read_bytes()
    except OSError as exc:
        raise LabError(
            f"cannot read the guest init script {recipe.init_script}: {exc.strerror}"
        ) from None


def build_base(
    recipe: ImageRecipe,
    deb_arch: str,
    cache_root: Path,
    *,
    refresh: bool = False,
    log: Log = _no_log,
) -> BaseImage:
    """The cached base image for `deb_arch` ("amd64", "arm64"), building it if needed.

    A cache hit reads one small JSON file and never runs apt. `refresh=True` rebuilds with
    freshly resolved package versions (and replaces the cached image for the same key)."""
    if not re.fullmatch(r"[a-z0-9]+", deb_arch):
        raise LabError(f"bad Debian arch {deb_arch!r}: use e.g. amd64 or arm64")
    init_bytes = read_init(recipe)
    pyc_tag = host_pyc_tag(recipe.python_version)
    key = recipe_key(recipe, deb_arch, init_bytes, pyc_tag)
    images = _image_dir(cache_root, deb_arch)
    final = images / key
    if not refresh:
        hit = _load_cached(final, key)
        if hit is not None:
            return hit
    try:
        with _locked(cache_root / "locks" / f"image-{deb_arch}.lock", log):
            if not refresh:
                hit = _load_cached(final, key)  # built by whoever held the lock before us
                if hit is not None:
                    return hit
            # Left by a killed builder; nobody else can be using them while we hold the lock.
            for stale in [*images.glob(".tmp-*"), *images.glob("debs/.download-*")]:
                shutil.rmtree(stale, ignore_errors=True)
            return _build_locked(recipe, deb_arch, cache_root, key, init_bytes, pyc_tag, log)
    except cpio.CpioError as exc:  # a bad path or mode in the recipe's own entries
        raise LabError(f"image recipe for {deb_arch}: {exc}") from exc
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise InfraError(
            f"building the {deb_arch} image under {cache_root} failed: {exc.strerror or exc}{where}"
        ) from exc


def _build_locked(
    recipe: ImageRecipe,
    deb_arch: str,
    cache_root: Path,
    key: str,
    init_bytes: bytes,
    pyc_tag: str | None,
    log: Log,
) -> BaseImage:
    started = time.monotonic()
    apt = AptDir(_image_dir(cache_root, deb_arch) / "apt", deb_arch)
    _prepare_apt(apt, recipe)
    apt_update(apt, recipe, log)
    debs = apt_resolve(apt, recipe)
    payloads = fetch_debs(apt, debs, _image_dir(cache_root, deb_arch) / "debs", log)

    t = time.monotonic()
    unpacked = [(d.package, deb_entries(payloads[d.package], d.filename)) for d in debs]
    tree = merge(unpacked)
    tree, removed = trim(tree, recipe.trim)
    tree = add_skeleton(tree, recipe, init_bytes)
    log(f"unpacked {len(debs)} .debs, trimmed {removed} entries, in {time.monotonic() - t:.1f} s")

    if pyc_tag is not None:
        t = time.monotonic()
        tree, count = compile_pyc(tree, recipe.pyc_dirs, recipe.pyc_skip)
        pyc = f"{count} files, unchecked-hash, by {pyc_tag}"
        log(f"precompiled {count} .pyc in {time.monotonic() - t:.1f} s")
    else:
        host = platform.python_version()
        pyc = (
            f"skipped: host Python {host} cannot write bytecode "
            f"for the guest's {recipe.python_version}"
        )
        log(pyc)

    t = time.monotonic()
    raw = cpio.write_newc(tree.values())
    packed = cpio.gzip_bytes(raw)
    log(
        f"packed {len(tree)} entries: {len(raw) / 1e6:.1f} MB -> "
        f"{len(packed) / 1e6:.2f} MB in {time.monotonic() - t:.1f} s"
    )

    manifest: dict[str, Any] = {
        "key": key,
        "deb_arch": deb_arch,
        "builder_version": BUILDER_VERSION,
        "sources": [asdict(s) for s in recipe.sources],
        "packages": [asdict(d) for d in debs],
        "file_count": len(tree),
        "trimmed_entries": removed,
        "uncompressed_size": len(raw),
        "compressed_size": len(packed),
        "sha256": cache.digest(packed),
        "pyc": pyc,
        "init_sha256": cache.digest(init_bytes),
        "build_seconds": round(time.monotonic() - started, 3),
    }
    images = _image_dir(cache_root, deb_arch)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=images))
    _write_synced(tmp / "base.cpio.gz", packed)
    _write_synced(
        tmp / "manifest.json", (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    )
    final = images / key
    if final.exists():  # refresh: move the old one aside, so the rename below cannot fail
        old = Path(tempfile.mkdtemp(prefix=f".tmp-old-{key}-", dir=images))
        final.replace(old / "x")
        tmp.replace(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.replace(final)
    log(
        f"image {final / 'base.cpio.gz'} ({len(packed) / 1e6:.2f} MB) "
        f"built in {manifest['build_seconds']:.1f} s"
    )
    return _image_from_manifest(final / "base.cpio.gz", manifest, cache_hit=False)


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    path.chmod(0o644)
