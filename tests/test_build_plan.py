"""Build planning is pure: cache keys and shared build trees from resolved inputs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lab import build, config
from lab.build import patches
from lab.build.toolchain import Toolchain

NO_PATCHES = patches.Series(())
TOOLS = Toolchain("/usr/bin/gcc", "gcc (Debian 12.2.0-14) 12.2.0", "GNU ld 2.40")


def _plan(
    cfg: config.LabConfig,
    variant: str,
    frag: str = "CONFIG_A=y\n",
    tools: Toolchain = TOOLS,
    source: str = "tarball:sha256:aa",
    series: patches.Series = NO_PATCHES,
) -> build.BuildPlan:
    arch = cfg.arch("x86_64")
    fragments = (
        build.Fragment("base.config.j2", "CONFIG_PRINTK=y\n"),
        build.Fragment("knob", frag),
    )
    return build.make_plan(
        cfg,
        arch,
        cfg.variant(variant),
        fragments,
        source,
        "desc",
        series,
        tools,
        "make:tinyconfig",
        2,
    )


def test_same_inputs_same_key(mini_lab: Path) -> None:
    cfg = config.load(mini_lab / "lab.toml")
    assert _plan(cfg, "demo-True").key == _plan(cfg, "demo-True").key


def test_key_covers_every_input(mini_lab: Path) -> None:
    cfg = config.load(mini_lab / "lab.toml")
    ref = _plan(cfg, "demo-True")
    changed = [
        _plan(cfg, "demo-True", frag="CONFIG_A=n\n"),
        _plan(cfg, "demo-True", tools=dataclasses.replace(TOOLS, gcc_version="gcc 13")),
        _plan(cfg, "demo-True", source="tarball:sha256:bb"),
        _plan(cfg, "demo-True", series=patches.Series((patches.Patch("s", "p", Path("p"), "ff"),))),
    ]
    assert len({ref.key, *(p.key for p in changed)}) == 5
    mv = dataclasses.replace(
        cfg, build=dataclasses.replace(cfg.build, make_vars=(("KCFLAGS", "-O1"),))
    )
    assert _plan(mv, "demo-True").key != ref.key


def test_variants_differing_in_config_share_a_build_tree(mini_lab: Path) -> None:
    cfg = config.load(mini_lab / "lab.toml")
    a = _plan(cfg, "demo-True", frag="CONFIG_A=y\n")
    b = _plan(cfg, "demo-False", frag="CONFIG_A=n\n")
    assert a.key != b.key and a.tree_key == b.tree_key
    c = _plan(cfg, "demo-True", tools=dataclasses.replace(TOOLS, gcc_version="gcc 13"))
    assert c.tree_key != a.tree_key


def test_make_args_are_reproducible(mini_lab: Path) -> None:
    cfg = config.load(mini_lab / "lab.toml")
    args = _plan(cfg, "demo-True").make_args(Path("/src"), Path("/obj"))
    assert "KBUILD_BUILD_TIMESTAMP=Thu Jan 21 12:27:23 UTC 2021" in args
    assert {"KBUILD_BUILD_USER=lab", "KBUILD_BUILD_HOST=lab", "KBUILD_BUILD_VERSION=1"} <= set(args)
    assert args[:5] == ["make", "-C", "/src", "O=/obj", "ARCH=x86_64"]


def test_first_errors_prefers_compiler_lines() -> None:
    log = (
        "  CC      mm/a.o\nmm/secretmem.c:12:3: error: 'x' undeclared\n"
        "make[3]: *** [scripts/Makefile.build:250: mm/secretmem.o] Error 1\n"
    )
    assert build.first_errors(log) == ["mm/secretmem.c:12:3: error: 'x' undeclared"]
    assert build.first_errors("make: *** No rule to make target 'foo'.  Stop.\n") == [
        "make: *** No rule to make target 'foo'.  Stop."
    ]
