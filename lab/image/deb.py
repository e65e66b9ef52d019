""".deb unpacking (ar + tar, in Python); pure."""

from __future__ import annotations

import io
import shutil
import stat
import subprocess
import tarfile

from lab import prereqs
from lab.errors import LabError
from lab.image import cpio

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
