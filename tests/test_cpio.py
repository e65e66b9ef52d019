"""lab.image.cpio: newc archives checked against GNU cpio and our own reader."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from lab.image import cpio

needs_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")


def sample() -> list[cpio.Entry]:
    return [
        cpio.directory("etc"),
        cpio.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
        cpio.file("init", b"#!/bin/sh\necho hi\n", 0o755),
        cpio.directory("dev"),
        cpio.chardev("dev/console", 5, 1, 0o600),
        cpio.directory("tmp", 0o1777),
        cpio.directory("usr"),
        cpio.directory("usr/bin"),
        cpio.file("usr/bin/odd", b"abc"),  # 3 bytes: exercises data padding
        cpio.symlink("usr/bin/python3", "python3.11"),
        cpio.file("empty", b""),
    ]


def gnu_cpio(archive: bytes, *args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        ["cpio", "--quiet", "-H", "newc", *args],
        input=archive,
        capture_output=True,
        cwd=cwd,
        check=True,
    )
    return done.stdout.decode()


@needs_cpio
def test_gnu_cpio_lists_every_entry_in_sorted_order() -> None:
    archive = cpio.write_newc(sample())
    names = gnu_cpio(archive, "-it").split()
    assert names == sorted(e.name for e in sample())


@needs_cpio
def test_gnu_cpio_sees_device_node_symlink_and_modes() -> None:
    out = gnu_cpio(cpio.write_newc(sample()), "-itv", "--numeric-uid-gid")
    lines = {
        line.split()[-1] if "->" not in line else line.split()[-3]: line
        for line in out.splitlines()
    }
    assert re.match(r"crw------- +1 +0 +0 +5, +1 .* dev/console$", lines["dev/console"])
    assert re.match(r"lrwxrwxrwx .* usr/bin/python3 -> python3.11$", lines["usr/bin/python3"])
    assert lines["init"].startswith("-rwxr-xr-x")
    assert lines["tmp"].startswith("drwxrwxrwt")
    assert re.search(r"Jan +1 +1970", lines["etc/passwd"])  # mtime 0


@needs_cpio
def test_gnu_cpio_extracts_exact_bytes(tmp_path: Path) -> None:
    entries = [e for e in sample() if e.kind != "c"]  # no mknod on the test host
    gnu_cpio(cpio.write_newc(entries), "-idm", "--no-absolute-filenames", cwd=tmp_path)
    assert (tmp_path / "etc/passwd").read_bytes() == b"root:x:0:0:root:/root:/bin/sh\n"
    assert (tmp_path / "usr/bin/odd").read_bytes() == b"abc"
    assert (tmp_path / "empty").read_bytes() == b""
    assert (tmp_path / "usr/bin/python3").readlink() == Path("python3.11")
    assert stat.S_IMODE((tmp_path / "init").stat().st_mode) == 0o755


def test_reader_round_trip() -> None:
    entries = sample()
    back = cpio.read_newc(cpio.write_newc(entries))
    assert back == sorted(entries, key=lambda e: e.name)
    console = next(e for e in back if e.name == "dev/console")
    assert (console.kind, console.rdev_major, console.rdev_minor, console.perm) == (
        "c",
        5,
        1,
        0o600,
    )


def test_headers_and_bodies_are_aligned() -> None:
    archive = cpio.write_newc(sample())
    assert len(archive) % 4 == 0
    starts = [m.start() for m in re.finditer(re.escape(cpio.MAGIC), archive)]
    assert len(starts) == len(sample()) + 1  # + trailer
    assert all(s % 4 == 0 for s in starts)
    assert archive.endswith(b"TRAILER!!!\0" + b"\0" * (-(110 + 11) % 4))


def test_deterministic_regardless_of_input_order() -> None:
    a = cpio.write_newc(sample())
    b = cpio.write_newc(list(reversed(sample())))
    assert a == b
    assert cpio.gzip_bytes(a) == cpio.gzip_bytes(b)


def test_inode_numbers_are_positional() -> None:
    archive = cpio.write_newc(sample())
    inos = [
        int(archive[m.start() + 6 : m.start() + 14], 16) for m in re.finditer(b"070701", archive)
    ]
    assert inos == [*range(1, len(sample()) + 1), 0]


def test_gzip_header_has_no_mtime_and_no_name() -> None:
    gz = cpio.gzip_bytes(b"x" * 1000)
    assert gz[:3] == b"\x1f\x8b\x08"
    assert gz[3] == 0  # FLG: no FNAME, no comment, no extra
    assert gz[4:8] == b"\0\0\0\0"  # MTIME
    assert cpio.gunzip_all(gz) == b"x" * 1000


def test_duplicate_and_bad_names_are_rejected() -> None:
    with pytest.raises(cpio.CpioError, match="duplicate"):
        cpio.write_newc([cpio.file("a", b"1"), cpio.file("a", b"2")])
    for bad in ("", "/", "a/../b", "a//b", "../x"):
        with pytest.raises(cpio.CpioError):
            cpio.normalize_name(bad)
    assert cpio.normalize_name("/lab/job.json") == "lab/job.json"
    assert cpio.normalize_name("./usr/bin/x") == "usr/bin/x"


def test_device_nodes_carry_no_data() -> None:
    bogus = cpio.Entry("dev/null", stat.S_IFCHR | 0o666, b"data")
    with pytest.raises(cpio.CpioError):
        cpio.write_newc([bogus])


def test_tree_entries_adds_parents_and_checks_modes() -> None:
    entries = cpio.tree_entries(
        {"/lab/cases/t1.py": (b"print(1)\n", 0o644), "/lab/agent.py": (b"", 0o755)}
    )
    by_name = {e.name: e for e in entries}
    assert sorted(by_name) == ["lab", "lab/agent.py", "lab/cases", "lab/cases/t1.py"]
    assert by_name["lab/cases"].kind == "d"
    assert by_name["lab/agent.py"].perm == 0o755
    with pytest.raises(cpio.CpioError):
        cpio.tree_entries({"/x": (b"", stat.S_IFLNK | 0o777)})
    with pytest.raises(cpio.CpioError):
        cpio.tree_entries({"/a": (b"", 0o644), "/a/b": (b"", 0o644)})


def test_appended_overlay_overrides_and_adds() -> None:
    base = cpio.gzip_bytes(
        cpio.write_newc(
            [
                cpio.directory("lab"),
                cpio.file("lab/agent.py", b"old agent\n", 0o644),
                cpio.file("etc/motd", b"keep\n"),
                cpio.directory("etc"),
            ]
        )
    )
    overlay = cpio.gzip_bytes(
        cpio.write_newc(
            cpio.tree_entries(
                {"/lab/agent.py": (b"new agent\n", 0o755), "/lab/job.json": (b"{}", 0o644)}
            )
        )
    )
    combined = cpio.read_newc(cpio.gunzip_all(base + overlay))
    tree = cpio.flatten(combined)
    assert tree["lab/agent.py"].data == b"new agent\n"
    assert tree["lab/agent.py"].perm == 0o755
    assert tree["lab/job.json"].data == b"{}"
    assert tree["etc/motd"].data == b"keep\n"
    # The overlay's archive order also satisfies the kernel: parents before children.
    names = [e.name for e in combined]
    assert names.index("lab") < names.index("lab/agent.py")


@needs_cpio
def test_gnu_cpio_reads_each_part_of_a_concatenation() -> None:
    overlay = cpio.write_newc(cpio.tree_entries({"/lab/x": (b"1", 0o644)}))
    assert gnu_cpio(overlay, "-it").split() == ["lab", "lab/x"]


def test_reader_rejects_garbage() -> None:
    with pytest.raises(cpio.CpioError):
        cpio.read_newc(b"070707" + b"0" * 200)
    truncated = cpio.write_newc([cpio.file("a", b"x" * 100)])[:150]
    with pytest.raises(cpio.CpioError):
        cpio.read_newc(truncated)
    assert cpio.read_newc(cpio.write_newc([]) + b"\0" * 512) == []


def test_listing_is_readable() -> None:
    lines = cpio.listing(cpio.read_newc(cpio.write_newc(sample())))
    assert "c0600 0/0       5,1 dev/console" in lines
    assert "l0777 0/0        10 usr/bin/python3 -> python3.11" in lines
