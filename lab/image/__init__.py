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
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import fnmatch
import hashlib
import importlib.util
import io
import json
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lab import prereqs
from lab.config import ImageSpec
from lab.errors import InfraError, LabError
from lab.image import cpio

# Bump when the builder's output for the same recipe changes (layout, trimming logic, pyc...).
BUILDER_VERSION = 1

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_INIT = REPO_ROOT / "images" / "init"

Log = Callable[[str], None]


def _no_log(_message: str) -> None:
    pass


# The lab's arch names (as `uname -m` prints them) -> Debian's.
DEB_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def deb_arch_for(arch: str) -> str:
    try:
        return DEB_ARCH[arch]
    except KeyError:
        raise LabError(f"unknown guest arch {arch!r}: use one of x86_64, arm64") from None


@dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...] = ("main",)
    signed_by: str = ""  # a keyring file; "" = the recipe's keyring


@dataclass(frozen=True)
class DeviceNode:
    path: str
    major: int
    minor: int
    perm: int = 0o666


# The guest's busybox and Python 3.11 come from Debian 12; its mirror comes from the host's
# apt sources (or lab.toml's [[image.sources]]), never from a URL written here.
RELEASE = "bookworm"
RELEASE_SUITES = (RELEASE, f"{RELEASE}-updates", f"{RELEASE}-security")
APT_ETC = Path("/etc/apt")

# With these, `import ctypes, mmap, json, os, signal, resource, threading, subprocess` works;
# python3.11-minimal's other dependencies are left out on purpose (see the lib-dynload trims).
DEFAULT_PACKAGES = (
    "busybox-static",
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "libc6",
    "libgcc-s1",
    "zlib1g",
    "libexpat1",
    "libffi8",
)

_PY = "usr/lib/python3.11"
_DYN = f"{_PY}/lib-dynload"

# Paths to drop, as fnmatch patterns on archive names ("usr/share/doc", no leading slash). A
# pattern that matches a directory drops everything below it; "*" also crosses "/".
DEFAULT_TRIM = (
    # Documentation and packaging metadata: nobody reads them in a 2-second VM.
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bug",
    "usr/share/binfmts",
    "usr/share/initramfs-tools",
    "usr/lib/binfmt.d",
    # glibc's iconv modules (20 MB): Python has its own codecs and nothing here calls iconv.
    "usr/lib/*-linux-gnu/gconv",
    # glibc's debugging and legacy helpers, never loaded by Python or busybox.
    "lib/*-linux-gnu/libmemusage.so",
    "lib/*-linux-gnu/libpcprofile.so",
    "lib/*-linux-gnu/libc_malloc_debug.so.*",
    "lib/*-linux-gnu/libthread_db.so.*",
    "lib/*-linux-gnu/libBrokenLocale.so.*",
    "lib/*-linux-gnu/libnsl.so.*",
    "lib/*-linux-gnu/libnss_compat.so.*",
    "lib/*-linux-gnu/libnss_hesiod.so.*",
    # Vector math for -fopenmp-simd code (0.5 MB on amd64); nothing in the image links it.
    "lib/*-linux-gnu/libmvec.so.*",
    # The wide-char build of expat; Python's pyexpat links libexpat.so.1.
    "usr/lib/*-linux-gnu/libexpatw.so*",
    # Stdlib parts for development, GUIs, packaging or docs.
    f"{_PY}/test",
    f"{_PY}/idlelib",
    f"{_PY}/tkinter",
    f"{_PY}/turtle.py",
    f"{_PY}/turtledemo",
    f"{_PY}/lib2to3",
    f"{_PY}/ensurepip",
    f"{_PY}/venv",
    f"{_PY}/distutils",
    f"{_PY}/pydoc_data",
    f"{_PY}/LICENSE.txt",
    f"{_PY}/*.exe",
    f"{_PY}/config-*",
    # Python wrappers whose C library is not in the image (so they could never import).
    f"{_PY}/sqlite3",
    f"{_PY}/curses",
    # Extension modules: CPython's own test modules, and those linking libraries that the
    # package set leaves out (libssl/libcrypto, libbz2, liblzma, libsqlite3, ncurses, readline,
    # libdb, libnsl/libtirpc, libuuid, libcrypt). hashlib, uuid and dbm fall back to pure Python.
    f"{_DYN}/_test*",
    f"{_DYN}/_ctypes_test.*",
    f"{_DYN}/_xxtestfuzz.*",
    f"{_DYN}/_xxsubinterpreters.*",
    f"{_DYN}/xxlimited*",
    f"{_DYN}/_hashlib.*",
    f"{_DYN}/_ssl.*",
    f"{_DYN}/_bz2.*",
    f"{_DYN}/_lzma.*",
    f"{_DYN}/_sqlite3.*",
    f"{_DYN}/_curses*",
    f"{_DYN}/readline.*",
    f"{_DYN}/_dbm.*",
    f"{_DYN}/nis.*",
    f"{_DYN}/_uuid.*",
    f"{_DYN}/_crypt.*",
    # CJK codecs (0.3 MB compressed) and their wrappers: no kernel test speaks Shift-JIS.
    f"{_DYN}/_codecs_*",
    f"{_DYN}/_multibytecodec.*",
    f"{_PY}/encodings/big5*",
    f"{_PY}/encodings/cp932.py",
    f"{_PY}/encodings/cp949.py",
    f"{_PY}/encodings/cp950.py",
    f"{_PY}/encodings/euc_*",
    f"{_PY}/encodings/gb*",
    f"{_PY}/encodings/hz.py",
    f"{_PY}/encodings/iso2022_*",
    f"{_PY}/encodings/johab.py",
    f"{_PY}/encodings/shift_jis*",
    # The pure-Python fallback of `decimal`; the C `_decimal` above is what gets imported.
    f"{_PY}/_pydecimal.py",
)

# Sources under pyc_dirs that get no precompiled .pyc: big modules a kernel test is unlikely to
# import. They still work; the guest compiles them on first import. Precompiling them would
# add ~2 MB compressed (and ~5 MB the kernel must unpack on every boot) for nothing.
DEFAULT_PYC_SKIP = tuple(
    f"{_PY}/{name}"
    for name in (
        "asyncio",
        "email",
        "http",
        "xml",
        "xmlrpc",
        "wsgiref",
        "html",
        "lib2to3",
        "pydoc.py",
        "doctest.py",
        "pdb.py",
        "mailbox.py",
        "imaplib.py",
        "nntplib.py",
        "poplib.py",
        "smtplib.py",
        "smtpd.py",
        "ftplib.py",
        "telnetlib.py",
        "pickletools.py",
        "_pyio.py",
        "cgi*.py",
        "mailcap.py",
        "webbrowser.py",
        "tomllib",
        "zoneinfo",
        "multiprocessing",
        "concurrent",
        "unittest",
        "difflib.py",
        "urllib/request.py",
        "urllib/robotparser.py",
        "logging/handlers.py",
        "logging/config.py",
        "zipfile.py",
        "tarfile.py",
        "configparser.py",
        "optparse.py",
        "statistics.py",
        "fractions.py",
        "_sysconfigdata_*.py",
        "sysconfig.py",
        "compileall.py",
        "py_compile.py",
        "pstats.py",
        "cProfile.py",
        "profile.py",
        "trace.py",
        "turtle.py",
        # Single-byte codecs other than the ones Python itself picks (utf-8, ascii, latin-1).
        "encodings/cp[0-9]*.py",
        "encodings/mac_*.py",
        "encodings/iso8859_*.py",
        "encodings/koi8_*.py",
        "encodings/kz1048.py",
        "encodings/ptcp154.py",
        "encodings/palmos.py",
        "encodings/hp_roman8.py",
        "encodings/tis_620.py",
    )
)

# Mount points and writable places. Not /sys/kernel/debug or /sys/fs/cgroup: those appear only
# once sysfs is mounted at runtime.
DEFAULT_DIRS: tuple[tuple[str, int], ...] = (
    ("proc", 0o555),
    ("sys", 0o555),
    ("dev", 0o755),
    ("tmp", 0o1777),
    ("run", 0o755),
    ("root", 0o700),
    ("etc", 0o755),
    ("lab", 0o755),
)

# The kernel opens /dev/console for init's stdio before any devtmpfs exists, and the init script
# redirects to /dev/null before it mounts devtmpfs: both must be in the archive.
DEFAULT_DEVICES = (
    DeviceNode("dev/console", 5, 1, 0o600),
    DeviceNode("dev/tty", 5, 0, 0o666),
    DeviceNode("dev/null", 1, 3, 0o666),
    DeviceNode("dev/zero", 1, 5, 0o666),
    DeviceNode("dev/random", 1, 8, 0o666),
    DeviceNode("dev/urandom", 1, 9, 0o666),
)

# python3.11-minimal ships no unversioned name.
DEFAULT_SYMLINKS = (("usr/bin/python3", "python3.11"),)

# Test cases drop privileges to `lab` (1000) or `nobody` (65534). Debian calls group 65534
# "nogroup"; "nobody" is listed too so either name resolves.
DEFAULT_PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "lab:x:1000:1000:lab:/tmp:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
DEFAULT_GROUP = "root:x:0:\nlab:x:1000:\nnogroup:x:65534:\nnobody:x:65534:\n"


@dataclass(frozen=True)
class ImageRecipe:
    sources: tuple[AptSource, ...] = ()  # see recipe_for(): the host's, or lab.toml's
    keyring: Path = Path(prereqs.DEBIAN_KEYRING)
    packages: tuple[str, ...] = DEFAULT_PACKAGES
    trim: tuple[str, ...] = DEFAULT_TRIM
    init_script: Path = DEFAULT_INIT
    dirs: tuple[tuple[str, int], ...] = DEFAULT_DIRS
    devices: tuple[DeviceNode, ...] = DEFAULT_DEVICES
    symlinks: tuple[tuple[str, str], ...] = DEFAULT_SYMLINKS
    passwd: str = DEFAULT_PASSWD
    group: str = DEFAULT_GROUP
    # The guest's Python: its stdlib directory gets precompiled .pyc when the host runs the
    # same minor version (bytecode is only portable within one minor version).
    python_version: str = "3.11"
    pyc_dirs: tuple[str, ...] = (_PY,)
    pyc_skip: tuple[str, ...] = DEFAULT_PYC_SKIP


@dataclass(frozen=True)
class DebFile:
    package: str
    version: str
    architecture: str
    filename: str
    size: int
    sha256: str
    uri: str = ""


@dataclass(frozen=True)
class BaseImage:
    path: Path
    key: str
    deb_arch: str
    sha256: str
    packages: tuple[DebFile, ...]
    file_count: int
    uncompressed_size: int
    compressed_size: int
    build_seconds: float
    pyc: str
    cache_hit: bool

    @property
    def manifest_path(self) -> Path:
        return self.path.parent / "manifest.json"


Tree = dict[str, cpio.Entry]


# ---------------------------------------------------------------------------------------------
# Where the guest packages come from: the host's apt sources (or lab.toml's), parsed here so
# users behind a local mirror or apt proxy get theirs


def _source_error(where: str, message: str) -> LabError:
    return LabError(f"{where}: {message}")


def _options(text: str, where: str) -> dict[str, str]:
    opts = {}
    for word in text.split():
        key, eq, value = word.partition("=")
        if not eq or not key:
            raise _source_error(where, f"option {word!r} is not key=value")
        opts[key.rstrip("+-").lower()] = value
    return opts


def parse_one_line(text: str, where: str) -> list[AptSource]:
    """`deb [opts] URI SUITE [COMPONENT...]` lines (sources.list, *.list); deb-src is skipped."""
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        here = f"{where}:{number}"
        kind, _, rest = line.partition(" ")
        rest = rest.strip()
        opts: dict[str, str] = {}
        if rest.startswith("["):
            inside, closed, rest = rest[1:].partition("]")
            if not closed:
                raise _source_error(here, "unclosed '[' in the options")
            opts = _options(inside, here)
        words = rest.split()
        if kind not in ("deb", "deb-src") or len(words) < 2:
            raise _source_error(here, "expected 'deb [options] URI SUITE [COMPONENT...]'")
        if kind == "deb":
            uri, suite, *components = words
            out.append(AptSource(uri, (suite,), tuple(components), opts.get("signed-by", "")))
    return out


def parse_deb822(text: str, where: str) -> list[AptSource]:
    """deb822 stanzas (*.sources): Types, URIs, Suites, Components, Signed-By, Enabled."""
    out = []
    stanzas: list[dict[str, str]] = [{}]
    field = ""
    for number, raw in enumerate(text.splitlines(), 1):
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if stanzas[-1]:
                stanzas.append({})
            field = ""
            continue
        if raw[0] in " \t":
            if not field:
                raise _source_error(f"{where}:{number}", "continuation line without a field")
            stanzas[-1][field] = (stanzas[-1][field] + "\n" + raw.strip()).lstrip("\n")
            continue
        name, colon, value = raw.partition(":")
        if not colon or not name.strip():
            raise _source_error(f"{where}:{number}", "expected 'Field: value'")
        field = name.strip().lower()
        stanzas[-1][field] = value.strip()
    for stanza in stanzas:
        if not stanza or stanza.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in stanza.get("types", "").split():
            continue
        uris, suites = stanza.get("uris", "").split(), stanza.get("suites", "").split()
        if not uris or not suites:
            raise _source_error(where, "a stanza of type deb needs URIs and Suites")
        components = tuple(stanza.get("components", "").split())
        signed_by = stanza.get("signed-by", "")
        out += [AptSource(uri, tuple(suites), components, signed_by) for uri in uris]
    return out


def host_sources(etc: Path = APT_ETC) -> list[AptSource]:
    """The host's apt sources, in apt's order: sources.list, then sources.list.d/*.list and
    *.sources by name."""
    files = [etc / "sources.list"]
    parts = etc / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    out = []
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise LabError(f"cannot read {path}: {exc.strerror}") from None
        parse = parse_deb822 if path.suffix == ".sources" else parse_one_line
        out += parse(text, str(path))
    return out


def release_sources(sources: list[AptSource], release_suites: tuple[str, ...]) -> list[AptSource]:
    """The entries that serve the guest's release suites, component main only (all the image
    needs). A Signed-By that is not a keyring file (an inline key, a fingerprint) is dropped:
    the recipe's keyring verifies that entry instead."""
    by_key: dict[tuple[str, str], list[str]] = {}
    for src in sources:
        if "main" not in src.components:
            continue
        signed_by = src.signed_by if src.signed_by.startswith("/") else ""
        for suite in src.suites:
            if suite in release_suites:
                suites = by_key.setdefault((src.uri.rstrip("/"), signed_by), [])
                if suite not in suites:
                    suites.append(suite)
    return [AptSource(uri, tuple(s), ("main",), sb) for (uri, sb), s in by_key.items()]


def recipe_for(spec: ImageSpec, images_dir: Path, etc: Path = APT_ETC) -> ImageRecipe:
    """The image recipe of a lab.toml [image] section; without [[image.sources]] the mirror
    is whatever the host's apt uses for the guest's release."""
    if spec.sources:
        sources = [AptSource(uri, suites, components) for uri, suites, components in spec.sources]
    else:
        sources = release_sources(host_sources(etc), RELEASE_SUITES)
        if not sources:
            raise LabError(
                f"no {RELEASE} entry with component main in the host's apt sources "
                f"({etc}/sources.list, {etc}/sources.list.d/*.list, *.sources): "
                "add [[image.sources]] uri = ..., suites = [...] to lab.toml (docs/lab-toml.md)"
            )
    recipe = ImageRecipe(sources=tuple(sources), init_script=images_dir / "init")
    changes: dict[str, Any] = {}
    if spec.extra_packages:
        changes["packages"] = (*recipe.packages, *spec.extra_packages)
    if spec.keyring:
        changes["keyring"] = Path(spec.keyring)
    return dataclasses.replace(recipe, **changes) if changes else recipe


def recipe_keyrings(recipe: ImageRecipe) -> tuple[str, ...]:
    """The keyring files apt verifies the recipe's sources with."""
    return tuple(sorted({src.signed_by or str(recipe.keyring) for src in recipe.sources}))


# ---------------------------------------------------------------------------------------------
# Recipe hashing (pure)


def host_pyc_tag(python_version: str) -> str | None:
    """What the host's bytecode depends on, or None when it cannot compile for the guest."""
    host = f"{sys.version_info.major}.{sys.version_info.minor}"
    if host != python_version:
        return None
    magic = importlib.util.MAGIC_NUMBER.hex()
    return f"{platform.python_implementation()} {platform.python_version()} magic {magic}"


def recipe_key(recipe: ImageRecipe, deb_arch: str, init_bytes: bytes, pyc_tag: str | None) -> str:
    """Content hash of everything that decides the image bytes, except the package versions
    apt will resolve (a cache hit must not need the network; `refresh` re-resolves)."""
    doc = {
        "builder": BUILDER_VERSION,
        "deb_arch": deb_arch,
        "sources": [asdict(s) for s in recipe.sources],
        # Order does not change the result (merge and trim are order-free), so it must not
        # change the key either.
        "packages": sorted(set(recipe.packages)),
        "trim": sorted(set(recipe.trim)),
        "dirs": sorted(recipe.dirs),
        "devices": sorted(f"{d.path}:{d.major}:{d.minor}:{d.perm:o}" for d in recipe.devices),
        "symlinks": sorted(recipe.symlinks),
        "passwd": recipe.passwd,
        "group": recipe.group,
        "python_version": recipe.python_version,
        "pyc_dirs": sorted(recipe.pyc_dirs),
        "pyc_skip": sorted(set(recipe.pyc_skip)),
        "init_sha256": hashlib.sha256(init_bytes).hexdigest(),
        "pyc": pyc_tag,
    }
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


# ---------------------------------------------------------------------------------------------
# .deb unpacking (pure)


def read_ar(data: bytes) -> dict[str, bytes]:
    """Members of a System V / GNU `ar` archive (a .deb is one), by name."""
    if not data.startswith(b"!<arch>\n"):
        raise LabError("not a .deb (no ar archive header)")
    members: dict[str, bytes] = {}
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        if header[58:60] != b"`\n":
            raise LabError(f"corrupt ar member header at offset {pos}")
        name = header[0:16].decode().rstrip(" ").rstrip("/")
        size = int(header[48:58].decode().strip())
        start = pos + 60
        members[name] = data[start : start + size]
        pos = start + size + (size & 1)  # members are 2-byte aligned
    return members


def _decompress_zstd(data: bytes, what: str) -> bytes:
    # The stdlib has no zstd before 3.14; Debian's own packages use xz, Ubuntu's zstd.
    tool = shutil.which(prereqs.program("zstd"))
    if tool is None:
        raise LabError(
            f"{what} is zstd-compressed: install the zstd package (apt-get install zstd)"
        )
    done = subprocess.run([tool, "-dcq"], input=data, capture_output=True, check=False)
    if done.returncode != 0:
        raise LabError(f"{what}: zstd -d failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def deb_entries(deb: bytes, what: str = ".deb") -> list[cpio.Entry]:
    """The files a .deb installs, as archive entries owned by root (dpkg would chown them to
    root too; the packages used here ship no other owners)."""
    members = read_ar(deb)
    names = [n for n in members if n.startswith("data.tar")]
    if len(names) != 1:
        raise LabError(f"{what}: expected one data.tar* member, found {sorted(members)}")
    payload = members[names[0]]
    if names[0].endswith(".zst"):
        payload = _decompress_zstd(payload, what)
    entries: dict[str, cpio.Entry] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r:*") as tar:
            for info in tar:
                if info.name.strip("./") == "":
                    continue  # the root directory itself
                name = cpio.normalize_name(info.name)
                perm = stat.S_IMODE(info.mode)
                if info.isdir():
                    entry = cpio.Entry(name, stat.S_IFDIR | perm)
                elif info.isreg():
                    f = tar.extractfile(info)
                    assert f is not None
                    entry = cpio.Entry(name, stat.S_IFREG | perm, f.read())
                elif info.issym():
                    entry = cpio.symlink(name, info.linkname)
                elif info.islnk():
                    # A hard link: written as a copy (see cpio.write_newc).
                    target = entries.get(cpio.normalize_name(info.linkname))
                    if target is None:
                        raise LabError(f"{what}: hard link {name} to missing {info.linkname}")
                    entry = cpio.Entry(name, target.mode, target.data)
                elif info.ischr() or info.isblk():
                    kind = stat.S_IFCHR if info.ischr() else stat.S_IFBLK
                    entry = cpio.Entry(
                        name, kind | perm, rdev_major=info.devmajor, rdev_minor=info.devminor
                    )
                elif info.isfifo():
                    entry = cpio.Entry(name, stat.S_IFIFO | perm)
                else:
                    raise LabError(f"{what}: unsupported tar member type for {name}")
                entries[name] = entry
    except (tarfile.TarError, EOFError, OSError, cpio.CpioError) as exc:
        raise LabError(f"{what}: cannot read {names[0]}: {exc}") from exc
    return list(entries.values())


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


# ---------------------------------------------------------------------------------------------
# .pyc precompilation (runs the host's compileall)


def compile_pyc(tree: Tree, roots: tuple[str, ...], skip: tuple[str, ...]) -> tuple[Tree, int]:
    """Add __pycache__/*.cpython-3XX.pyc for every regular .py under `roots`, except those
    matching `skip` (same pattern rules as trim).

    UNCHECKED_HASH pycs are never compared with their source at import, so the guest neither
    stats sources nor cares about mtimes (all 0 in the archive). ddir makes tracebacks and
    __file__ show the guest path, not the build directory. compileall runs in a child process
    with a fixed PYTHONHASHSEED: marshal writes sets in hash order, so a random seed would make
    the bytes differ between builds."""
    skipped = _matcher(skip)
    sources = {
        n: e
        for n, e in tree.items()
        if n.endswith(".py")
        and stat.S_ISREG(e.mode)
        and any(n.startswith(r + "/") for r in roots)
        and not skipped(n)
    }
    if not sources:
        return dict(tree), 0
    out = dict(tree)
    with tempfile.TemporaryDirectory(prefix="lab-pyc-") as tmp:
        for name, entry in sources.items():
            dest = Path(tmp, name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(entry.data)
        for root in roots:
            if not Path(tmp, root).is_dir():
                continue
            argv = [
                sys.executable,
                "-m",
                "compileall",
                "-q",
                "-j",
                "0",
                "--invalidation-mode",
                "unchecked-hash",
                "-d",
                "/" + root,
                str(Path(tmp, root)),
            ]
            env = {
                "PYTHONHASHSEED": "0",
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "LC_ALL": "C.UTF-8",
            }
            done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
            if done.returncode != 0:
                first = (done.stdout + done.stderr).strip().splitlines()[:3]
                raise LabError(
                    f"precompiling /{root} failed ({' | '.join(first)}): "
                    "trim the offending file in the image recipe"
                )
        count = 0
        for path in sorted(Path(tmp).rglob("*.pyc")):
            name = path.relative_to(tmp).as_posix()
            out[name] = cpio.file(name, path.read_bytes(), 0o644)
            count += 1
    return with_parents(out), count


# ---------------------------------------------------------------------------------------------
# apt, in a private directory: any arch, no root, no dpkg --add-architecture


@dataclass(frozen=True)
class AptDir:
    root: Path
    deb_arch: str

    @property
    def config(self) -> Path:
        return self.root / "apt.conf"


def _apt_conf(apt: AptDir, recipe: ImageRecipe) -> str:
    r = apt.root
    # Every Dir:: points into the private directory and the config/parts directories are empty
    # ones of ours, so the host's apt configuration, sources, keys, pinning and hooks
    # (Post-Invoke scripts) play no part. APT::Architectures makes the guest arch the only one
    # apt considers, which is what lets an amd64 host resolve arm64 packages.
    lines = [
        f'Dir "{r}/";',
        f'Dir::State "{r}/state/";',
        f'Dir::State::Lists "{r}/lists/";',
        f'Dir::State::status "{r}/status";',
        f'Dir::Cache "{r}/cache/";',
        f'Dir::Cache::archives "{r}/cache/archives/";',
        f'Dir::Log "{r}/log/";',
        f'Dir::Etc "{r}/etc/";',
        f'Dir::Etc::sourcelist "{r}/etc/sources.list";',
        f'Dir::Etc::sourceparts "{r}/etc/empty/";',
        f'Dir::Etc::parts "{r}/etc/empty/";',
        'Dir::Etc::main "/dev/null";',
        'Dir::Etc::preferences "/dev/null";',
        f'Dir::Etc::preferencesparts "{r}/etc/empty/";',
        f'Dir::Etc::trusted "{recipe.keyring}";',
        f'Dir::Etc::trustedparts "{r}/etc/empty/";',
        f'APT::Architecture "{apt.deb_arch}";',
        f'APT::Architectures {{ "{apt.deb_arch}"; }};',
        # apt drops to the _apt user for downloads when run as root; that user cannot write
        # into a caller's cache directory. Downloads are hash-checked either way.
        'APT::Sandbox::User "root";',
        'Acquire::Languages "none";',
        'Acquire::Retries "3";',
        # The private directory is guarded by the builder's own flock.
        'Debug::NoLocking "true";',
    ]
    return "\n".join(lines) + "\n"


def _sources_list(recipe: ImageRecipe) -> str:
    out = []
    for src in recipe.sources:
        for suite in src.suites:
            comps = " ".join(src.components)
            keyring = src.signed_by or recipe.keyring
            out.append(f"deb [signed-by={keyring}] {src.uri} {suite} {comps}")
    return "\n".join(out) + "\n"


def _prepare_apt(apt: AptDir, recipe: ImageRecipe) -> None:
    if not recipe.sources:
        raise LabError("the image recipe has no apt sources (lab.toml [[image.sources]])")
    for keyring in recipe_keyrings(recipe):
        if not Path(keyring).is_file():
            raise LabError(
                f"apt keyring {keyring} not found: "
                "install debian-archive-keyring or set [image] keyring in lab.toml"
            )
    if shutil.which(prereqs.program("apt-get")) is None:
        raise LabError(
            "apt-get not found: the image builder fetches guest packages with Debian's apt"
        )
    for sub in ("state", "lists/partial", "cache/archives/partial", "log", "etc/empty"):
        (apt.root / sub).mkdir(parents=True, exist_ok=True)
    (apt.root / "status").touch()
    _write_if_changed(apt.root / "etc" / "sources.list", _sources_list(recipe))
    _write_if_changed(apt.config, _apt_conf(apt, recipe))


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _run_apt(
    apt: AptDir, args: list[str], cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update({"APT_CONFIG": str(apt.config), "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"})
    try:
        return subprocess.run(
            [prereqs.program("apt-get"), "-q", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise LabError(
            f"apt-get {args[0]} for {apt.deb_arch} took over {timeout:.0f} s: "
            "check access to the mirrors"
        ) from None


def _apt_problem(done: subprocess.CompletedProcess[str]) -> str:
    """The one stderr line that says what went wrong. apt ends a failed update with a generic
    "E: Some index files failed to download"; the line naming the URL or key is more useful."""
    lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
    specific = ("Failed to fetch", "NO_PUBKEY", "GPG error", "is not signed", "Unable to locate")
    for line in lines:
        if any(s in line for s in specific):
            return line
    errors = (
        [ln for ln in lines if ln.startswith("E:")]
        or [ln for ln in lines if ln.startswith("W:")]
        or lines
    )
    return errors[0] if errors else f"exit status {done.returncode}"


def _have_lists(apt: AptDir) -> bool:
    return any(
        p.name.endswith(("Packages", "Packages.lz4", "Packages.xz", "Packages.gz"))
        for p in (apt.root / "lists").iterdir()
    )


# apt reports an unreachable mirror with warnings and exit status 0; these mark a failed update.
_UPDATE_FAILED = ("Failed to fetch", "failed to download", "GPG error", "is not signed")
_UNTRUSTED = ("NO_PUBKEY", "GPG error", "is not signed", "EXPKEYSIG")


def _update_hint(problem: str, recipe: ImageRecipe) -> str:
    if any(s in problem for s in _UNTRUSTED):
        return f"check the image recipe's keyring ({recipe.keyring})"
    if "Release file" in problem or " 404 " in problem:
        return "check the image recipe's mirror URLs and suites"
    return "check network access to the mirrors"


def apt_update(apt: AptDir, recipe: ImageRecipe, log: Log) -> None:
    suites = ", ".join(s for src in recipe.sources for s in src.suites)
    had_lists = _have_lists(apt)
    started = time.monotonic()
    done = _run_apt(apt, ["update"])
    failed = done.returncode != 0 or any(s in done.stderr for s in _UPDATE_FAILED)
    if not failed:
        if "W:" in done.stderr:
            log(f"apt update ({apt.deb_arch}) warned: {_apt_problem(done)}")
        log(f"apt update ({apt.deb_arch}: {suites}) in {time.monotonic() - started:.1f} s")
        return
    problem = _apt_problem(done)
    if had_lists and not any(s in done.stderr for s in _UNTRUSTED):
        # Offline, but with verified lists from an earlier update: good enough to rebuild from
        # the cached .debs (e.g. after an /init edit); the manifest records exact versions.
        log(
            f"apt update ({apt.deb_arch}) failed, "
            f"using the package lists from the last update: {problem}"
        )
        return
    raise LabError(
        f"apt-get update for {apt.deb_arch} ({suites}) failed: {problem}: "
        + _update_hint(problem, recipe)
    )


_URI_LINE = re.compile(
    r"^'(?P<uri>[^']+)' (?P<file>\S+) (?P<size>\d+) SHA256:(?P<sha>[0-9a-f]{64})$"
)


def parse_print_uris(text: str, deb_arch: str) -> list[DebFile]:
    """`apt-get download --print-uris` lines -> DebFile (name, version from the file name,
    where apt writes an epoch's ':' as '%3a')."""
    debs = []
    for line in text.splitlines():
        m = _URI_LINE.match(line.strip())
        if m is None:
            continue
        filename = m["file"]
        parts = urllib.parse.unquote(filename).removesuffix(".deb").split("_")
        if len(parts) != 3:
            raise InfraError(f"unexpected .deb file name from apt: {filename}")
        package, version, arch = parts
        if arch not in (deb_arch, "all"):
            raise InfraError(f"apt resolved {package} for {arch}, not {deb_arch}")
        debs.append(DebFile(package, version, arch, filename, int(m["size"]), m["sha"], m["uri"]))
    return sorted(debs, key=lambda d: d.package)


def apt_resolve(apt: AptDir, recipe: ImageRecipe) -> list[DebFile]:
    done = _run_apt(apt, ["download", "--print-uris", *recipe.packages])
    problem = _apt_problem(done) if (done.returncode != 0 or "E:" in done.stderr) else ""
    if problem:
        m = re.search(r"Unable to locate package (\S+)", done.stderr)
        suites = ", ".join(s for src in recipe.sources for s in src.suites)
        if m:
            raise LabError(
                f"package {m[1]} not found for {apt.deb_arch} in {suites}: "
                "fix the image recipe's package list"
            )
        raise LabError(f"apt cannot resolve the image packages for {apt.deb_arch}: {problem}")
    debs = parse_print_uris(done.stdout, apt.deb_arch)
    if len(debs) != len(set(recipe.packages)):
        got = {d.package for d in debs}
        raise LabError(
            f"apt resolved {sorted(got)} for {sorted(set(recipe.packages))}: "
            "fix the image recipe's package list"
        )
    return debs


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_debs(apt: AptDir, debs: list[DebFile], deb_dir: Path, log: Log) -> dict[str, bytes]:
    """The .deb bytes for each package, downloading only those not already in `deb_dir`."""
    deb_dir.mkdir(parents=True, exist_ok=True)
    missing = [d for d in debs if not (deb_dir / d.filename).is_file()]
    if missing:
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=".download-", dir=deb_dir) as tmp:
            done = _run_apt(
                apt, ["download", *(f"{d.package}={d.version}" for d in missing)], cwd=Path(tmp)
            )
            if done.returncode != 0:
                raise LabError(
                    f"downloading {', '.join(d.package for d in missing)} "
                    f"for {apt.deb_arch} failed: "
                    f"{_apt_problem(done)}: check network access to the mirrors"
                )
            for d in missing:
                got = Path(tmp, d.filename)
                if not got.is_file() or _sha256_file(got) != d.sha256:
                    raise InfraError(
                        f"apt-get download of {d.filename} gave no file or a wrong sha256"
                    )
                got.replace(deb_dir / d.filename)
        size = sum(d.size for d in missing)
        log(
            f"downloaded {len(missing)} .debs ({size / 1e6:.1f} MB) "
            f"in {time.monotonic() - started:.1f} s"
        )
    else:
        log(f"all {len(debs)} .debs already in {deb_dir}")
    out = {}
    for d in debs:
        data = (deb_dir / d.filename).read_bytes()
        if hashlib.sha256(data).hexdigest() != d.sha256:
            # A truncated or stale cached file: drop it so the next build downloads it again.
            (deb_dir / d.filename).unlink()
            raise InfraError(
                f"cached {deb_dir / d.filename} has a wrong sha256; removed it, build again"
            )
        out[d.package] = data
    return out


# ---------------------------------------------------------------------------------------------
# The cache and the build


def _image_dir(cache_root: Path, deb_arch: str) -> Path:
    return cache_root / "images" / deb_arch


@contextlib.contextmanager
def _locked(lock_path: Path, log: Log) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another image build ({lock_path})")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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
        "sha256": hashlib.sha256(packed).hexdigest(),
        "pyc": pyc,
        "init_sha256": hashlib.sha256(init_bytes).hexdigest(),
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


__all__ = [
    "AptSource",
    "BaseImage",
    "DebFile",
    "DeviceNode",
    "ImageRecipe",
    "build_base",
    "build_overlay",
    "deb_arch_for",
    "list_image",
    "write_initrd",
]
