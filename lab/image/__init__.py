"""The guest image: a gzip'd newc initramfs with static busybox and Debian's Python 3.11.

Pipeline (each step a function; only the edges touch the network or the disk):

    recipe_key -> cache hit? -> apt update / resolve / download (private apt dir, any arch)
               -> unpack .debs (ar + tar, in Python) -> merge -> trim -> add /init, /etc, /dev
               -> precompile .pyc on the host -> write newc -> gzip -> atomic publish

The base image is cached under `<cache_root>/images/<deb_arch>/<key>/` where the key hashes the
recipe (not the resolved package versions: a cache hit must not need the network). Use
`refresh=True` to pick up new Debian updates. Per-run files go into a small overlay archive that
is appended to the base (`build_overlay`, `write_initrd`), so editing a test case never rebuilds
the base.

Modules: recipe (records, defaults, the key; pure), sources (apt sources, recipe_for), deb and
tree (pure archive work), pyc (compileall), apt (private apt), base (cache and build),
packages (other guest-arch packages), overlay (per-run files, write_initrd).
"""

from __future__ import annotations

from lab.image import cpio
from lab.image.apt import AptDir, apt_resolve, apt_update, fetch_debs, parse_print_uris
from lab.image.base import build_base, read_init
from lab.image.deb import deb_entries, read_ar
from lab.image.overlay import build_overlay, list_image, write_initrd
from lab.image.packages import fetch_package_files
from lab.image.pyc import compile_pyc
from lab.image.recipe import (
    BUILDER_VERSION,
    DEFAULT_INIT,
    RELEASE,
    RELEASE_SUITES,
    AptSource,
    BaseImage,
    DebFile,
    DeviceNode,
    ImageRecipe,
    Log,
    Tree,
    deb_arch_for,
    host_pyc_tag,
    recipe_key,
)
from lab.image.sources import (
    host_sources,
    parse_deb822,
    parse_one_line,
    recipe_for,
    recipe_keyrings,
    release_sources,
)
from lab.image.tree import add_skeleton, merge, trim, with_parents

__all__ = [
    "BUILDER_VERSION",
    "DEFAULT_INIT",
    "RELEASE",
    "RELEASE_SUITES",
    "AptDir",
    "AptSource",
    "BaseImage",
    "DebFile",
    "DeviceNode",
    "ImageRecipe",
    "Log",
    "Tree",
    "add_skeleton",
    "apt_resolve",
    "apt_update",
    "build_base",
    "build_overlay",
    "compile_pyc",
    "cpio",
    "deb_arch_for",
    "deb_entries",
    "fetch_debs",
    "fetch_package_files",
    "host_pyc_tag",
    "host_sources",
    "list_image",
    "merge",
    "parse_deb822",
    "parse_one_line",
    "parse_print_uris",
    "read_ar",
    "read_init",
    "recipe_for",
    "recipe_key",
    "recipe_keyrings",
    "release_sources",
    "trim",
    "with_parents",
    "write_initrd",
]
