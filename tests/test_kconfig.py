"""Fragments, merging onto a base, verification and the 'why was it dropped' reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.build import kconfig
from lab.errors import LabError

BASE = """\
CONFIG_64BIT=y
# CONFIG_SLUB is not set
CONFIG_SLOB=y
CONFIG_LOG_BUF_SHIFT=17
CONFIG_CMDLINE=""
"""


def test_parse_fragment_and_errors() -> None:
    s = kconfig.parse_fragment(
        'CONFIG_A=y\n# CONFIG_B is not set\n# comment\n\nCONFIG_C="x y"\n', "f"
    )
    assert [(x.symbol, x.value, x.source) for x in s] == [
        ("CONFIG_A", "y", "f:1"),
        ("CONFIG_B", "n", "f:2"),
        ("CONFIG_C", '"x y"', "f:5"),
    ]
    with pytest.raises(LabError, match=r"frag:2: not a kconfig line: 'CONFIG_X y'"):
        kconfig.parse_fragment("CONFIG_A=y\nCONFIG_X y\n", "frag")


def test_last_setting_wins_and_merge_replaces_in_place() -> None:
    frags = kconfig.parse_fragment("CONFIG_SLUB=y\n# CONFIG_SLOB is not set\nCONFIG_NEW=m\n", "a")
    frags += kconfig.parse_fragment("CONFIG_NEW=y\n", "b")
    merged = kconfig.merge(BASE, frags)
    values = kconfig.parse_config(merged)
    assert values["CONFIG_SLUB"] == "y" and values["CONFIG_SLOB"] == "n"
    assert values["CONFIG_NEW"] == "y" and values["CONFIG_64BIT"] == "y"
    assert merged.count("CONFIG_SLOB") == 1  # replaced, not duplicated


def test_verify_reports_dropped_symbols() -> None:
    wanted = kconfig.requested(
        kconfig.parse_fragment("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=5\n", "f")
    )
    final = kconfig.parse_config("CONFIG_A=y\nCONFIG_C=4\n")
    dropped = kconfig.verify(wanted, final)
    assert [(d.setting.symbol, d.final) for d in dropped] == [("CONFIG_C", "4")]
    assert kconfig.verify(wanted, {"CONFIG_A": "y", "CONFIG_C": "5"}) == []


def test_diff() -> None:
    assert kconfig.diff(
        {"CONFIG_A": "y", "CONFIG_B": "y"}, {"CONFIG_A": "n", "CONFIG_B": "y", "CONFIG_C": "m"}
    ) == ["CONFIG_A: y -> n", "CONFIG_C: n -> m"]


def test_find_dependencies_reads_entries_if_blocks_and_skips_help(tmp_path: Path) -> None:
    (tmp_path / "mm").mkdir()
    (tmp_path / "arch" / "arm64").mkdir(parents=True)
    (tmp_path / "mm" / "Kconfig").write_text(
        'config OTHER\n\tbool "other"\n\thelp\n\t  if you say y here\n\t  things\n\n'
        "if SECRETMEM\n"
        'menuconfig LABX\n\tbool "lab"\n\tdepends on CMA && !EMBEDDED\n\thelp\n\t  if in doubt\n'
        "endif\n"
        "config SECRETMEM\n\tdef_bool ARCH_HAS_SET_DIRECT_MAP && !EMBEDDED\n"
    )
    (tmp_path / "arch" / "arm64" / "Kconfig").write_text("config LABX\n\tdepends on ARM64\n")
    deps = kconfig.find_dependencies(tmp_path, "x86", "LABX")
    final = {"CONFIG_CMA": "y", "CONFIG_EMBEDDED": "y"}
    text = [kconfig.explain(d, final) for d in deps]
    assert text == [
        "if SECRETMEM [SECRETMEM=n] (mm/Kconfig:7)",
        "depends on CMA && !EMBEDDED [CMA=y, EMBEDDED=y] (mm/Kconfig:10)",
    ]
    sm = kconfig.find_dependencies(tmp_path, "x86", "SECRETMEM")
    assert [kconfig.explain(d, final) for d in sm] == [
        "def_bool ARCH_HAS_SET_DIRECT_MAP && !EMBEDDED "
        "[ARCH_HAS_SET_DIRECT_MAP=n, EMBEDDED=y] (mm/Kconfig:15)"
    ]


def test_joined_lines_are_caught() -> None:
    """A template whose whitespace control eats newlines must fail loudly, not half-apply."""
    with pytest.raises(LabError, match=r"f:1: CONFIG_A: 'yCONFIG_B=y' is not a kconfig value"):
        kconfig.parse_fragment("CONFIG_A=yCONFIG_B=y\n", "f")
    with pytest.raises(LabError, match=r"f:2: malformed line '# CONFIG_A is not setCONFIG_B=y'"):
        kconfig.parse_fragment("CONFIG_C=0x10\n# CONFIG_A is not setCONFIG_B=y\n", "f")
    ok = kconfig.parse_fragment('CONFIG_S="a \\"b\\""\nCONFIG_N=-3\n', "f")
    assert [s.value for s in ok] == ['"a \\"b\\""', "-3"]
