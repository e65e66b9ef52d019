"""Kernels built elsewhere (`lab run/boot --kernel PATH`): checked before any QEMU starts.

Images are read as the boot protocols define them: an x86 bzImage has "HdrS" at 0x202
and its version string at 0x200 + the word at 0x20E; an arm64 Image has "ARM\\x64" at
0x38. The lab's own cached kernels, when present, are real test subjects too.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from lab import config
from lab.build import prebuilt
from lab.errors import UserError
from lab.outcome import CLASSES
from lab.run import cell, testcase
from lab.run.job import Inputs, prepare_cell

REPO = Path(__file__).resolve().parent.parent
CFG = config.load(REPO / "lab.toml")
X86 = CFG.arch("x86_64")
ARM = CFG.arch("arm64")


def bzimage(release: str = "6.1.0-lab") -> bytes:
    data = bytearray(0x1000)
    data[0x202:0x206] = b"HdrS"
    version = f"{release} (lab@lab) #1 SMP PREEMPT_DYNAMIC Thu Jan 21 12:27:23 UTC 2021\0"
    struct.pack_into("<H", data, 0x20E, 0x400 - 0x200)
    data[0x400 : 0x400 + len(version)] = version.encode()
    return bytes(data)


def arm64_image(release: str = "6.12.9-lab") -> bytes:
    data = bytearray(0x1000)
    data[0x38:0x3C] = b"ARM\x64"
    banner = f"Linux version {release} (lab@lab) (aarch64-linux-gnu-gcc 12.2.0) #1 SMP\n\0"
    data[0x800 : 0x800 + len(banner)] = banner.encode()
    return bytes(data)


def good_config(arch: str) -> str:
    needed = {**prebuilt.NEEDED_ALL, **prebuilt.NEEDED_ARCH[arch]}
    return "".join(f"{s}=y\n" for s in needed) + "# CONFIG_MODULES is not set\n"


def test_bzimage_and_arm64_image_gz_are_recognised(tmp_path: Path) -> None:
    x = prebuilt.inspect(bzimage(), Path("bzImage"))
    assert (x.arch, x.release) == ("x86", "6.1.0-lab")
    a = prebuilt.inspect(gzip.compress(arm64_image()), Path("Image.gz"))
    assert (a.arch, a.release) == ("arm64", "6.12.9-lab")
    assert a.version.startswith("Linux version 6.12.9-lab (lab@lab)")


def _cached(image_name: str) -> list[Path]:
    root = Path(os.environ.get("LAB_CACHE_DIR") or Path.home() / ".cache" / "lab") / "kernels"
    return sorted(root.glob(f"*/{image_name}"))[:1] if root.is_dir() else []


@pytest.mark.parametrize(("image_name", "arch"), [("bzImage", X86), ("Image.gz", ARM)])
def test_the_labs_own_cached_kernels(image_name: str, arch: config.ArchSpec) -> None:
    """Real kernels: whatever the shared cache holds (skipped on a fresh machine)."""
    found = _cached(image_name)
    if not found:
        pytest.skip(f"no cached {image_name} under the lab cache")
    kernel = prebuilt.load(found[0], arch, "U0")
    rec = kernel.meta["prebuilt"]
    assert isinstance(rec, dict) and str(rec["release"]).startswith("6.1.")
    assert kernel.meta["config_sha256"] and rec["config"] == str(found[0].parent / "config")
    other = ARM if arch is X86 else X86
    with pytest.raises(UserError, match=f"but the cell's arch {other.name}"):
        prebuilt.load(found[0], other, "U0")


def test_arch_mismatch_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "bzImage").write_bytes(bzimage())
    with pytest.raises(UserError) as exc:
        prebuilt.load(tmp_path / "bzImage", ARM, "U0")
    msg = str(exc.value)
    assert "\n" not in msg
    assert "an x86 kernel, but the cell's arch arm64 boots arm64 kernels" in msg
    assert "--arch x86_64" in msg


def test_config_lacking_guest_needs_names_the_symbols(tmp_path: Path) -> None:
    (tmp_path / "Image.gz").write_bytes(gzip.compress(arm64_image()))
    text = good_config("arm64").replace("CONFIG_VIRTIO_CONSOLE=y\n", "")
    text = text.replace("CONFIG_BLK_DEV_INITRD=y", "# CONFIG_BLK_DEV_INITRD is not set")
    (tmp_path / ".config").write_text(text)
    with pytest.raises(UserError) as exc:
        prebuilt.load(tmp_path / "Image.gz", ARM, "U0")
    msg = str(exc.value)
    assert "\n" not in msg
    assert "CONFIG_BLK_DEV_INITRD=y (the guest image is an initramfs)" in msg
    assert "CONFIG_VIRTIO_CONSOLE=y" in msg and "CONFIG_SERIAL_AMBA" not in msg


def test_make_output_directory_and_tuxmake_directory(tmp_path: Path) -> None:
    make_o = tmp_path / "o"
    (make_o / "arch" / "x86" / "boot").mkdir(parents=True)
    (make_o / "arch" / "x86" / "boot" / "bzImage").write_bytes(bzimage("6.1.999"))
    (make_o / ".config").write_text(good_config("x86_64"))
    k = prebuilt.load(make_o, X86, "U0")
    assert k.image == make_o / "arch" / "x86" / "boot" / "bzImage"
    assert k.meta["prebuilt"]["release"] == "6.1.999"  # type: ignore[index]
    tux = tmp_path / "tux"
    tux.mkdir()
    (tux / "Image.gz").write_bytes(gzip.compress(arm64_image()))
    (tux / "config").write_text(good_config("arm64"))
    (tux / "metadata.json").write_text("{}")
    assert prebuilt.load(tux, ARM, "U0").config == tux / "config"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\x7fELF" + b"\0" * 100, "not a kernel image this lab boots"),
        (b"\x1f\x8b\x08\0garbage", "a gzip file that does not decompress"),
    ],
)
def test_not_a_kernel(tmp_path: Path, content: bytes, expected: str) -> None:
    (tmp_path / "vmlinux").write_bytes(content)
    with pytest.raises(UserError, match=expected):
        prebuilt.load(tmp_path / "vmlinux", X86, "U0")


def test_gzip_bomb_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prebuilt, "MAX_IMAGE_BYTES", 1 << 20)
    (tmp_path / "Image.gz").write_bytes(gzip.compress(b"\0" * (4 << 20)))
    with pytest.raises(UserError, match="decompresses to more than 1 MiB"):
        prebuilt.load(tmp_path / "Image.gz", ARM, "U0")


def test_cell_record_names_the_prebuilt_kernel(tmp_path: Path) -> None:
    from test_golden import _base

    (tmp_path / "bzImage").write_bytes(bzimage())
    (tmp_path / ".config").write_text(good_config("x86_64"))
    kernel = prebuilt.load(tmp_path / "bzImage", X86, "U0")
    tc = testcase.find(CFG.testcases_dir, "api", CLASSES)
    inputs = Inputs(kernel, _base(CFG, "x86_64"))
    job, _files = prepare_cell(CFG, cell.Cell(X86, CFG.variant("U0"), tc), inputs)
    rec = job.record["kernel"]
    assert isinstance(rec, dict)
    assert rec["image_sha256"] == kernel.meta["image_sha256"]
    assert rec["prebuilt"]["release"] == "6.1.0-lab"
    assert rec["prebuilt"]["config"] == str((tmp_path / ".config").resolve())


def test_lab_run_kernel_with_wrong_arch_fails_before_any_boot(tmp_path: Path) -> None:
    (tmp_path / "bzImage").write_bytes(bzimage())
    shutil.copy(REPO / "lab.toml", tmp_path / "lab.toml")
    os.symlink(REPO / "testcases", tmp_path / "testcases")
    os.symlink(REPO / "kernels", tmp_path / "kernels")
    out = subprocess.run(
        [
            *(sys.executable, "-m", "lab", "-c", str(tmp_path / "lab.toml"), "run", "api"),
            *("--arch", "arm64", "--kernel", str(tmp_path / "bzImage")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "but the cell's arch arm64" in out.stderr
    assert not (tmp_path / "results").exists()


def _lab(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """`lab` on a copy of the repo's lab.toml whose results go under tmp_path."""
    if not (tmp_path / "lab.toml").exists():
        shutil.copy(REPO / "lab.toml", tmp_path / "lab.toml")
        os.symlink(REPO / "testcases", tmp_path / "testcases")
        os.symlink(REPO / "kernels", tmp_path / "kernels")
    return subprocess.run(
        [sys.executable, "-m", "lab", "-c", str(tmp_path / "lab.toml"), *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_lab_matrix_kernel_needs_one_arch(tmp_path: Path) -> None:
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "bzImage").write_bytes(bzimage())
    out = _lab(tmp_path, "matrix", "-t", "api", "-V", "U0", "--kernel", str(tmp_path / "k"))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert "one kernel image boots on one arch" in out.stderr and "add --arch" in out.stderr
    wrong = _lab(
        tmp_path, "matrix", "-t", "api", "-a", "arm64", "--kernel", str(tmp_path / "k/bzImage")
    )
    assert wrong.returncode == 2 and "but the cell's arch arm64" in wrong.stderr
    (tmp_path / "k" / ".config").write_text(good_config("x86_64").replace("CONFIG_TMPFS=y", ""))
    lacking = _lab(tmp_path, "matrix", "-t", "api", "-a", "x86_64", "--kernel", str(tmp_path / "k"))
    assert (
        lacking.returncode == 2 and "lacks what the guest needs: CONFIG_TMPFS=y" in lacking.stderr
    )
    (tmp_path / "k" / ".config").write_text(good_config("x86_64"))
    listed = _lab(
        tmp_path, "matrix", "-t", "api", "-a", "x86_64", "--kernel", str(tmp_path / "k"), "--list"
    )
    assert listed.returncode == 0 and listed.stdout.split()[0] == "x86_64/U0/api"
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(("image_name", "arch"), [("bzImage", X86), ("Image.gz", ARM)])
def test_lab_matrix_kernel_plans_and_prepares_with_a_cached_kernel(
    tmp_path: Path, image_name: str, arch: config.ArchSpec
) -> None:
    """A real kernel from the shared cache: `--list` accepts it for its arch, and the
    prepared cell job records it (kernel.prebuilt) with a reproducer that boots it again."""
    from test_golden import _base

    from lab.progress import Reporter
    from lab.run import orchestrate

    found = _cached(image_name)
    if not found:
        pytest.skip(f"no cached {image_name} under the lab cache")
    listed = _lab(
        tmp_path,
        *("matrix", "-t", "api", "-V", "U0", "-V", "U1", "-a", arch.name),
        *("--kernel", str(found[0]), "--list"),
    )
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()] == [
        f"{arch.name}/U0/api",
        f"{arch.name}/U1/api",
    ]
    with Reporter() as reporter:
        kernels, failed = orchestrate.build_kernels(
            CFG, [(arch.name, "U0"), (arch.name, "U1")], reporter, prebuilt_path=str(found[0])
        )
    assert failed == {} and sorted(kernels) == [f"{arch.name}/U0", f"{arch.name}/U1"]
    k = kernels[f"{arch.name}/U1"]
    prov = orchestrate.kernel_provenance(k)
    assert prov["prebuilt"] == k.meta["prebuilt"] and prov["image_sha256"]
    tc = testcase.find(CFG.testcases_dir, "api", CLASSES)
    job, _files = prepare_cell(
        CFG, cell.Cell(arch, CFG.variant("U1"), tc), Inputs(k, _base(CFG, arch.name))
    )
    rec = job.record["kernel"]
    assert rec["prebuilt"]["path"] == str(found[0].resolve())
    assert str(rec["prebuilt"]["release"]).startswith("6.1.")
    assert job.record["reproducer"].endswith(f"--variant U1 --kernel {found[0].resolve()}")
