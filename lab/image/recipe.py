"""The guest image recipe (packages, trimming, skeleton), its records and its key; pure."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import platform
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from lab import prereqs
from lab.errors import LabError
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
