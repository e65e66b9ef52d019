"""The README's first command on a FRESH Debian 12 root (real tier, root only, no kernel build).

mmdebstrap makes a minimal bookworm root (variant minbase: Essential packages and apt),
cached as a tarball under LAB_CACHE_DIR keyed by its inputs. Each run unpacks a throwaway
copy, copies this checkout in and, chrooted into it:

1. `./labw --version` installs Python and the venv (labw's first step),
2. `lab doctor` reports what is missing; `./labw doctor` then runs `lab setup`, which must
   install exactly the packages doctor named, after which doctor passes,
3. `./labw image` builds the guest image for both arches, and the kernel's memfd_secret
   selftest cross-compiles for both arches through the lab's own code (source extraction,
   guest libcap via the image's apt directory, static link): the proof that the table in
   lab/prereqs.py covers what the commands run. Drop a row (say the arm64 libc headers)
   and this step fails with the compiler's `sys/uio.h: No such file`,
4. `lab setup --tests` installs the second README command's prerequisites, and Chromium
   renders a page and sshd answers on a loopback port, inside the root.

Mounts (/proc, /sys, /dev, the caches) live in a private mount namespace (`unshare -m`) that
dies with the command, so nothing stays mounted whatever happens to the test; apt inside the
root uses the host's apt sources (the ones lab/image/ picks for the guest image), so only
the package registries are reached. The root's .deb and pip caches persist under
LAB_CACHE_DIR so a rerun downloads little.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import real_cache_dir

from lab import image, prereqs

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parent.parent
ROOT_FORMAT = 1  # bump when the way the cached root is made changes
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INSIDE = "/work/lab"  # where the checkout goes in the root
ELF_MACHINE = {"x86_64": 62, "arm64": 183}

# Runs inside the root with the root's venv: the matrix's own path to a selftest binary
# (kselftest.build: guest libcap through the image's apt directory, static link with the
# arch's compiler). Of the kernel source only the selftests are extracted, with the same tar
# and xz the matrix's extraction runs: writing, then deleting, the whole 1.4 GB tree would
# take most of this test's time and prove nothing more about the prerequisites.
KSELFTEST = """
import json, subprocess, sys
from pathlib import Path
from lab import config, prereqs
from lab.build import kselftest
from lab.vm import boot
cfg = config.load(Path("lab.toml"))
log = lambda m: print(m, file=sys.stderr)
dest = Path("/tmp/ksrc")
dest.mkdir()
subprocess.run([prereqs.program("tar"), "-xf", cfg.source.path, "-C", str(dest), "--wildcards",
                "*/tools/testing/selftests/vm/*", "*/tools/testing/selftests/kselftest.h"],
               check=True)
(tree,) = dest.iterdir()
recipe = boot.image_recipe(cfg)
out = {}
for arch in cfg.arches.values():
    out[arch.name] = str(kselftest.build(
        "kselftest:vm/memfd_secret", arch, tree, recipe, cfg.cache_dir, log))
print(json.dumps(out))
"""


def _sources_text() -> str:
    """The host's apt sources for bookworm, as the lab reads them, in one-line format."""
    picked = image.release_sources(image.host_sources(), image.RELEASE_SUITES)
    if not picked:
        pytest.fail("the host's apt sources have no bookworm entry (see lab/image/)")
    lines = []
    for src in picked:
        keyring = src.signed_by or prereqs.DEBIAN_KEYRING
        lines += [f"deb [signed-by={keyring}] {src.uri} {s} main" for s in src.suites]
    return "\n".join(lines) + "\n"


def _ensure_mmdebstrap() -> str:
    """mmdebstrap is in the table's tests rows (`lab setup --tests` installs it); install
    just that row here when the suite runs without labw."""
    need = prereqs.PROGRAMS["mmdebstrap"]
    if need.locate() is None:
        from lab import doctor

        doctor.install([need.package])
    found = need.locate()
    assert found, "mmdebstrap missing after apt-get install"
    return found


def _mmdebstrap_version(binary: str) -> str:
    done = subprocess.run([binary, "--version"], capture_output=True, text=True)
    return (done.stdout + done.stderr).strip()


def cached_root(store: Path) -> Path:
    """A minbase bookworm tarball, made once per (mmdebstrap version, sources) and reused."""
    binary = _ensure_mmdebstrap()
    sources = _sources_text()
    inputs = {
        "format": ROOT_FORMAT,
        "mmdebstrap": _mmdebstrap_version(binary),
        "suite": image.RELEASE,
        "variant": "minbase",
        "sources": sources,
    }
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    tarball = store / f"root-{key}.tar"
    if tarball.is_file():
        return tarball
    store.mkdir(parents=True, exist_ok=True)
    (store / f"root-{key}.json").write_text(json.dumps(inputs, indent=1) + "\n")
    list_file = store / f"sources-{key}.list"
    list_file.write_text(sources)
    partial = store / f".root-{key}.tar.partial"
    done = subprocess.run(
        [binary, "--mode=root", "--variant=minbase", "--format=tar", "--quiet",
         image.RELEASE, str(partial), str(list_file)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, f"mmdebstrap failed: {done.stderr[-2000:]}"
    partial.replace(tarball)
    return tarball


class Root:
    """A throwaway copy of the cached root; commands run chrooted in a private mount ns."""

    def __init__(self, path: Path, caches: Path) -> None:
        self.path = path
        self.apt_cache = caches / "apt-archives"
        self.pip_cache = caches / "pip"
        self.lab_cache = path / "var" / "cache" / "lab"  # fresh each run: images build
        self.env = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
                    "LAB_CACHE_DIR": "/var/cache/lab"}  # fmt: skip
        for name, value in os.environ.items():
            # The host's pip settings (CA bundle for its egress, timeouts), so pip inside
            # reaches the registry the way the host's does; the bundle is copied in below.
            if name.startswith("PIP_") and name != "PIP_FIND_LINKS":
                self.env[name] = value

    def prepare(self, tarball: Path) -> None:
        self.path.mkdir(parents=True)
        subprocess.run(["tar", "-xf", str(tarball), "-C", str(self.path)], check=True)
        for d in (self.apt_cache / "partial", self.pip_cache, self.lab_cache):
            d.mkdir(parents=True, exist_ok=True)
        (self.path / "root" / ".cache" / "pip").mkdir(parents=True, exist_ok=True)
        shutil.copy2("/etc/resolv.conf", self.path / "etc" / "resolv.conf")
        cert = os.environ.get("PIP_CERT", "")
        if cert and Path(cert).is_file():
            shutil.copy2(cert, self.path / "lab-host-ca.crt")
            self.env["PIP_CERT"] = "/lab-host-ca.crt"
        # The checkout as a clone would have it (tracked and new files, no venv or caches).
        files = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO, capture_output=True, check=True,
        ).stdout.split(b"\0")  # fmt: skip
        dest = self.path / INSIDE.lstrip("/")
        for name in filter(None, (f.decode() for f in files)):
            src = REPO / name
            if src.is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)

    def argv(self, *command: str, cwd: str = INSIDE) -> list[str]:
        r = str(self.path)
        script = (
            "set -e\n"
            f'mount -t proc proc "{r}/proc"\n'
            f'mount -t sysfs sys "{r}/sys"\n'
            f'mount --rbind /dev "{r}/dev"\n'
            f'mount --bind "{self.apt_cache}" "{r}/var/cache/apt/archives"\n'
            f'mount --bind "{self.pip_cache}" "{r}/root/.cache/pip"\n'
            f'cd "{r}{cwd}"\n'
            f'exec chroot "{r}" sh -c \'cd "$0" && exec "$@"\' "{cwd}" "$@"\n'
        )
        env = [f"{k}={v}" for k, v in self.env.items()]
        return ["unshare", "--mount", "--propagation", "private", "--",
                "env", "-i", *env, "sh", "-c", script, "root", *command]  # fmt: skip

    def run(self, *command: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*command), capture_output=True, text=True, timeout=timeout)


def _show(done: subprocess.CompletedProcess[str]) -> str:
    out, err = done.stdout[-3000:], done.stderr[-3000:]
    return f"exit {done.returncode}\n--- stdout\n{out}\n--- stderr\n{err}"


def _missing_packages(doctor_output: str) -> list[str]:
    line = next(ln for ln in doctor_output.splitlines() if "to install what is missing" in ln)
    return line.split("--no-install-recommends", 1)[1].split()


def _elf(path: Path) -> tuple[int, bool]:
    """(e_machine, statically linked) of a 64-bit little-endian ELF file."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF", f"{path} is not ELF"
    machine = int.from_bytes(data[18:20], "little")
    phoff, phentsize, phnum = (
        int.from_bytes(data[32:40], "little"),
        int.from_bytes(data[54:56], "little"),
        int.from_bytes(data[56:58], "little"),
    )
    types = [
        int.from_bytes(data[phoff + i * phentsize : phoff + i * phentsize + 4], "little")
        for i in range(phnum)
    ]
    return machine, 3 not in types  # PT_INTERP: a dynamic loader


@pytest.fixture(scope="module")
def fresh_root() -> Iterator[Root]:
    if os.geteuid() != 0:
        pytest.skip("the fresh-root test needs root (mmdebstrap --mode=root, chroot, mounts)")
    store = real_cache_dir() / "fresh-root"
    started = time.monotonic()
    tarball = cached_root(store)
    work = store / f"work-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    root = Root(work / "root", store)
    root.prepare(tarball)
    print(f"\nfresh root {tarball.name} ready in {time.monotonic() - started:.0f} s")
    try:
        yield root
    finally:
        # No mount of the root exists in this namespace (they lived in the commands' own),
        # so removing the tree cannot reach into the host's /dev or caches.
        t = time.monotonic()
        shutil.rmtree(work, ignore_errors=True)
        print(f"\nfresh root removed in {time.monotonic() - t:.0f} s")


def test_readme_first_command_prerequisites_on_a_fresh_root(fresh_root: Root) -> None:
    t0 = time.monotonic()
    boot = fresh_root.run("./labw", "--version", timeout=900)
    assert boot.returncode == 0, "labw could not prepare Python and the venv:\n" + _show(boot)

    before = fresh_root.run(".venv/bin/lab", "doctor")
    assert before.returncode == 1, "doctor on a fresh root should find missing packages:\n" + (
        _show(before)
    )
    named = _missing_packages(before.stdout)

    setup = fresh_root.run("./labw", "doctor", timeout=1500)
    assert setup.returncode == 0, "labw doctor (doctor, then setup) failed:\n" + _show(setup)
    installing = next(ln for ln in setup.stderr.splitlines() if ln.startswith("installing: "))
    assert installing.split()[1:] == named, "setup must install exactly what doctor named"
    assert "all prerequisites present" in setup.stdout
    print(f"setup installed {len(named)} packages in {time.monotonic() - t0:.0f} s: {named}")

    t1 = time.monotonic()
    images = fresh_root.run("./labw", "image", timeout=900)
    assert images.returncode == 0, "lab image failed in the fresh root:\n" + _show(images)
    for arch in ("x86_64", "arm64"):
        assert any(ln.startswith(f"{arch}: ") and "built in" in ln
                   for ln in images.stdout.splitlines()), images.stdout  # fmt: skip
    print(f"images: {images.stdout.strip()} ({time.monotonic() - t1:.0f} s)")

    t2 = time.monotonic()
    built = fresh_root.run(".venv/bin/python", "-c", KSELFTEST, timeout=900)
    assert built.returncode == 0, "memfd_secret did not cross-compile in the fresh root:\n" + (
        _show(built)
    )
    binaries = json.loads(built.stdout.strip().splitlines()[-1])
    for arch, inside in binaries.items():
        machine, static = _elf(fresh_root.path / inside.lstrip("/"))
        assert (machine, static) == (ELF_MACHINE[arch], True), (arch, machine, static)
    print(f"memfd_secret built for {sorted(binaries)} in {time.monotonic() - t2:.0f} s")


def test_readme_second_command_prerequisites_on_a_fresh_root(fresh_root: Root) -> None:
    if not (fresh_root.path / INSIDE.lstrip("/") / ".venv" / "bin" / "lab").exists():
        pytest.skip("the first fresh-root test did not get as far as the venv")
    before = fresh_root.run(".venv/bin/lab", "doctor", "--tests")
    assert before.returncode == 1, _show(before)
    named = _missing_packages(before.stdout)
    assert {"chromium", "openssh-server"} <= set(named), named
    setup = fresh_root.run("./labw", "setup", "--tests", timeout=1500)
    assert setup.returncode == 0, "lab setup --tests failed:\n" + _show(setup)
    after = fresh_root.run(".venv/bin/lab", "doctor", "--tests")
    assert after.returncode == 0, _show(after)

    # Chromium starts and renders (headless, as the report test drives it).
    page = f"{INSIDE}/fresh-root-page.html"
    (fresh_root.path / page.lstrip("/")).write_text("<p id=x>rendered in the fresh root</p>")
    dom = fresh_root.run(
        "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
        f"file://{page}", timeout=180,
    )  # fmt: skip
    assert "rendered in the fresh root" in dom.stdout, _show(dom)

    # sshd starts from its own config and greets a client on a loopback port.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    keys = fresh_root.run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", "/root/hostkey")
    assert keys.returncode == 0, _show(keys)
    (fresh_root.path / "run" / "sshd").mkdir(parents=True, exist_ok=True)
    sshd = subprocess.Popen(
        fresh_root.argv("/usr/sbin/sshd", "-D", "-e", "-p", str(port),
                        "-o", "ListenAddress=127.0.0.1", "-h", "/root/hostkey"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        banner = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not banner.startswith(b"SSH-2.0-"):
            assert sshd.poll() is None, sshd.communicate()[0].decode(errors="replace")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
                    banner = c.recv(64)
            except OSError:
                time.sleep(0.2)
        assert banner.startswith(b"SSH-2.0-OpenSSH"), banner
    finally:
        os.killpg(sshd.pid, 15)
        sshd.wait(timeout=20)
