"""Kernel selftests cross-compiled for the guest, run unchanged as external test cases.

`kselftest:vm/memfd_secret` means tools/testing/selftests/vm/memfd_secret.c of the
kernel source the variant builds from, compiled static with the arch's compiler and
linked against the guest arch's libcap (from Debian's libcap-dev, fetched with the
image's private apt directory). Cached by content.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from lab import cache, image, prereqs
from lab.build import toolchain
from lab.config import ArchSpec
from lab.errors import LabError, UserError

PREFIX = "kselftest:"
# Per selftest: the guest-arch package with the static library it links (fetched through
# the image's private apt directory, so the host needs no foreign-arch packages) and the
# link flags; the kernel's tools/testing/selftests/vm/Makefile links memfd_secret with -lcap.
# The host side (compiler, libc headers, static libc) is lab/prereqs.py's target_libc().
LIBS = {"vm/memfd_secret": ("libcap-dev", ["-lcap"])}


def build(
    spec: str,
    arch: ArchSpec,
    srctree: Path,
    recipe: image.ImageRecipe,
    cache_root: Path,
    log: Callable[[str], None],
) -> Path:
    """The guest binary for `kselftest:<dir>/<name>`; built once per input hash."""
    name = spec.removeprefix(PREFIX)
    if name not in LIBS:
        raise UserError(f"unknown selftest {spec!r}; known: {', '.join(PREFIX + k for k in LIBS)}")
    package, libs = LIBS[name]
    src = srctree / "tools" / "testing" / "selftests" / f"{name}.c"
    header = srctree / "tools" / "testing" / "selftests" / "kselftest.h"
    if not src.is_file():
        raise UserError(f"{spec}: {src} not found in the kernel source")
    tools = toolchain.detect(arch)
    key = cache.digest_json(
        {
            "src": cache.file_digest(src),
            "header": cache.file_digest(header),
            "gcc": tools.gcc_version,
            "package": package,
            "arch": arch.deb_arch,
            "v": 1,
        }
    )[:16]
    out_dir = cache_root / "kselftest" / f"{arch.name}-{name.replace('/', '-')}-{key}"
    binary = out_dir / Path(name).name
    if binary.is_file():
        return binary
    with cache.locked(cache_root / "locks" / f"kselftest-{key}.lock"):
        if binary.is_file():
            return binary
        log(f"building {spec} for {arch.name}")
        prereqs.require(prereqs.target_libc(arch), f"compile {spec} for {arch.name}")
        files, _debs = image.fetch_package_files(recipe, arch.deb_arch, cache_root, (package,), log)
        with cache.staging_dir(out_dir) as tmp:
            sysroot = tmp / "sysroot"
            for path, data in files.items():
                if path.endswith((".h", ".a")):
                    dest = sysroot / path
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(data)
            libdirs = sorted({str(p.parent) for p in sysroot.rglob("*.a")})
            argv = [
                tools.gcc,
                "-static",
                "-O2",
                "-Wall",
                "-I",
                str(sysroot / "usr" / "include"),
                str(src),
                *(f"-L{d}" for d in libdirs),
                *libs,
                "-o",
                str(tmp / Path(name).name),
            ]
            proc = subprocess.run(argv, capture_output=True, text=True)
            (tmp / "build.log").write_text(" ".join(argv) + "\n" + proc.stdout + proc.stderr)
            if proc.returncode != 0:
                first = [ln for ln in proc.stderr.splitlines() if "error" in ln][:3]
                raise LabError(
                    f"{spec} for {arch.name} did not compile: "
                    f"{'; '.join(first) or proc.stderr.strip()[-200:]}"
                )
            shutil.rmtree(sysroot)
    return binary
