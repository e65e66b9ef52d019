"""More than one kernel source per lab.toml: `[sources.NAME]` tables; a family (or an
axis, through a template) picks one with `source = "NAME"`."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_build_plan import _plan

from lab import config, prereqs
from lab.errors import LabError

SOURCES = """\
[sources.linux-6_1]
kind = "debian"
package = "linux-source-6.1"
[sources.linux-6_12]
kind = "debian"
package = "linux-source-6.12"
"""


def _two_bases(
    mini_lab: Path, source: str = 'source = "linux-{{ base|replace(\\".\\", \\"_\\") }}"'
) -> Path:
    f = mini_lab / "lab.toml"
    text = f.read_text().replace("[variants.demo]\n", f"{SOURCES}[variants.demo]\n{source}\n")
    f.write_text(text.replace("knob = [false, true]", 'knob = [false]\nbase = ["6.1", "6.12"]'))
    return f


def test_an_axis_picks_the_source(mini_lab: Path) -> None:
    cfg = config.load(_two_bases(mini_lab))
    by_name = {v.name: v for v in cfg.variants}
    assert set(by_name) == {"demo-False-6.1", "demo-False-6.12"}
    old, new = by_name["demo-False-6.1"], by_name["demo-False-6.12"]
    assert (old.source, new.source) == ("linux-6_1", "linux-6_12")
    assert cfg.source_for(new).package == "linux-source-6.12"
    assert cfg.source_for(new).path == "/usr/src/linux-source-6.12.tar.xz"
    assert cfg.source.kind == "tarball"  # [source] stays the default for other families
    # Planning is pure: the source identity it is given is part of the key and the tree.
    a = _plan(cfg, "demo-False-6.1", source="tarball:sha256:61")
    b = _plan(cfg, "demo-False-6.12", source="tarball:sha256:612")
    assert a.key != b.key and a.tree_key != b.tree_key


def test_sources_only_the_first_is_the_default(mini_lab: Path) -> None:
    f = _two_bases(mini_lab)
    f.write_text(f.read_text().replace('[source]\nkind = "tarball"\npath = "linux.tar.xz"\n', ""))
    cfg = config.load(f)
    assert cfg.source.package == "linux-source-6.1"
    # `lab setup`/`doctor` cover every source's package.
    tarballs = {n.path for n in prereqs.for_config(cfg) if n.name == "kernel source"}
    assert tarballs == {"/usr/src/linux-source-6.1.tar.xz", "/usr/src/linux-source-6.12.tar.xz"}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            'source = "linux-{{ base }}"',
            "'linux-6.1' (variant demo-False-6.1) is not a [sources.NAME]",
        ),
        ('source = "{{ bse }}"', "'bse' is undefined"),
    ],
)
def test_unknown_source_is_one_line(mini_lab: Path, source: str, expected: str) -> None:
    with pytest.raises(LabError) as exc:
        config.load(_two_bases(mini_lab, source))
    msg = str(exc.value)
    assert "\n" not in msg and expected in msg and "[variants.demo]" in msg
    if "sources.NAME" in expected:
        assert "valid: linux-6_1, linux-6_12" in msg


def test_bad_source_name(mini_lab: Path) -> None:
    f = mini_lab / "lab.toml"
    f.write_text(f.read_text() + '[sources."../x"]\nkind = "tree"\npath = "/tmp"\n')
    with pytest.raises(LabError, match=r"source name '\.\./x' is not valid"):
        config.load(f)


def test_the_documented_example_loads(mini_lab: Path) -> None:
    """docs/lab-toml.md's [sources.NAME] example, as written there."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "lab-toml.md").read_text()
    example = doc.split("## `[sources.NAME]`", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    f = mini_lab / "lab.toml"
    f.write_text(f.read_text() + example)
    cfg = config.load(f)
    got = {v.name: (v.source, v.series) for v in cfg.variants if v.family == "base-compare"}
    assert got == {
        "base-compare-6.1": ("linux-6_1", ("secretmem-lab",)),
        "base-compare-6.12": ("linux-6_12", ("secretmem-lab-6.12",)),
    }
