"""Real kernel builds from Debian's linux-source-6.1 for both arches. Slow tier.

Times are printed (run pytest with -s to see them), not asserted: the cost of a
variant switch is asserted as objects recompiled, which does not depend on load.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from realtools import REPO, lab

from lab.config import load

pytestmark = pytest.mark.real


def _build(*args: str) -> tuple[list[dict[str, object]], str, float]:
    t0 = time.monotonic()
    p = lab("build", *args, "--json")
    wall = time.monotonic() - t0
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout), p.stderr, wall


def _meta(entry: dict[str, object]) -> dict[str, object]:
    return json.loads((Path(str(entry["dir"])) / "meta.json").read_text())


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_build_then_cache_hit(arch: str) -> None:
    (first,), _, wall = _build("--arch", arch)
    meta = _meta(first)
    assert Path(str(first["image"])).is_file()
    assert meta["arch"] == arch and meta["variant"] == "U0"
    assert str(meta["source"]["identity"]).startswith("tarball:sha256:")  # type: ignore[index]
    assert "linux-source-6.1" in str(meta["source"]["description"])  # type: ignore[index]
    assert [p["series"] for p in meta["series"]] and all(  # type: ignore[union-attr]
        len(p["sha256"]) == 64 for p in meta["series"]
    )  # type: ignore[union-attr]
    assert "gcc" in str(meta["toolchain"]["gcc_version"])  # type: ignore[index]
    assert meta["reproducer"] and meta["make_command"]
    for name in ("config", "System.map", "vmlinux", "build.log", "fragment.config"):
        assert (Path(str(first["dir"])) / name).is_file(), name
    print(
        f"\n{arch} U0: {'cache hit' if first['cached'] else 'built'} in {wall:.1f}s "
        f"(make {meta['durations']['make']:.1f}s, "  # type: ignore[index]
        f"{meta['objects_compiled']} objects)"
    )
    (again,), err, wall = _build("--arch", arch)
    assert again["cached"] is True and again["key"] == first["key"]
    assert "no make" in err
    print(f"{arch} U0 again: cache hit in {wall:.2f}s wall (lab start-up included)")


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_second_variant_rebuilds_only_what_its_symbols_touch(arch: str) -> None:
    # --force both: a cache hit leaves the shared tree as it was, and a cached U1 keeps the
    # build.log of whatever variant its tree held before it was built (e.g. a 5.11-era
    # one, whose switch recompiles oom_kill.c and memcontrol.c): the tree must hold U0.
    _build("--arch", arch, "--variant", "U0", "--force")
    (u1,), _, wall = _build("--arch", arch, "--variant", "U1", "--force")
    u0_meta = _meta(_build("--arch", arch, "--variant", "U0")[0][0])
    u1_meta = _meta(u1)
    print(
        f"\n{arch}: U0 make {u0_meta['durations']['make']:.1f}s "  # type: ignore[index]
        f"({u0_meta['objects_compiled']} objects); U1 make "
        f"{u1_meta['durations']['make']:.1f}s ({u1_meta['objects_compiled']} objects), "  # type: ignore[index]
        f"wall {wall:.1f}s"
    )
    # U0 -> U1 flips the fault-policy choice, used by mm/secretmem.c only: that is the
    # one source file compiled; the rest is the relink (kallsyms, the compressed image).
    # The build tree's own log: a forced build of a cached key keeps the cache entry that
    # is already there (same inputs, same bytes: test_same_inputs_same_image_bytes), with
    # the build.log of its first build.
    log = (Path(str(u1_meta["build_tree"])) / ".lab" / "build.log").read_text()
    compiled = {line.split()[1] for line in log.splitlines() if re.match(r"^\s+(CC|AS)\s", line)}
    relink = {
        c for c in compiled if c.startswith((".tmp_vmlinux", "arch/x86/boot/", "arch/arm64/boot/"))
    }
    assert compiled - relink == {"mm/secretmem.o"}, compiled
    assert u1_meta["build_tree"] == u0_meta["build_tree"]


def test_same_inputs_same_image_bytes() -> None:
    (u0,), _, _ = _build("--arch", "x86_64", "--variant", "U0")
    before = _meta(u0)["image_sha256"]
    _build("--arch", "x86_64", "--variant", "U1")  # move the shared tree away from U0
    (again,), _, _ = _build("--arch", "x86_64", "--variant", "U0", "--force")
    assert _meta(again)["image_sha256"] == before


def test_dropped_symbol_names_its_unmet_dependency(tmp_path: Path) -> None:
    cfg_dir = tmp_path / "kernels" / "config"
    cfg_dir.mkdir(parents=True)
    for f in (REPO / "kernels" / "config").iterdir():
        (cfg_dir / f.name).write_text(f.read_text())
    (cfg_dir / "x86_64.config.j2").write_text(
        (cfg_dir / "x86_64.config.j2").read_text() + "# CONFIG_SERIAL_8250 is not set\n"
    )
    (tmp_path / "kernels" / "patches").symlink_to(REPO / "kernels" / "patches")
    text = (
        (REPO / "lab.toml")
        .read_text()
        .replace(
            "[lab]\n",
            f'[lab]\nkernels_dir = "{tmp_path / "kernels"}"\n'
            f'testcases_dir = "{REPO / "testcases"}"\nimages_dir = "{REPO / "images"}"\n',
            1,
        )
    )
    (tmp_path / "lab.toml").write_text(text)
    p = lab("build", "--arch", "x86_64", "--variant", "U0", config=tmp_path / "lab.toml")
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    line = p.stderr.strip().splitlines()[-1]
    assert "config symbol CONFIG_SERIAL_8250_CONSOLE=y requested at x86_64.config.j2" in line
    assert "dropped by olddefconfig (final value: n)" in line
    assert "depends on SERIAL_8250=y [SERIAL_8250=n]" in line


def test_config_show_renders_fragment_and_diff() -> None:
    p = lab("config", "show", "--arch", "x86_64", "--variant", "C0")
    assert p.returncode == 0, p.stderr
    assert "# --- rendered secretmem.config.j2" in p.stdout
    assert "CONFIG_SECRETMEM_POOL_CMA: n -> y" in p.stdout
    assert "CONFIG_EMBEDDED: y -> n" in p.stdout


def test_every_secretmem_variant_builds_on_both_arches() -> None:
    # the secretmem family only: the real tier builds one LKDTM kernel, the plain one on
    # x86_64 (tests/test_lkdtm_real.py); the lkdtm debug configs are nightly's (issue 13)
    t0 = time.monotonic()
    cfg = load(REPO / "lab.toml")
    secretmem = [v.name for v in cfg.variants if v.family == "secretmem"]
    entries, _, _ = _build(*(a for name in secretmem for a in ("--variant", name)))
    names = {(e["arch"], e["variant"]) for e in entries}
    assert names == {(a, n) for a in cfg.arches for n in secretmem}
    assert len(names) == 32  # 8 variants x 2 eras x 2 arches
    print(f"\nlab build (every secretmem variant): {time.monotonic() - t0:.0f}s")
    for e in entries:
        m = _meta(e)
        print(
            f"  {e['arch']:7} {e['variant']:3} make {m['durations']['make']:6.1f}s "  # type: ignore[index]
            f"{m['objects_compiled']:4} objects  {'cached' if e['cached'] else 'built'}"
        )
