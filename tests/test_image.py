"""lab.image: fast unit tests of the pure steps, and a `real` tier that fetches Debian packages
and builds the actual base images for amd64 and arm64."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import image
from lab.config import ImageSpec
from lab.errors import LabError
from lab.image import ImageRecipe, cpio
from lab.image import apt as image_apt
from lab.image import recipe as image_recipe

# A mirror of the guest's release as a host's apt sources would name it (.example: no host).
FIXTURE_SOURCES = (
    image.AptSource("http://mirror.example/debian", ("bookworm", "bookworm-updates")),
    image.AptSource("http://mirror.example/debian-security", ("bookworm-security",)),
)

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# A small .deb, built here


def _tar(members: list[tuple[tarfile.TarInfo, bytes]], mode: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.GNU_FORMAT) as tar:  # type: ignore[call-overload]
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def _info(
    name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, **kw: Any
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid = info.gid = 1234  # must come out as root
    for k, v in kw.items():
        setattr(info, k, v)
    return info


def data_members() -> list[tuple[tarfile.TarInfo, bytes]]:
    script = b"#!/bin/sh\necho tool\n"
    tool = _info("./usr/bin/tool", mode=0o755, size=len(script))
    return [
        (_info("./", tarfile.DIRTYPE, 0o755), b""),
        (_info("./usr/", tarfile.DIRTYPE, 0o755), b""),
        (_info("./usr/bin/", tarfile.DIRTYPE, 0o755), b""),
        (tool, script),
        (_info("./usr/bin/tool-link", tarfile.LNKTYPE, 0o755, linkname="./usr/bin/tool"), b""),
        (_info("./usr/bin/t", tarfile.SYMTYPE, 0o777, linkname="tool"), b""),
        (_info("./usr/share/", tarfile.DIRTYPE, 0o755), b""),
        (_info("./usr/share/doc/", tarfile.DIRTYPE, 0o755), b""),
        (_info("./usr/share/doc/x/", tarfile.DIRTYPE, 0o755), b""),
        (_info("./usr/share/doc/x/copyright", size=5), b"GPL2\n"),
    ]


def make_deb(tmp: Path, data_name: str = "data.tar.xz", use_ar_tool: bool = True) -> bytes:
    modes = {"data.tar.xz": "w:xz", "data.tar.gz": "w:gz", "data.tar": "w"}
    control_text = b"Package: x\nVersion: 1\nArchitecture: amd64\n"  # odd length: ar padding
    control = _tar([(_info("./control", size=len(control_text)), control_text)], "w:xz")
    parts = {
        "debian-binary": b"2.0\n",
        "control.tar.xz": control,
        data_name: _tar(data_members(), modes[data_name]),
    }
    if use_ar_tool and shutil.which("ar"):
        for name, data in parts.items():
            (tmp / name).write_bytes(data)
        subprocess.run(["ar", "rcD", "x.deb", *parts], cwd=tmp, check=True)
        return (tmp / "x.deb").read_bytes()
    out = bytearray(b"!<arch>\n")
    for name, data in parts.items():
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


@pytest.mark.parametrize(
    ("data_name", "use_ar_tool"),
    [("data.tar.xz", True), ("data.tar.gz", False), ("data.tar", False)],
)
def test_deb_unpacking(tmp_path: Path, data_name: str, use_ar_tool: bool) -> None:
    deb = make_deb(tmp_path, data_name, use_ar_tool)
    assert set(image.read_ar(deb)) == {"debian-binary", "control.tar.xz", data_name}
    tree = {e.name: e for e in image.deb_entries(deb, "x.deb")}
    assert "" not in tree and "." not in tree
    tool = tree["usr/bin/tool"]
    assert (tool.kind, tool.perm, tool.uid, tool.gid) == ("-", 0o755, 0, 0)
    assert tool.data == b"#!/bin/sh\necho tool\n"
    assert tree["usr/bin/tool-link"].data == tool.data  # hard link -> copy
    assert (tree["usr/bin/t"].kind, tree["usr/bin/t"].data) == ("l", b"tool")
    assert tree["usr/share/doc/x"].kind == "d"


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb not installed")
def test_deb_unpacking_agrees_with_dpkg_deb(tmp_path: Path) -> None:
    deb = make_deb(tmp_path)
    (tmp_path / "x.deb").write_bytes(deb)
    listed = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(tmp_path / "x.deb")], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(listed)) as tar:
        names = {m.name.removeprefix("./").rstrip("/") for m in tar} - {"", "."}
    assert names == {e.name for e in image.deb_entries(deb)}


def test_not_a_deb() -> None:
    with pytest.raises(LabError, match=r"not a \.deb"):
        image.deb_entries(b"PK\x03\x04")


# ---------------------------------------------------------------------------------------------
# merge, trim, skeleton


def test_merge_accepts_shared_dirs_and_identical_files_rejects_conflicts() -> None:
    a = [cpio.directory("usr"), cpio.file("usr/a", b"1")]
    b = [cpio.directory("usr"), cpio.file("usr/a", b"1"), cpio.file("usr/b", b"2")]
    assert set(image.merge([("a", a), ("b", b)])) == {"usr", "usr/a", "usr/b"}
    c = [cpio.file("usr/a", b"other")]
    with pytest.raises(LabError, match=r"packages a and c both ship /usr/a"):
        image.merge([("a", a), ("c", c)])


def test_trim_drops_subtrees_globs_and_emptied_dirs() -> None:
    tree = image.with_parents(
        {
            e.name: e
            for e in [
                cpio.file("usr/share/doc/x/copyright", b"c"),
                cpio.file("usr/lib/x86_64-linux-gnu/gconv/UTF-16.so", b"so"),
                cpio.file("usr/lib/x86_64-linux-gnu/libffi.so.8", b"so"),
                cpio.file("usr/lib/python3.11/os.py", b""),
                cpio.file("usr/lib/python3.11/test/support.py", b""),
                cpio.file("usr/lib/python3.11/lib-dynload/_ssl.cpython-311-x.so", b""),
                cpio.directory("usr/lib/empty-on-purpose"),
            ]
        }
    )
    patterns = ("usr/share/doc", "usr/lib/*-linux-gnu/gconv", "usr/lib/python3.11/test")
    kept, removed = image.trim(tree, (*patterns, "usr/lib/python3.11/lib-dynload/_ssl.*"))
    assert sorted(kept) == [
        "usr",
        "usr/lib",
        "usr/lib/empty-on-purpose",
        "usr/lib/python3.11",
        "usr/lib/python3.11/os.py",
        "usr/lib/x86_64-linux-gnu",
        "usr/lib/x86_64-linux-gnu/libffi.so.8",
    ]
    assert removed == len(tree) - len(kept)
    assert image.trim(tree, ()) == (tree, 0)


def test_default_trim_keeps_what_the_required_imports_need() -> None:
    dyn = "usr/lib/python3.11/lib-dynload"
    needed = [
        f"{dyn}/_ctypes.cpython-311-aarch64-linux-gnu.so",
        f"{dyn}/mmap.cpython-311-aarch64-linux-gnu.so",
        f"{dyn}/resource.cpython-311-aarch64-linux-gnu.so",
        f"{dyn}/_json.cpython-311-aarch64-linux-gnu.so",
        f"{dyn}/_posixsubprocess.cpython-311-x86_64-linux-gnu.so",
        "usr/lib/python3.11/ctypes/__init__.py",
        "usr/lib/python3.11/json/decoder.py",
        "usr/lib/python3.11/subprocess.py",
        "usr/lib/python3.11/threading.py",
        "usr/lib/python3.11/encodings/utf_8.py",
        "usr/lib/python3.11/encodings/cp437.py",
        "lib/aarch64-linux-gnu/libc.so.6",
        "lib/x86_64-linux-gnu/libgcc_s.so.1",
        "usr/lib/x86_64-linux-gnu/libffi.so.8",
        "lib/ld-linux-aarch64.so.1",
        "lib64/ld-linux-x86-64.so.2",
    ]
    dropped = ["usr/share/doc/libc6/copyright", "usr/lib/aarch64-linux-gnu/gconv/gconv-modules"]
    tree = image.with_parents({n: cpio.file(n, b"x") for n in needed + dropped})
    kept, _ = image.trim(tree, ImageRecipe().trim)
    assert all(n in kept for n in needed)
    assert not any(n in kept for n in dropped)


def test_skeleton_has_init_users_devices_and_mount_points() -> None:
    recipe = ImageRecipe()
    init = recipe.init_script.read_bytes()
    tree = image.add_skeleton({}, recipe, init)
    assert tree["init"].data == init and tree["init"].perm == 0o755 and tree["init"].kind == "-"
    console = tree["dev/console"]
    assert (console.kind, console.rdev_major, console.rdev_minor) == ("c", 5, 1)
    assert (tree["dev/null"].rdev_major, tree["dev/null"].rdev_minor) == (1, 3)
    for d in ("proc", "sys", "dev", "tmp", "run", "root", "etc", "lab"):
        assert tree[d].kind == "d", d
    assert tree["tmp"].perm == 0o1777
    assert "sys/kernel/debug" not in tree and "sys/fs/cgroup" not in tree
    assert tree["usr/bin/python3"].data == b"python3.11"
    users = {
        ln.split(":")[0]: ln.split(":")[2:4] for ln in tree["etc/passwd"].data.decode().split()
    }
    assert users == {"root": ["0", "0"], "lab": ["1000", "1000"], "nobody": ["65534", "65534"]}
    groups = {ln.split(":")[0]: ln.split(":")[2] for ln in tree["etc/group"].data.decode().split()}
    assert groups["lab"] == "1000" and groups["root"] == "0"


def test_skeleton_refuses_a_file_where_a_package_has_a_directory() -> None:
    with pytest.raises(LabError, match="clashes"):
        image.add_skeleton({"init": cpio.directory("init")}, ImageRecipe(), b"")


# ---------------------------------------------------------------------------------------------
# recipe hashing


def test_recipe_key_is_stable_and_sensitive() -> None:
    r = ImageRecipe()
    init = b"#!/bin/sh\n"
    base = image.recipe_key(r, "arm64", init, "tag")
    assert base == image.recipe_key(r, "arm64", init, "tag")
    shuffled = dataclasses.replace(
        r, packages=tuple(reversed(r.packages)), trim=tuple(reversed(r.trim))
    )
    assert image.recipe_key(shuffled, "arm64", init, "tag") == base
    changed = [
        image.recipe_key(r, "amd64", init, "tag"),
        image.recipe_key(r, "arm64", init + b"#\n", "tag"),
        image.recipe_key(r, "arm64", init, "other python"),
        image.recipe_key(r, "arm64", init, None),
        image.recipe_key(
            dataclasses.replace(r, packages=(*r.packages, "strace")), "arm64", init, "tag"
        ),
        image.recipe_key(dataclasses.replace(r, trim=r.trim[1:]), "arm64", init, "tag"),
        image.recipe_key(
            dataclasses.replace(r, sources=(image.AptSource("http://x/debian", ("trixie",)),)),
            "arm64",
            init,
            "tag",
        ),
        image.recipe_key(
            dataclasses.replace(r, passwd="root:x:0:0::/:/bin/sh\n"), "arm64", init, "tag"
        ),
    ]
    assert len({base, *changed}) == len(changed) + 1


def test_recipe_key_follows_builder_version(monkeypatch: pytest.MonkeyPatch) -> None:
    before = image.recipe_key(ImageRecipe(), "arm64", b"", None)
    monkeypatch.setattr(image_recipe, "BUILDER_VERSION", image.BUILDER_VERSION + 1)
    assert image.recipe_key(ImageRecipe(), "arm64", b"", None) != before


def test_host_pyc_tag() -> None:
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    tag = image.host_pyc_tag(here)
    assert tag is not None and sys.version.split()[0] in tag
    assert image.host_pyc_tag("2.7") is None


# ---------------------------------------------------------------------------------------------
# pyc


def test_compile_pyc_is_deterministic_unchecked_and_uses_guest_paths() -> None:
    # A set constant is marshalled in hash order: only a fixed hash seed makes it reproducible.
    src = b"def f(x):\n    return x in {'alpha', 'beta', 'gamma', 'delta', 'epsilon'}\n"
    tree = image.with_parents(
        {
            "usr/lib/py/m.py": cpio.file("usr/lib/py/m.py", src),
            "usr/lib/py/pkg/__init__.py": cpio.file("usr/lib/py/pkg/__init__.py", b"X = 1\n"),
            "usr/lib/py/big/huge.py": cpio.file("usr/lib/py/big/huge.py", b"Y = 2\n"),
            "usr/lib/py/link.py": cpio.symlink("usr/lib/py/link.py", "/etc/elsewhere.py"),
            "other/n.py": cpio.file("other/n.py", b"Z = 3\n"),
        }
    )
    one, count = image.compile_pyc(tree, ("usr/lib/py",), ("usr/lib/py/big",))
    two, _ = image.compile_pyc(tree, ("usr/lib/py",), ("usr/lib/py/big",))
    tag = sys.implementation.cache_tag
    pyc = f"usr/lib/py/__pycache__/m.{tag}.pyc"
    assert count == 2
    assert set(one) - set(tree) == {
        "usr/lib/py/__pycache__",
        pyc,
        "usr/lib/py/pkg/__pycache__",
        f"usr/lib/py/pkg/__pycache__/__init__.{tag}.pyc",
    }
    assert one[pyc].data == two[pyc].data
    data = one[pyc].data
    assert int.from_bytes(data[4:8], "little") == 0b01  # hash-based, check_source off
    assert data[8:16] == __import__("importlib.util").util.source_hash(src)
    assert b"/usr/lib/py/m.py" in data  # co_filename is the guest path
    assert one[pyc].kind == "-" and one["usr/lib/py/__pycache__"].kind == "d"


# ---------------------------------------------------------------------------------------------
# apt plumbing that needs no network


def test_parse_print_uris() -> None:
    out = (
        "'http://mirror.example/debian/pool/main/b/busybox/busybox-static_1.35.0-4%2bdeb12u1%2bb1_arm64.deb'"
        " busybox-static_1%3a1.35.0-4+deb12u1+b1_arm64.deb 822236 SHA256:" + "a" * 64 + "\n"
        "'http://x/pool/libc6_2.36-9_arm64.deb' libc6_2.36-9_arm64.deb 10 SHA256:" + "b" * 64 + "\n"
    )
    debs = image.parse_print_uris(out, "arm64")
    assert [(d.package, d.version, d.architecture, d.size) for d in debs] == [
        ("busybox-static", "1:1.35.0-4+deb12u1+b1", "arm64", 822236),
        ("libc6", "2.36-9", "arm64", 10),
    ]
    with pytest.raises(LabError):
        image.parse_print_uris(out, "amd64")


def test_apt_config_is_private_and_arch_specific(tmp_path: Path) -> None:
    apt = image.AptDir(tmp_path, "arm64")
    conf = image_apt._apt_conf(apt, ImageRecipe())
    assert 'APT::Architectures { "arm64"; };' in conf
    assert f'Dir::Etc::parts "{tmp_path}/etc/empty/";' in conf
    assert "/etc/apt" not in conf
    sources = image_apt._sources_list(
        ImageRecipe(
            sources=(*FIXTURE_SOURCES, image.AptSource("file:/srv/m", ("x",), ("main",), "/k.gpg"))
        )
    )
    assert sources.splitlines() == [
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://mirror.example/debian bookworm main",
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://mirror.example/debian bookworm-updates main",
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://mirror.example/debian-security bookworm-security main",
        "deb [signed-by=/k.gpg] file:/srv/m x main",
    ]


def fake_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    tool = bin_dir / "apt-get"
    tool.write_text("#!/bin/sh\n" + script)
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def keyring_recipe(tmp_path: Path, **kw: Any) -> ImageRecipe:
    keyring = tmp_path / "keyring.gpg"
    keyring.write_bytes(b"not checked by the fake apt-get")
    return ImageRecipe(sources=FIXTURE_SOURCES, keyring=keyring, **kw)


def one_line_error(exc: pytest.ExceptionInfo[LabError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_missing_package_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_apt(
        tmp_path,
        monkeypatch,
        'case "$*" in *update*) exit 0;; esac\n'
        'echo "E: Unable to locate package python3.99-minimal" >&2\nexit 100\n',
    )
    recipe = keyring_recipe(tmp_path, packages=("python3.99-minimal",))
    with pytest.raises(LabError) as exc:
        image.build_base(recipe, "arm64", tmp_path / "cache")
    message = one_line_error(exc)
    assert "package python3.99-minimal not found for arm64" in message
    assert "package list" in message


def test_failed_update_without_lists_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_apt(
        tmp_path,
        monkeypatch,
        'echo "W: Failed to fetch http://mirror.example/debian/dists/bookworm/InRelease" >&2\n'
        'echo "E: Some index files failed to download." >&2\nexit 100\n',
    )
    with pytest.raises(LabError) as exc:
        image.build_base(keyring_recipe(tmp_path), "amd64", tmp_path / "cache")
    message = one_line_error(exc)
    assert message.startswith("apt-get update for amd64")
    assert "check network access" in message


def test_offline_update_falls_back_to_earlier_lists_but_not_on_bad_signatures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = keyring_recipe(tmp_path)
    apt = image.AptDir(tmp_path / "apt", "arm64")
    image_apt._prepare_apt(apt, recipe)
    fetch_failed = (
        'echo "W: Failed to fetch http://mirror.example/debian/dists/bookworm/InRelease" >&2\n'
        'echo "W: Some index files failed to download." >&2\nexit 0\n'
    )
    fake_apt(tmp_path, monkeypatch, fetch_failed)
    with pytest.raises(LabError, match="Failed to fetch"):  # apt exits 0, still a failure
        image.apt_update(apt, recipe, lambda _m: None)
    (apt.root / "lists" / "mirror.example_debian_dists_bookworm_main_binary-arm64_Packages").touch()
    logged: list[str] = []
    image.apt_update(apt, recipe, logged.append)
    assert "using the package lists from the last update" in logged[0]
    (tmp_path / "fakebin" / "apt-get").write_text(
        '#!/bin/sh\necho "W: GPG error: http://x bookworm InRelease: NO_PUBKEY 1234" >&2\n'
    )
    with pytest.raises(LabError, match=r"check the image recipe's keyring"):
        image.apt_update(apt, recipe, logged.append)


def test_missing_keyring_and_init_are_user_errors(tmp_path: Path) -> None:
    recipe = ImageRecipe(sources=FIXTURE_SOURCES, keyring=tmp_path / "nope.gpg")
    with pytest.raises(LabError, match=r"apt keyring .*nope.gpg not found"):
        image.build_base(recipe, "arm64", tmp_path / "cache")
    recipe = ImageRecipe(init_script=tmp_path / "no-init")
    with pytest.raises(LabError, match="cannot read the guest init script"):
        image.build_base(recipe, "arm64", tmp_path / "cache")
    with pytest.raises(LabError, match="no apt sources"):
        image.build_base(ImageRecipe(), "arm64", tmp_path / "cache")
    with pytest.raises(LabError, match="bad Debian arch"):
        image.build_base(ImageRecipe(), "../x", tmp_path / "cache")


def test_deb_arch_for() -> None:
    assert image.deb_arch_for("x86_64") == "amd64"
    assert image.deb_arch_for("arm64") == "arm64"
    assert image.deb_arch_for("aarch64") == "arm64"
    with pytest.raises(LabError, match="unknown guest arch"):
        image.deb_arch_for("riscv64")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any subprocess or socket from here on fails the test."""

    def refuse(*_a: object, **_k: object) -> Any:
        raise AssertionError("a cache hit must not run commands or open sockets")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_cache_hit_reads_only_the_manifest(tmp_path: Path, no_network: None) -> None:
    recipe = ImageRecipe(sources=FIXTURE_SOURCES)
    key = image.recipe_key(
        recipe, "arm64", recipe.init_script.read_bytes(), image.host_pyc_tag(recipe.python_version)
    )
    final = tmp_path / "images" / "arm64" / key
    final.mkdir(parents=True)
    (final / "base.cpio.gz").write_bytes(b"12345")
    manifest = {
        "key": key,
        "deb_arch": "arm64",
        "sha256": "0" * 64,
        "packages": [],
        "file_count": 1,
        "uncompressed_size": 10,
        "compressed_size": 5,
        "build_seconds": 1.0,
        "pyc": "x",
    }
    (final / "manifest.json").write_text(json.dumps(manifest))
    started = time.monotonic()
    hit = image.build_base(recipe, "arm64", tmp_path)
    assert time.monotonic() - started < 0.5
    assert hit.cache_hit and hit.path == final / "base.cpio.gz" and hit.key == key
    # A manifest that does not match its image is not a hit (and building would need apt).
    (final / "base.cpio.gz").write_bytes(b"1234")
    with pytest.raises(AssertionError, match="must not run"):
        image.build_base(recipe, "arm64", tmp_path)


# ---------------------------------------------------------------------------------------------
# overlay


def test_overlay_is_deterministic_and_overrides(tmp_path: Path) -> None:
    files = {
        "/lab/agent.py": (b"print('agent')\n", 0o755),
        "/lab/job.json": (b'{"cases": []}', 0o644),
        "/lab/cases/secretmem.py": (b"import ctypes\n", 0o644),
    }
    overlay = image.build_overlay(files)
    assert overlay == image.build_overlay(dict(reversed(list(files.items()))))
    assert gzip.decompress(overlay)  # a valid gzip member
    base = tmp_path / "base.cpio.gz"
    base.write_bytes(
        cpio.gzip_bytes(
            cpio.write_newc(
                [cpio.directory("lab"), cpio.file("lab/agent.py", b"old"), cpio.file("init", b"")]
            )
        )
    )
    dest = image.write_initrd(base, overlay, tmp_path / "run" / "initrd.gz")
    assert dest.read_bytes() == base.read_bytes() + overlay
    tree = cpio.flatten(image.list_image(dest))
    assert tree["lab/agent.py"].data == b"print('agent')\n"
    assert tree["lab/agent.py"].perm == 0o755
    assert tree["lab/cases/secretmem.py"].data == b"import ctypes\n"
    assert "init" in tree
    assert not list((tmp_path / "run").glob(".*"))  # no temp file left behind


def test_overlay_rejects_bad_paths() -> None:
    with pytest.raises(LabError, match="overlay"):
        image.build_overlay({"/lab/../etc/passwd": (b"", 0o644)})
    with pytest.raises(LabError, match="overlay"):
        image.build_overlay({"/": (b"", 0o644)})


# ---------------------------------------------------------------------------------------------
# real: fetches packages from the host's Debian mirror and builds both arches


def host_recipe() -> ImageRecipe:
    """What `lab image` uses without [image] in lab.toml: the host's apt sources."""
    return image.recipe_for(ImageSpec((), (), ""), REPO / "images")


ARCHES = ("amd64", "arm64")
LOADER = {"amd64": "lib64/ld-linux-x86-64.so.2", "arm64": "lib/ld-linux-aarch64.so.1"}
TRIPLET = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}
ELF_MACHINE = {"amd64": 62, "arm64": 183}


@dataclasses.dataclass(frozen=True)
class Built:
    first: image.BaseImage
    second: image.BaseImage  # same recipe, another cache root
    cold_seconds: float
    tree: dict[str, cpio.Entry]
    entries: list[cpio.Entry]
    root: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Built]]:
    out = {}
    for arch in ARCHES:
        root = tmp_path_factory.mktemp(f"cache-{arch}")
        started = time.monotonic()
        first = image.build_base(host_recipe(), arch, root)
        cold = time.monotonic() - started
        second = image.build_base(host_recipe(), arch, tmp_path_factory.mktemp(f"again-{arch}"))
        entries = image.list_image(first.path)
        out[arch] = Built(first, second, cold, cpio.flatten(entries), entries, root)
    yield out


@pytest.mark.real
@pytest.mark.parametrize("arch", ARCHES)
def test_real_build_is_deterministic_and_sized(built: dict[str, Built], arch: str) -> None:
    b = built[arch]
    assert not b.first.cache_hit and not b.second.cache_hit
    assert b.first.path.read_bytes() == b.second.path.read_bytes()
    assert b.first.sha256 == hashlib.sha256(b.first.path.read_bytes()).hexdigest()
    assert 6_000_000 < b.first.compressed_size < 10_500_000, b.first.compressed_size
    assert b.cold_seconds < 120
    manifest = json.loads(b.first.manifest_path.read_text())
    assert manifest["key"] == b.first.key
    assert {p["package"] for p in manifest["packages"]} == set(ImageRecipe().packages)
    assert all(len(p["sha256"]) == 64 and p["version"] for p in manifest["packages"])
    assert manifest["file_count"] == len(b.entries)
    assert manifest["pyc"].split()[0].isdigit()  # host is 3.11 here: compiled, not skipped


@pytest.mark.real
@pytest.mark.parametrize("arch", ARCHES)
def test_real_second_build_is_a_cache_hit_without_network(
    built: dict[str, Built], arch: str, no_network: None
) -> None:
    b = built[arch]
    started = time.monotonic()
    hit = image.build_base(host_recipe(), arch, b.root)
    elapsed = time.monotonic() - started
    assert hit.cache_hit and hit.path == b.first.path and hit.sha256 == b.first.sha256
    assert elapsed < 0.1, elapsed


@pytest.mark.real
@pytest.mark.parametrize("arch", ARCHES)
def test_real_image_contents(built: dict[str, Built], arch: str) -> None:
    tree = built[arch].tree
    python = tree["usr/bin/python3.11"]
    assert python.kind == "-" and python.perm == 0o755
    assert int.from_bytes(python.data[18:20], "little") == ELF_MACHINE[arch]
    assert tree["usr/bin/python3"].data == b"python3.11"
    assert tree["bin/busybox"].kind == "-"
    assert tree[LOADER[arch]].kind == "l"
    assert f"lib/{TRIPLET[arch]}/libc.so.6" in tree
    assert f"usr/lib/{TRIPLET[arch]}/libffi.so.8" in tree
    dyn = f"usr/lib/python3.11/lib-dynload/{{}}.cpython-311-{TRIPLET[arch]}.so"
    # _posixsubprocess, select, _signal... are built into Debian's python3.11 binary.
    for ext in ("_ctypes", "mmap", "resource", "_json", "termios"):
        assert dyn.format(ext) in tree, ext
    assert "usr/lib/python3.11/json/__pycache__/decoder.cpython-311.pyc" in tree
    assert tree["init"].data == (REPO / "images" / "init").read_bytes()
    assert tree["init"].perm == 0o755
    console = tree["dev/console"]
    assert (console.kind, console.rdev_major, console.rdev_minor) == ("c", 5, 1)
    assert b"lab:x:1000:1000:" in tree["etc/passwd"].data
    assert not any(n.startswith(("usr/share/doc", "usr/share/man")) for n in tree)
    assert not any("/gconv/" in n or n.startswith("usr/lib/python3.11/test/") for n in tree)
    assert "sys/kernel" not in tree
    assert all(e.uid == 0 and e.gid == 0 for e in built[arch].entries)
    names = [e.name for e in built[arch].entries]
    assert names == sorted(names)


@pytest.mark.real
@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")
@pytest.mark.parametrize("arch", ARCHES)
def test_real_image_reads_with_gnu_cpio(built: dict[str, Built], arch: str) -> None:
    raw = gzip.decompress(built[arch].first.path.read_bytes())
    done = subprocess.run(["cpio", "-it", "--quiet"], input=raw, capture_output=True, check=True)
    assert done.stdout.decode().split() == [e.name for e in built[arch].entries]


def extract(entries: list[cpio.Entry], dest: Path) -> None:
    """Files, dirs and symlinks only: device nodes would need mknod."""
    for e in entries:
        path = dest / e.name
        if e.kind == "d":
            path.mkdir(parents=True, exist_ok=True)
        elif e.kind == "-":
            path.write_bytes(e.data)
            path.chmod(e.perm)
        elif e.kind == "l":
            path.symlink_to(e.data.decode())


@pytest.mark.real
def test_real_amd64_python_runs_the_required_imports(
    built: dict[str, Built], tmp_path: Path
) -> None:
    """The host is amd64, so the image's own loader, libc and python run here unchanged."""
    extract(built["amd64"].entries, tmp_path)
    libs = f"{tmp_path}/lib/x86_64-linux-gnu:{tmp_path}/usr/lib/x86_64-linux-gnu"
    code = (
        "import ctypes, mmap, json, os, signal, resource, threading, subprocess, pwd\n"
        "import json.decoder\n"
        "assert json.decoder.__spec__.cached.endswith('.pyc')\n"
        f"assert json.decoder.__file__.startswith({str(tmp_path)!r})\n"
        "print(json.dumps([ctypes.sizeof(ctypes.c_void_p), mmap.PAGESIZE, os.cpu_count() > 0]))\n"
    )
    done = subprocess.run(
        [f"{tmp_path}/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "--library-path", libs,
         f"{tmp_path}/usr/bin/python3.11", "-I", "-B", "-c", code],
        capture_output=True, text=True, check=False, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [8, 4096, True]


@pytest.mark.real
def test_real_amd64_busybox_has_the_applets_init_uses(
    built: dict[str, Built], tmp_path: Path
) -> None:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(built["amd64"].tree["bin/busybox"].data)
    busybox.chmod(0o755)
    applets = set(
        subprocess.run([busybox, "--list"], capture_output=True, text=True).stdout.split()
    )
    init = (REPO / "images" / "init").read_text()
    wanted = {"sh", "mount", "hostname", "setsid", "cttyhack", "echo", "reboot"}
    assert wanted <= applets, wanted - applets
    assert "exec setsid cttyhack" in init or "cttyhack" not in init


def _build_in_child(root: str, queue: Any) -> None:
    img = image.build_base(host_recipe(), "amd64", Path(root))
    queue.put((img.sha256, img.cache_hit))


@pytest.mark.real
def test_real_concurrent_builders_share_one_build(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_build_in_child, args=(str(tmp_path), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results[0][0] == results[1][0]
    assert sorted(hit for _, hit in results) == [False, True]  # the second waited, then hit
    images = tmp_path / "images" / "amd64"
    assert [p.name for p in images.iterdir() if p.name.startswith(".tmp")] == []


def test_the_image_lock_says_when_it_waits_for_another_build(tmp_path: Path) -> None:
    """image/base's lock is cache.locked: a second builder waits, and says so once."""
    import fcntl
    import os
    import threading

    from lab.image import base

    lock = tmp_path / "locks" / "image-amd64.lock"
    lock.parent.mkdir()
    holder = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another build holds it
    said: list[str] = []
    got = threading.Event()

    def second() -> None:
        with base._locked(lock, said.append):
            got.set()

    t = threading.Thread(target=second)
    t.start()
    deadline = time.monotonic() + 10
    while not said and time.monotonic() < deadline:
        time.sleep(0.01)
    assert said == [f"waiting for another image build ({lock})"] and not got.is_set()
    os.close(holder)
    t.join(10)
    assert got.is_set() and len(said) == 1
    with base._locked(lock, said.append):  # free now: no message
        pass
    assert len(said) == 1
