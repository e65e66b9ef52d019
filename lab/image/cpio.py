"""Deterministic newc ("070701") cpio archives, the format the kernel unpacks as an initramfs.

Writing the archive ourselves is what lets an unprivileged builder put device nodes, root-owned
files and setuid-free modes into an image: nothing is created on the host file system, so there is
no mknod, no chown and no loop mount. Pure functions only; compression is the caller's business
apart from the small gzip helpers at the end, which pin every header byte gzip would otherwise
take from the clock.
"""

from __future__ import annotations

import gzip
import stat
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
HEADER_LEN = 110  # 6 bytes of magic + 13 fields of 8 hex digits

# A fixed compression level keeps the bytes reproducible; 6 is gzip's default and the measured
# sweet spot here (-9 and xz cost seconds for a few percent).
GZIP_LEVEL = 6


class CpioError(ValueError):
    """Malformed archive input or an entry that cannot be written."""


@dataclass(frozen=True)
class Entry:
    """One archive member. `name` is relative ("usr/bin/x", no leading slash); `mode` is a full
    st_mode (type bits + permissions); `data` is file content or, for a symlink, its target."""

    name: str
    mode: int
    data: bytes = b""
    uid: int = 0
    gid: int = 0
    rdev_major: int = 0
    rdev_minor: int = 0

    @property
    def kind(self) -> str:
        """One letter as in `ls -l`: '-', 'd', 'l', 'c', 'b', 'p', 's' or '?'."""
        return _KIND.get(stat.S_IFMT(self.mode), "?")

    @property
    def perm(self) -> int:
        return stat.S_IMODE(self.mode)


_KIND = {
    stat.S_IFREG: "-",
    stat.S_IFDIR: "d",
    stat.S_IFLNK: "l",
    stat.S_IFCHR: "c",
    stat.S_IFBLK: "b",
    stat.S_IFIFO: "p",
    stat.S_IFSOCK: "s",
}


def file(name: str, data: bytes, perm: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(normalize_name(name), stat.S_IFREG | _perm(perm), data, uid, gid)


def directory(name: str, perm: int = 0o755, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(normalize_name(name), stat.S_IFDIR | _perm(perm), b"", uid, gid)


def symlink(name: str, target: str) -> Entry:
    if not target:
        raise CpioError(f"symlink {name!r} has an empty target")
    return Entry(normalize_name(name), stat.S_IFLNK | 0o777, target.encode())


def chardev(name: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(
        normalize_name(name), stat.S_IFCHR | _perm(perm), rdev_major=major, rdev_minor=minor
    )


def _perm(perm: int) -> int:
    if perm & ~0o7777:
        raise CpioError(f"permission bits {perm:#o} carry more than 0o7777")
    return perm


def normalize_name(name: str) -> str:
    """Guest path -> archive name: "/usr/bin/x" and "./usr/bin/x" both become "usr/bin/x".

    Rejects "..", empty components and the root itself, so no entry can land outside the
    initramfs or be ambiguous about which file it overrides."""
    stripped = name.lstrip("/")
    if stripped.startswith("./"):
        stripped = stripped[2:]
    parts = stripped.split("/")
    if not stripped or any(p in ("", ".", "..") for p in parts):
        raise CpioError(f"bad archive path {name!r}")
    return stripped


def parents(name: str) -> Iterator[str]:
    """ "a/b/c" -> "a", "a/b": the directories the kernel needs before it can create "a/b/c"."""
    parts = name.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


def _header(ino: int, entry: Entry, nlink: int, filesize: int, namesize: int) -> bytes:
    fields = (
        ino,
        entry.mode,
        entry.uid,
        entry.gid,
        nlink,
        0,  # mtime: fixed, so the bytes never depend on when the image was built
        filesize,
        0,  # devmajor/devminor of the file system the file "came from": none
        0,
        entry.rdev_major,
        entry.rdev_minor,
        namesize,
        0,  # check: only used by the "070702" crc variant
    )
    for value in fields:
        if not 0 <= value <= 0xFFFFFFFF:
            raise CpioError(f"{entry.name!r}: header field {value} does not fit newc's 32 bits")
    return MAGIC + b"".join(b"%08X" % v for v in fields)


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _member(ino: int, entry: Entry, nlink: int) -> bytes:
    name = entry.name.encode() + b"\0"
    kind = stat.S_IFMT(entry.mode)
    if kind not in (stat.S_IFREG, stat.S_IFLNK) and entry.data:
        raise CpioError(f"{entry.name!r}: only files and symlinks carry data")
    head = _header(ino, entry, nlink, len(entry.data), len(name))
    return head + name + _pad(HEADER_LEN + len(name)) + entry.data + _pad(len(entry.data))


def write_newc(entries: Iterable[Entry]) -> bytes:
    """Serialize entries as one newc archive, deterministically.

    Members are sorted by name (a parent's name is a prefix of its children's, so it always
    comes first, which the kernel requires: it does not create missing parents). Inode numbers
    are the 1-based position in that order. Duplicate names are an error: within one archive
    there is no defined winner. Hard links are not written (each file carries its own data):
    the kernel's link table is per archive anyway and a few duplicated bytes compress away."""
    ordered = sorted(entries, key=lambda e: e.name)
    out = bytearray()
    previous: str | None = None
    for ino, entry in enumerate(ordered, start=1):
        if entry.name == previous:
            raise CpioError(f"duplicate archive entry {entry.name!r}")
        previous = entry.name
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        out += _member(ino, entry, nlink)
    out += _member(0, Entry(TRAILER, 0), 1)
    return bytes(out)


def read_newc(data: bytes) -> list[Entry]:
    """Parse one or more concatenated (uncompressed) newc archives, as the kernel does.

    Zero padding between archives is skipped, so `cat a.cpio b.cpio` reads as a then b. Hard
    links (nlink > 1 with an empty body) come back as they are stored, without resolution."""
    entries: list[Entry] = []
    pos = 0
    size = len(data)
    while pos < size:
        if data[pos] == 0:  # padding after a trailer (GNU cpio pads to 512 bytes)
            pos += 1
            continue
        if data[pos : pos + 6] != MAGIC:
            raise CpioError(f"no newc header at offset {pos}")
        if pos + HEADER_LEN > size:
            raise CpioError(f"truncated header at offset {pos}")
        try:
            f = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        except ValueError as exc:
            raise CpioError(f"bad hex in header at offset {pos}") from exc
        mode, uid, gid, filesize = f[1], f[2], f[3], f[6]
        rmajor, rminor, namesize = f[9], f[10], f[11]
        name_start = pos + HEADER_LEN
        name_end = name_start + namesize
        if namesize == 0 or name_end > size or data[name_end - 1] != 0:
            raise CpioError(f"bad name at offset {pos}")
        name = data[name_start : name_end - 1].decode()
        body_start = name_end + (-(HEADER_LEN + namesize) % 4)
        body_end = body_start + filesize
        if body_end > size:
            raise CpioError(f"truncated body of {name!r} at offset {pos}")
        pos = body_end + (-filesize % 4)
        if name == TRAILER:
            continue
        entries.append(Entry(name, mode, data[body_start:body_end], uid, gid, rmajor, rminor))
    return entries


def flatten(entries: Iterable[Entry]) -> dict[str, Entry]:
    """The tree the kernel ends up with: a later entry of the same name replaces an earlier one
    (that is how an appended overlay overrides the base)."""
    tree: dict[str, Entry] = {}
    for entry in entries:
        tree[entry.name] = entry
    return tree


def listing(entries: Iterable[Entry]) -> list[str]:
    """`ls -l`-like lines, for humans and test failure messages."""
    lines = []
    for e in entries:
        if e.kind in "cb":
            size = f"{e.rdev_major},{e.rdev_minor}"
        else:
            size = str(len(e.data))
        target = f" -> {e.data.decode()}" if e.kind == "l" else ""
        lines.append(f"{e.kind}{e.perm:04o} {e.uid}/{e.gid} {size:>9} {e.name}{target}")
    return lines


def gzip_bytes(data: bytes) -> bytes:
    """gzip with a zero mtime and no file name, so equal input gives equal output."""
    return gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)


def gunzip_all(data: bytes) -> bytes:
    """Decompress concatenated gzip members (`cat base.gz overlay.gz`), as the kernel does."""
    out = bytearray()
    while data:
        d = zlib.decompressobj(wbits=31)
        out += d.decompress(data)
        out += d.flush()
        if not d.eof:
            raise CpioError("truncated gzip stream")
        data = d.unused_data.lstrip(b"\0")
    return bytes(out)


def tree_entries(files: Mapping[str, tuple[bytes, int]], dir_perm: int = 0o755) -> list[Entry]:
    """Regular files plus every parent directory they need, ready for write_newc.

    `files` maps guest paths to (content, permission bits). A mode that already carries type
    bits must be a regular file's."""
    entries: dict[str, Entry] = {}
    for path, (content, mode) in files.items():
        kind = stat.S_IFMT(mode)
        if kind not in (0, stat.S_IFREG):
            raise CpioError(f"{path!r}: only regular files are supported here (mode {mode:#o})")
        entry = file(path, content, stat.S_IMODE(mode))
        if entry.name in entries:
            raise CpioError(f"{path!r} given twice")
        entries[entry.name] = entry
    for name in list(entries):
        for parent in parents(name):
            existing = entries.get(parent)
            if existing is None:
                entries[parent] = directory(parent, dir_perm)
            elif not stat.S_ISDIR(existing.mode):
                raise CpioError(f"{parent!r} is both a file and a directory")
    return list(entries.values())
