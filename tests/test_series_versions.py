"""Versions of a series side by side: `series` is a template over the family's axes.

`version = ["v2", "v3"]` with `series = ["secretmem-{{ version }}"]` gives one
variant per version, each planned (purely) with its own patches and its own key.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# The scratch-repo helpers of the mbox tests (pytest puts tests/ on sys.path).
from test_build_plan import _plan
from test_mbox import format_patch, scratch_repo

from lab import config
from lab.build import patches
from lab.errors import LabError


def _versions_lab(mini_lab: Path, series: str) -> Path:
    f = mini_lab / "lab.toml"
    text = f.read_text().replace(
        '[variants.demo]\nconfigs = ["knob.config.j2"]',
        f'[variants.demo]\nconfigs = ["knob.config.j2"]\nseries = {series}',
    )
    f.write_text(
        text.replace("knob = [false, true]", 'knob = [false, true]\nversion = ["v2", "v3"]')
    )
    return f


def _two_versions(mini_lab: Path, tmp_path: Path) -> Path:
    """The mini lab with axes knob x version, v2 and v3 of a series as mboxes."""
    f = _versions_lab(mini_lab, '["secretmem-{{ version }}", "{% if knob %}extra{% endif %}"]')
    repo, base = scratch_repo(tmp_path / "git")
    pdir = mini_lab / "kernels" / "patches"
    (pdir / "secretmem-v2.mbox").write_bytes(format_patch(repo, base, "-v2", head="HEAD~1"))
    (pdir / "secretmem-v3.mbox").write_bytes(format_patch(repo, base, "-v3"))
    return f


def test_version_axis_picks_each_versions_series(mini_lab: Path, tmp_path: Path) -> None:
    cfg = config.load(_two_versions(mini_lab, tmp_path))
    got = {v.name: v.series for v in cfg.variants}
    assert got == {
        "demo-False-v2": ("secretmem-v2",),
        "demo-False-v3": ("secretmem-v3",),
        "demo-True-v2": ("secretmem-v2", "extra"),
        "demo-True-v3": ("secretmem-v3", "extra"),
    }
    v2 = patches.load_series(cfg.patches_dir, cfg.variant("demo-False-v2").series)
    v3 = patches.load_series(cfg.patches_dir, cfg.variant("demo-False-v3").series)
    assert [s.version for s in v2.sources] == [2] and [s.version for s in v3.sources] == [3]
    assert len(v2.patches) == 2 and len(v3.patches) == 3
    # v2's patches are v3's first two: same diffs, same digests (the mail does not count).
    assert [p.sha256 for p in v2.patches] == [p.sha256 for p in v3.patches[:2]]
    k2 = _plan(cfg, "demo-False-v2", series=v2)
    k3 = _plan(cfg, "demo-False-v3", series=v3)
    assert k2.key != k3.key and k2.tree_key != k3.tree_key
    assert k2.variant.params["version"] == "v2"


@pytest.mark.parametrize(
    ("series", "expected"),
    [
        ('["../{{ version }}"]', "'../v2' is not a series name under kernels/patches/"),
        ('["{{ versoin }}"]', "series[0] (for knob=False, version='v2'): 'versoin' is undefined"),
    ],
)
def test_bad_series_template_is_one_line(mini_lab: Path, series: str, expected: str) -> None:
    f = _versions_lab(mini_lab, series)
    with pytest.raises(LabError) as exc:
        config.load(f)
    assert "\n" not in str(exc.value)
    assert expected in str(exc.value) and "[variants.demo]" in str(exc.value)


def test_pair_versions_by_subject() -> None:
    a = [("mm: one", "1"), ("mm: two", "2"), ("mm: dropped", "3")]
    b = [("mm: one", "1"), ("mm: two", "2b"), ("mm: new", "4")]
    got = [(x.a, x.mark, x.b, x.title) for x in patches.pair(a, b)]
    assert got == [
        (1, "=", 1, "mm: one"),
        (2, "!", 2, "mm: two"),
        (3, "<", 0, "mm: dropped"),
        (0, ">", 3, "mm: new"),
    ]


def test_series_compare_cli(mini_lab: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    repo, base = scratch_repo(tmp_path / "git")
    pdir = mini_lab / "kernels" / "patches"
    (pdir / "secretmem-v2.mbox").write_bytes(format_patch(repo, base, "-v2", head="HEAD~1"))
    (pdir / "secretmem-v3.mbox").write_bytes(format_patch(repo, base, "-v3"))
    out = subprocess.run(
        [
            *(sys.executable, "-m", "lab", "-c", str(mini_lab / "lab.toml")),
            *("series", "compare", "secretmem-v2", "secretmem-v3"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "  1: =   1: mm/secretmem: first change",
        "  2: =   2: mm/secretmem: take the old diff back",
        "  -: >   3: mm: add new.c",
    ]


def test_series_axes_name_the_version_axis_and_cells_record_it(
    mini_lab: Path, tmp_path: Path
) -> None:
    """The axes a family's series templates name are its series (version) axes; the
    cell's identity records them so the report can put versions side by side."""
    from lab.outcome import CLASSES
    from lab.run import cell, job, testcase

    cfg = config.load(_two_versions(mini_lab, tmp_path))
    # `knob` only switches an extra series on: it is named too, so it is a series axis.
    assert {v.series_axes for v in cfg.variants} == {("knob", "version")}
    assert config.series_axes(("secretmem-{{ version }}",), {"knob": 0, "version": 0}) == (
        "version",
    )
    assert config.series_axes(("plain",), {"version": 0}) == ()
    api = testcase.find(Path(__file__).resolve().parent.parent / "testcases", "api", CLASSES)
    v = cfg.variant("demo-False-v3")
    ident = job.identity(cfg, cell.Cell(next(iter(cfg.arches.values())), v, api))
    assert ident["series_axes"] == ["knob", "version"]
    assert ident["params"]["version"] == "v3"
