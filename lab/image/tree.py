"""The image as a file tree: merge packages, trim, add the skeleton; pure."""

from __future__ import annotations

import fnmatch
import re
import stat
from collections.abc import Callable

from lab.errors import LabError
from lab.image import cpio
from lab.image.recipe import ImageRecipe, Tree


def merge(packages: list[tuple[str, list[cpio.Entry]]]) -> Tree:
    """Union of the packages' files. Directories may repeat (first one wins; Debian ships them
    all as 0755 root); anything else shipped twice with different content is an error, as it
    would be for dpkg."""
    tree: Tree = {}
    owner: dict[str, str] = {}
    for package, entries in packages:
        for entry in entries:
            old = tree.get(entry.name)
            if old is not None:
                if stat.S_ISDIR(old.mode) and stat.S_ISDIR(entry.mode):
                    continue
                if old != entry:
                    raise LabError(
                        f"packages {owner[entry.name]} and {package} both ship /{entry.name}: "
                        "drop one of them from the image recipe"
                    )
                continue
            tree[entry.name] = entry
            owner[entry.name] = package
    return tree


def _matcher(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    """name -> whether it, or a directory above it, matches one of the fnmatch patterns."""
    if not patterns:
        return lambda _name: False
    regex = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))

    def matches(name: str) -> bool:
        return any(regex.match(p) for p in (*cpio.parents(name), name))

    return matches


def trim(tree: Tree, patterns: tuple[str, ...]) -> tuple[Tree, int]:
    """Drop every path that matches a pattern or lies below a matching directory, then any
    directory the trim left empty. Returns the new tree and how many entries went."""
    dropped = _matcher(patterns)
    kept = {n: e for n, e in tree.items() if not dropped(n)}
    # Prune directories emptied by the trim (not ones a package ships empty on purpose).
    had_children = {p for n in tree for p in cpio.parents(n)}
    while True:
        has_children = {p for n in kept for p in cpio.parents(n)}
        empty = [
            n
            for n, e in kept.items()
            if stat.S_ISDIR(e.mode) and n in had_children and n not in has_children
        ]
        if not empty:
            break
        for n in empty:
            del kept[n]
    return kept, len(tree) - len(kept)


def add_skeleton(tree: Tree, recipe: ImageRecipe, init_bytes: bytes) -> Tree:
    """The recipe's own files on top of the packages': /init, /etc/passwd, /dev nodes..."""
    out = dict(tree)
    extra: list[cpio.Entry] = [cpio.directory(p, perm) for p, perm in recipe.dirs]
    extra += [cpio.chardev(d.path, d.major, d.minor, d.perm) for d in recipe.devices]
    extra += [cpio.symlink(name, target) for name, target in recipe.symlinks]
    extra += [
        cpio.file("etc/passwd", recipe.passwd.encode(), 0o644),
        cpio.file("etc/group", recipe.group.encode(), 0o644),
        cpio.file("init", init_bytes, 0o755),
    ]
    for entry in extra:
        old = out.get(entry.name)
        if old is not None and stat.S_ISDIR(old.mode) != stat.S_ISDIR(entry.mode):
            raise LabError(
                f"image recipe entry /{entry.name} clashes with a package's /{entry.name}"
            )
        out[entry.name] = entry
    return with_parents(out)


def with_parents(tree: Tree) -> Tree:
    out = dict(tree)
    for name in list(tree):
        for parent in cpio.parents(name):
            if parent not in out:
                out[parent] = cpio.directory(parent)
            elif not stat.S_ISDIR(out[parent].mode):
                raise LabError(f"/{parent} is not a directory but /{name} needs it to be one")
    return out
