"""Other packages for the guest arch (e.g. a static library to link a test binary against)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lab.image.apt import AptDir, _have_lists, _prepare_apt, apt_resolve, apt_update, fetch_debs
from lab.image.base import _image_dir, _locked
from lab.image.deb import deb_entries
from lab.image.recipe import DebFile, ImageRecipe, Log, _no_log

# ---------------------------------------------------------------------------------------------
# Other packages for the guest arch (e.g. a static library to link a test binary against)


def fetch_package_files(
    recipe: ImageRecipe,
    deb_arch: str,
    cache_root: Path,
    packages: tuple[str, ...],
    log: Log = _no_log,
) -> tuple[dict[str, bytes], list[DebFile]]:
    """Regular files (path -> bytes) of `packages` (only those, not their dependencies) for
    `deb_arch`, fetched through the same private apt directory as the image."""
    wanted = dataclasses.replace(recipe, packages=packages)
    with _locked(cache_root / "locks" / f"image-{deb_arch}.lock", log):
        apt = AptDir(_image_dir(cache_root, deb_arch) / "apt", deb_arch)
        _prepare_apt(apt, wanted)
        if not _have_lists(apt):
            apt_update(apt, wanted, log)
        debs = [d for d in apt_resolve(apt, wanted) if d.package in packages]
        payloads = fetch_debs(apt, debs, _image_dir(cache_root, deb_arch) / "debs", log)
    files: dict[str, bytes] = {}
    for d in debs:
        for entry in deb_entries(payloads[d.package], d.filename):
            if entry.kind == "-":
                files[entry.name] = entry.data
    return files, debs
