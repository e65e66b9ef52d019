"""What the lab runs or reads on the host, and the Debian package that provides it: one table.

The code of each step takes the programs it runs from here (`program(...)`, `compiler(arch)`,
`qemu(arch)`), so it cannot run something this table lacks; `lab doctor` checks, and `lab
setup` installs, exactly `for_config(cfg)`. Files a step needs without running them (cross
libc headers, static libc, QEMU firmware, keyrings) are entries too, derived from the same
arch data the commands use, so a new arch brings its own rows.

Why files and not only programs: `gcc-aarch64-linux-gnu` only *recommends* the arm64 libc
headers, and setup installs with --no-install-recommends, so the compiler can be present
while every userspace cross-compile fails with `sys/uio.h: No such file`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from lab.config import ArchSpec, LabConfig, SourceSpec
from lab.errors import LabError

# The steps of the lab that need something on the host (a Need's `step`).
STEPS = ("build", "source", "image", "kselftest", "boot", "tests")


@dataclass(frozen=True)
class Need:
    """A program (found on PATH) or, with `path`, a file; `package` provides it ("" = none
    known, e.g. a user's own keyring or tarball: then only the user can fix it)."""

    name: str
    package: str
    step: str
    why: str
    path: str = ""
    alternatives: tuple[str, ...] = ()  # other program names that serve as well

    def locate(self) -> str | None:
        """Where it is on this host, or None."""
        if self.path:
            return self.path if Path(self.path).exists() else None
        return next((p for p in map(shutil.which, (self.name, *self.alternatives)) if p), None)


def _programs(*rows: tuple[str, str, str, str]) -> dict[str, Need]:
    return {name: Need(name, package, step, why) for name, package, step, why in rows}


# Programs the lab runs by name (argv[0]) or that make runs for it. `program()` refuses any
# name not here, and tests/test_prereqs.py checks that no code runs a literal name beside it.
PROGRAMS = _programs(
    ("make", "make", "build", "runs the kernel build"),
    ("gcc", "gcc", "build", "make builds the kernel's host tools (fixdep, kconfig) with it"),
    ("flex", "flex", "build", "make generates the kconfig lexer with it"),
    ("bison", "bison", "build", "make generates the kconfig parser with it"),
    ("bc", "bc", "build", "make computes kernel/timeconst.h with it"),
    ("cpio", "cpio", "build", "make packs in-kernel archives with it"),
    ("patch", "patch", "build", "applies the variant's patch series (--fuzz=0)"),
    ("cp", "coreutils", "build", "hard-links the pristine tree before patching"),
    ("tar", "tar", "source", "extracts the kernel source tarball"),
    ("xz", "xz-utils", "source", "tar runs it for .tar.xz sources"),
    ("dpkg-query", "dpkg", "source", "names the linux-source package version"),
    ("git", "git", "source", "exports a [source] kind = git tree"),
    ("b4", "b4", "source", "lab series fetch: b4 am downloads a series from lore (optional)"),
    ("apt-get", "apt", "image", "fetches guest packages in a private apt directory"),
    ("zstd", "zstd", "image", "unpacks zstd-compressed .debs (archives that use it)"),
    ("chromium", "chromium", "tests", "renders the report in the lab's own tests"),
    ("ssh-keygen", "openssh-client", "tests", "makes host keys for the loopback SSH hosts"),
    ("mmdebstrap", "mmdebstrap", "tests", "makes the fresh Debian root of the fresh-root test"),
    ("lava-run", "lava-dispatcher", "tests", "runs exported LAVA jobs in the lab's own tests"),
)
# Debian calls it chromium; some derivatives chromium-browser.
PROGRAMS["chromium"] = replace(PROGRAMS["chromium"], alternatives=("chromium-browser",))

DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

FILES = {
    "libelf-dev": Need(
        "libelf-dev", "libelf-dev", "build", "objtool/resolve_btfids headers", "/usr/include/gelf.h"
    ),
    "libssl-dev": Need(
        "libssl-dev",
        "libssl-dev",
        "build",
        "sign-file/extract-cert headers",
        "/usr/include/openssl/ssl.h",
    ),
    "sshd": Need("sshd", "openssh-server", "tests", "the loopback SSH hosts", "/usr/sbin/sshd"),
}

# QEMU loads these at machine start even with -kernel; keyed by (binary, machine type).
# arm64 `virt` with -kernel needs no firmware.
FIRMWARE: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {
    ("qemu-system-x86_64", "microvm"): (("/usr/share/qemu/bios-microvm.bin", "qemu-system-data"),),
    ("qemu-system-x86_64", "pc"): (
        ("/usr/share/seabios/bios-256k.bin", "seabios"),
        ("/usr/share/qemu/linuxboot_dma.bin", "qemu-system-data"),
    ),
    ("qemu-system-x86_64", "q35"): (
        ("/usr/share/seabios/bios-256k.bin", "seabios"),
        ("/usr/share/qemu/linuxboot_dma.bin", "qemu-system-data"),
    ),
}

# Debian architecture -> GNU triplet, for native compilers (a cross compiler's prefix says it).
TRIPLETS = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}


def program(name: str) -> str:
    """The program to run for `name`; only names in the table (so doctor checks them)."""
    if name not in PROGRAMS:
        raise AssertionError(f"{name} is run by the lab but missing from lab/prereqs.py")
    return name


def _triplet(arch: ArchSpec) -> str:
    return arch.cross_compile.rstrip("-") if arch.cross_compile else TRIPLETS.get(arch.deb_arch, "")


def compiler(arch: ArchSpec) -> Need:
    gcc = f"{arch.cross_compile}gcc"
    default = f"gcc-{_triplet(arch)}" if arch.cross_compile else "gcc"
    return Need(gcc, arch.compiler_package or default, "build", f"compiles {arch.name} code")


def linker(arch: ArchSpec) -> Need:
    package = f"binutils-{_triplet(arch)}" if arch.cross_compile else "binutils"
    return Need(f"{arch.cross_compile}ld", package, "build", f"links {arch.name} kernels")


def target_libc(arch: ArchSpec) -> tuple[Need, ...]:
    """What a static userspace program for the arch (the kernel selftests) compiles against:
    libc headers, the static libc and the kernel's uapi headers, in the compiler's sysroot."""
    triplet = _triplet(arch)
    if not triplet:
        return ()
    if arch.cross_compile:
        include, lib = f"/usr/{triplet}/include", f"/usr/{triplet}/lib"
        libc, uapi = f"libc6-dev-{arch.deb_arch}-cross", f"linux-libc-dev-{arch.deb_arch}-cross"
    else:
        include, lib = f"/usr/include/{triplet}", f"/usr/lib/{triplet}"
        libc, uapi = "libc6-dev", "linux-libc-dev"
    why = f"static {arch.name} selftests"
    return (
        Need(f"{arch.name} libc headers", libc, "kselftest", why, f"{include}/sys/uio.h"),
        Need(f"{arch.name} static libc", libc, "kselftest", why, f"{lib}/libc.a"),
        Need(f"{arch.name} uapi headers", uapi, "kselftest", why, f"{include}/asm/unistd.h"),
    )


def qemu(arch: ArchSpec) -> Need:
    q = arch.qemu
    return Need(q.binary, q.package or q.binary, "boot", f"boots {arch.name} kernels")


def firmware(arch: ArchSpec) -> tuple[Need, ...]:
    machine = arch.qemu.machine.split(",")[0]
    files = FIRMWARE.get((arch.qemu.binary, machine), ())
    return tuple(
        Need(Path(path).name, package, "boot", f"QEMU {machine} firmware", path)
        for path, package in files
    )


def source(spec: SourceSpec) -> tuple[Need, ...]:
    if spec.kind == "debian":
        tarball = Need("kernel source", spec.package, "source", "the kernel to build", spec.path)
        return (tarball, PROGRAMS["tar"], PROGRAMS["xz"], PROGRAMS["dpkg-query"])
    if spec.kind == "tarball":
        path = str(Path(spec.path).expanduser())
        return (
            Need("kernel source", "", "source", "the kernel to build", path),
            PROGRAMS["tar"],
            PROGRAMS["xz"],
        )
    if spec.kind == "tree":
        path = str(Path(spec.path).expanduser())
        return (Need("kernel source", "", "source", "the kernel to build", path),)
    return (PROGRAMS["git"], PROGRAMS["tar"])


def keyring(path: str) -> Need:
    package = "debian-archive-keyring" if path == DEBIAN_KEYRING else ""
    return Need(Path(path).name, package, "image", "verifies the guest packages", path)


def build_host() -> tuple[Need, ...]:
    """The host side of every kernel build, whatever the arch."""
    names = ("make", "gcc", "flex", "bison", "bc", "cpio", "patch", "cp")
    return (*(PROGRAMS[n] for n in names), FILES["libelf-dev"], FILES["libssl-dev"])


def for_arch(arch: ArchSpec) -> tuple[Need, ...]:
    return (compiler(arch), linker(arch), *target_libc(arch), qemu(arch), *firmware(arch))


def tests_only() -> tuple[Need, ...]:
    return (
        PROGRAMS["chromium"],
        FILES["sshd"],
        PROGRAMS["ssh-keygen"],
        PROGRAMS["mmdebstrap"],
        PROGRAMS["lava-run"],
    )


def for_config(
    cfg: LabConfig | None, keyrings: Iterable[str] = (DEBIAN_KEYRING,), tests: bool = False
) -> list[Need]:
    """Everything the lab needs for `cfg` (its arches and source), without repeats, in a
    stable order. Without a config: the arch-independent part only."""
    rows: list[Need] = [*build_host(), PROGRAMS["apt-get"], PROGRAMS["zstd"]]
    rows += [keyring(k) for k in keyrings]
    if cfg is not None:
        for arch in cfg.arches.values():
            rows += for_arch(arch)
        rows += source(cfg.source)
        for spec in cfg.sources.values():
            rows += source(spec)
    if tests:
        rows += tests_only()
    seen: set[tuple[str, str]] = set()
    out = []
    for row in rows:
        if (row.name, row.path) not in seen:
            seen.add((row.name, row.path))
            out.append(row)
    return out


def require(needs: Iterable[Need], what: str) -> None:
    """Fail in one line naming what is missing and the apt-get line that installs it."""
    missing = [n for n in needs if n.locate() is None]
    if not missing:
        return
    names = ", ".join(n.name for n in missing)
    packages = sorted({n.package for n in missing if n.package})
    fix = f"install with: sudo {apt_line(packages)}" if packages else "see `lab doctor`"
    raise LabError(f"{names} not found (needed to {what}); {fix}")


def apt_line(packages: list[str]) -> str:
    return "apt-get install -y --no-install-recommends " + " ".join(packages)
