"""Patch series: apply in order onto a hard-link copy; failures name patch and hunk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lab.build import patches
from lab.build.source import Source
from lab.errors import LabError

GOOD = """\
--- a/mm/secretmem.c
+++ b/mm/secretmem.c
@@ -1,3 +1,3 @@
 line one
-line two
+line TWO
 line three
"""

SECOND = """\
--- a/mm/secretmem.c
+++ b/mm/secretmem.c
@@ -1,3 +1,4 @@
 line one
 line TWO
+line two and a half
 line three
--- /dev/null
+++ b/mm/new.c
@@ -0,0 +1 @@
+new file
"""

BAD = """\
--- a/mm/secretmem.c
+++ b/mm/secretmem.c
@@ -1,3 +1,3 @@
-line one
+line ONE
 line TWO
 line three
@@ -10,3 +10,3 @@ static int secretmem_fault(void)
 nothing
-like
+this
 here
"""


def _tree(tmp_path: Path) -> Source:
    tree = tmp_path / "pristine"
    (tree / "mm").mkdir(parents=True)
    (tree / "mm" / "secretmem.c").write_text("line one\nline two\nline three\n")
    (tree / "mm" / "other.c").write_text("untouched\n")
    for f in (tree / "mm").iterdir():
        os.chmod(f, 0o444)
    return Source("test:1", tree, "test tree")


def _series(tmp_path: Path, *texts: str) -> Path:
    d = tmp_path / "patches" / "s"
    d.mkdir(parents=True)
    names = []
    for i, t in enumerate(texts, 1):
        name = f"{i:04d}-p.patch"
        (d / name).write_text(t)
        names.append(name)
    (d / "series").write_text("# order matters\n" + "\n".join(names) + "\n")
    return tmp_path / "patches"


def test_apply_in_order_keeps_pristine(tmp_path: Path) -> None:
    src = _tree(tmp_path)
    series = patches.load_series(_series(tmp_path, GOOD, SECOND), ("s",))
    out = patches.apply(src, series, tmp_path / "cache", lambda _m: None)
    assert (
        out / "mm" / "secretmem.c"
    ).read_text() == "line one\nline TWO\nline two and a half\nline three\n"
    assert (out / "mm" / "new.c").read_text() == "new file\n"
    assert (src.tree / "mm" / "secretmem.c").read_text() == "line one\nline two\nline three\n"
    # untouched files stay hard links to the pristine tree
    assert os.stat(out / "mm" / "other.c").st_ino == os.stat(src.tree / "mm" / "other.c").st_ino
    # second call is a cache hit: same path
    assert patches.apply(src, series, tmp_path / "cache", lambda _m: None) == out


def test_failing_hunk_is_named(tmp_path: Path) -> None:
    src = _tree(tmp_path)
    series = patches.load_series(_series(tmp_path, GOOD, BAD), ("s",))
    with pytest.raises(LabError) as exc:
        patches.apply(src, series, tmp_path / "cache", lambda _m: None)
    msg = str(exc.value)
    assert "patch s/0002-p.patch does not apply" in msg
    assert (
        "mm/secretmem.c: hunk #2 @@ -10,3 +10,3 @@ static int secretmem_fault(void) FAILED" in msg
    )
    assert not (tmp_path / "cache" / "patched").exists() or not any(
        (tmp_path / "cache" / "patched").glob("*/done")
    )


def test_missing_series_and_patch(tmp_path: Path) -> None:
    d = _series(tmp_path, GOOD)
    with pytest.raises(LabError, match=r"patch series 'nope'.*available: s"):
        patches.load_series(d, ("nope",))
    (d / "s" / "series").write_text("missing.patch\n")
    with pytest.raises(LabError, match=r"series:1: patch 'missing.patch' not found"):
        patches.load_series(d, ("s",))


def test_digest_depends_on_content_not_names(tmp_path: Path) -> None:
    a = patches.load_series(_series(tmp_path / "a", GOOD), ("s",))
    b = patches.load_series(_series(tmp_path / "b", GOOD), ("s",))
    c = patches.load_series(_series(tmp_path / "c", SECOND), ("s",))
    assert a.digest == b.digest != c.digest


def test_fuzz_is_refused(tmp_path: Path) -> None:
    """A hunk whose context does not match exactly must not apply 'with fuzz'."""
    src = _tree(tmp_path)
    (src.tree / "mm" / "secretmem.c").chmod(0o644)
    (src.tree / "mm" / "secretmem.c").write_text("line one\nline two\nline three\nline four\n")
    fuzzy = GOOD.replace(" line one\n", " line 1\n").replace("@@ -1,3 +1,3 @@", "@@ -1,3 +1,3 @@")
    series = patches.load_series(_series(tmp_path, fuzzy), ("s",))
    with pytest.raises(LabError, match="does not apply"):
        patches.apply(src, series, tmp_path / "cache", lambda _m: None)


def test_era_series_on_another_tree_fails_naming_the_series(tmp_path: Path) -> None:
    """Issue 10: the real era-5.11 series on a tree whose mm/ is not 6.1's (here: files
    without the context it restores) fails at the first patch with one line that names
    the era series, the patch and the hunk."""
    tree = tmp_path / "other-kernel"
    (tree / "mm").mkdir(parents=True)
    (tree / "mm" / "Kconfig").write_text('menu "Memory Management options"\nendmenu\n')
    (tree / "mm" / "oom_kill.c").write_text("void pagefault_out_of_memory(void)\n{\n}\n")
    (tree / "mm" / "memcontrol.c").write_text("/* not 6.1 */\n")
    repo_patches = Path(__file__).resolve().parent.parent / "kernels" / "patches"
    series = patches.load_series(repo_patches, ("era-5.11",))
    assert len(series.patches) == 4
    with pytest.raises(LabError) as exc:
        patches.apply(Source("test:1", tree, "t"), series, tmp_path / "cache", lambda _m: None)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith("patch era-5.11/0001-mm-lab-CONFIG_LAB_OOM_ERA_5_11")
    assert "does not apply" in msg and "mm/Kconfig: hunk #1" in msg
