"""Kernels built elsewhere: boot a given bzImage / Image / Image.gz instead of building.

`--kernel PATH` names an image file (its `.config` or `config` beside it), a kernel
build directory (`arch/*/boot/<image>` and `.config`, what a plain `make O=DIR`
leaves) or a tuxmake output directory (`<image>`, `config`, `metadata.json`). The
image is checked before any QEMU starts: its format says its arch, which must be the
cell's; its config, when there is one, must have what the guest needs (an initramfs,
the console the arch boots on, virtio-mmio and the virtio console of the result
channel). The kernel's identity (sha256, the release `uname -r` prints, the config's
sha256) is recorded with the cell.

Reading is bounded (image size, decompressed size); nothing here starts a process.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from lab import cache
from lab.build import Kernel, kconfig, mbox
from lab.config import ArchSpec
from lab.errors import UserError, printable

MAX_IMAGE_BYTES = 256 << 20
MAX_CONFIG_BYTES = 4 << 20

# What the lab's guest needs of any kernel (kernels/config/base.config.j2 and the arch
# fragments ask for the same): the initramfs with the agent, and the two consoles.
NEEDED_ALL = {
    "CONFIG_BLK_DEV_INITRD": "the guest image is an initramfs",
    "CONFIG_RD_GZIP": "the initramfs is gzip-compressed",
    "CONFIG_BINFMT_ELF": "the agent's Python is an ELF program",
    "CONFIG_BINFMT_SCRIPT": "the agent starts as a #! script",
    "CONFIG_DEVTMPFS": "the init mounts /dev as devtmpfs",
    "CONFIG_PROC_FS": "the agent reads /proc",
    "CONFIG_SYSFS": "the agent reads /sys",
    "CONFIG_TMPFS": "the agent's scratch space",
    "CONFIG_VIRTIO_MMIO": "the result channel is a virtio-serial-device (virtio-mmio)",
    "CONFIG_VIRTIO_CONSOLE": "the result channel is a virtio console port",
}
# Per ARCH= of the cell (ArchSpec.make_arch).
NEEDED_ARCH = {
    "x86_64": {
        "CONFIG_SERIAL_8250_CONSOLE": "console=ttyS0 on microvm",
        "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES": "microvm with acpi=off lists virtio-mmio "
        "devices on the command line",
    },
    "arm64": {"CONFIG_SERIAL_AMBA_PL011_CONSOLE": "console=ttyAMA0 on virt"},
}
# ARCH= values that name the same image format.
_ARCH_FAMILY = {"x86_64": "x86", "x86": "x86", "i386": "x86", "arm64": "arm64"}
IMAGE_NAMES = ("bzImage", "Image.gz", "Image")


@dataclass(frozen=True)
class Inspected:
    """What an image file says about itself."""

    arch: str  # "x86" or "arm64"
    release: str  # `uname -r`, "" when not found
    version: str  # the whole `Linux version ...`/bzImage version string


def _gunzip(data: bytes, path: Path) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, MAX_IMAGE_BYTES + 1)
    except zlib.error as exc:
        raise UserError(f"--kernel {path}: a gzip file that does not decompress: {exc}") from None
    if len(out) > MAX_IMAGE_BYTES:
        raise UserError(f"--kernel {path}: decompresses to more than {MAX_IMAGE_BYTES >> 20} MiB")
    if not d.eof:
        raise UserError(f"--kernel {path}: a gzip file that does not decompress: truncated")
    return out


_LINUX_VERSION = re.compile(rb"Linux version (\S+)[^\0\n]{0,300}")


def inspect(data: bytes, path: Path) -> Inspected:
    """Arch and release of a kernel image (bzImage, arm64 Image, Image.gz)."""
    if data[:2] == b"\x1f\x8b":
        data = _gunzip(data, path)
    if len(data) >= 0x210 and data[0x202:0x206] == b"HdrS":
        # x86 boot protocol: kernel_version (0x20E) points at a NUL-terminated string,
        # relative to 0x200, when nonzero.
        (offset,) = struct.unpack_from("<H", data, 0x20E)
        version = ""
        if offset and offset + 0x200 < len(data):
            raw = data[offset + 0x200 : offset + 0x200 + 256].split(b"\0", 1)[0]
            version = raw.decode(errors="replace")
        return Inspected("x86", version.split(" ", 1)[0] if version else "", version)
    if len(data) >= 0x40 and data[0x38:0x3C] == b"ARM\x64":
        m = _LINUX_VERSION.search(data)
        version = m[0].decode(errors="replace") if m else ""
        release = m[1].decode(errors="replace") if m else ""
        return Inspected("arm64", release, version)
    raise UserError(
        f"--kernel {path}: not a kernel image this lab boots (an x86 bzImage, an arm64 "
        "Image or Image.gz)"
    )


def locate(path: Path, arch: ArchSpec) -> tuple[Path, Path | None]:
    """(image, config or None) for a `--kernel` argument."""
    if path.is_file():
        for name in (".config", "config"):
            if (path.parent / name).is_file():
                return path, path.parent / name
        return path, None
    if not path.is_dir():
        raise UserError(f"--kernel {path}: no such file or directory")
    image_name = Path(arch.image).name
    candidates = [path / arch.image, path / image_name] + [path / n for n in IMAGE_NAMES]
    image = next((c for c in candidates if c.is_file()), None)
    if image is None:
        raise UserError(
            f"--kernel {path}: no kernel image in it (looked for {arch.image}, "
            f"{', '.join(IMAGE_NAMES)}); pass the image file itself"
        )
    config = next((path / n for n in (".config", "config") if (path / n).is_file()), None)
    return image, config


def missing_symbols(config_text: str, arch: ArchSpec) -> list[str]:
    """The symbols the guest needs that the config lacks (not =y), in table order."""
    have = kconfig.parse_config(config_text)
    needed = {**NEEDED_ALL, **NEEDED_ARCH.get(arch.make_arch, {})}
    return [s for s in needed if have.get(s) != "y"]


def load(path: Path, arch: ArchSpec, variant: str) -> Kernel:
    """A `Kernel` for a kernel built elsewhere, checked against the cell's arch."""
    image, config = locate(path, arch)
    data = mbox.read_bounded(image, MAX_IMAGE_BYTES, f"--kernel {image}", "a kernel image")
    found = inspect(data, image)
    want = _ARCH_FAMILY.get(arch.make_arch, arch.make_arch)
    if found.arch != want:
        raise UserError(
            f"--kernel {image}: an {found.arch} kernel, but the cell's arch {arch.name} "
            f"boots {want} kernels; pass --arch {'x86_64' if found.arch == 'x86' else 'arm64'}"
            " or another image"
        )
    image_sha = cache.digest(data)
    meta: dict[str, object] = {
        "key": f"prebuilt-{image_sha[:20]}",
        "arch": arch.name,
        "variant": variant,
        "image": image.name,
        "image_sha256": image_sha,
        "config_sha256": None,
    }
    prebuilt: dict[str, object] = {
        "path": str(image.resolve()),
        "release": printable(found.release, 200, one_line=True),
        "version": printable(found.version, 300, one_line=True),
        "config": None,
    }
    if config is not None:
        where = f"--kernel {image}: config {config}"
        text = mbox.read_bounded(config, MAX_CONFIG_BYTES, where, "a .config").decode(
            errors="replace"
        )
        if missing := missing_symbols(text, arch):
            needed = {**NEEDED_ALL, **NEEDED_ARCH.get(arch.make_arch, {})}
            raise UserError(
                f"--kernel {image}: its config {config} lacks what the guest needs: "
                + "; ".join(f"{s}=y ({needed[s]})" for s in missing)
            )
        meta["config_sha256"] = cache.digest(text)
        prebuilt["config"] = str(config.resolve())
    meta["prebuilt"] = prebuilt
    return Kernel(
        key=str(meta["key"]),
        dir=image.parent,
        arch=arch.name,
        variant=variant,
        image=image,
        vmlinux=image.parent / "vmlinux",
        config=config or image.parent / ".config",
        system_map=image.parent / "System.map",
        log=image.parent / "build.log",
        meta=meta,
        cached=True,
    )
