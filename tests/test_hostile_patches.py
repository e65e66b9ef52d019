"""Hostile patches: paths taken from a patch never reach outside the kernel tree.

A patch from a mailing list is untrusted. Only real diff file headers name the
files it touches, and every such path is confined to the tree after resolution.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

# The legitimate hunk of tests/test_patches.py (pytest puts tests/ on sys.path).
from test_patches import GOOD as LEGIT_HUNK

from lab.build import patches
from lab.build.source import Source
from lab.errors import LabError


def _tree(tmp_path: Path) -> Source:
    tree = tmp_path / "pristine"
    (tree / "mm").mkdir(parents=True)
    (tree / "mm" / "secretmem.c").write_text("line one\nline two\nline three\n")
    for f in (tree / "mm").iterdir():
        os.chmod(f, 0o444)
    return Source("test:1", tree, "test tree")


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.write_text("secret\n")
    victim.chmod(0o600)
    return victim


def _apply(tmp_path: Path, src: Source, text: str) -> Path:
    d = tmp_path / "patches" / "s"
    d.mkdir(parents=True)
    (d / "0001-x.patch").write_text(text)
    (d / "series").write_text("0001-x.patch\n")
    series = patches.load_series(tmp_path / "patches", ("s",))
    return patches.apply(src, series, tmp_path / "cache", lambda _m: None)


def _assert_untouched(victim: Path) -> None:
    assert victim.read_text() == "secret\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert not list(victim.parent.glob("victim.lab-unshare"))


def test_commit_message_header_lines_touch_nothing_outside(tmp_path: Path) -> None:
    """`--- a/...` lines in the commit message are prose, not file headers."""
    src = _tree(tmp_path)
    victim = _victim(tmp_path)
    message = (
        "From: someone\n"
        "Subject: [PATCH] mm: a change\n"
        "\n"
        "Quoting the old diff:\n"
        f"--- a/{'../' * 64}{str(victim).lstrip('/')}\n"
        f"--- a/{victim}\n"
        f"--- a//{victim}\n"
        "and nothing else.\n"
        "---\n"
        " mm/secretmem.c | 2 +-\n"
        "\n"
    )
    out = _apply(tmp_path, src, message + LEGIT_HUNK)
    assert (out / "mm" / "secretmem.c").read_text() == "line one\nline TWO\nline three\n"
    _assert_untouched(victim)
    assert patches.touched_files(message + LEGIT_HUNK) == ["mm/secretmem.c"]


@pytest.mark.parametrize(
    "header",
    [
        "--- a/../x\n+++ b/../x\n",
        "--- a//etc/x\n+++ b//etc/x\n",
        "diff --git a/../x b/../x\nindex 1..2 100644\n--- a/../x\n+++ b/../x\n",
        "diff --git a/mm/secretmem.c b/mm/y\nsimilarity index 90%\n"
        "rename from mm/secretmem.c\nrename to ../y\n",
    ],
)
def test_real_header_leaving_the_tree_is_refused(tmp_path: Path, header: str) -> None:
    src = _tree(tmp_path)
    text = header + "@@ -1 +1 @@\n-a\n+b\n"
    with pytest.raises(LabError) as exc:
        _apply(tmp_path, src, text)
    msg = str(exc.value)
    assert "\n" not in msg
    assert "0001-x.patch" in msg
    assert "outside the kernel tree" in msg
    assert not (tmp_path / "cache" / "patched").exists() or not any(
        (tmp_path / "cache" / "patched").glob("*/done")
    )


def test_nul_in_header_is_refused(tmp_path: Path) -> None:
    src = _tree(tmp_path)
    text = "--- a/mm/x\0y\n+++ b/mm/x\0y\n@@ -1 +1 @@\n-a\n+b\n"
    with pytest.raises(LabError, match=r"0001-x\.patch.*NUL"):
        _apply(tmp_path, src, text)


def test_symlink_in_tree_pointing_outside_is_not_followed(tmp_path: Path) -> None:
    src = _tree(tmp_path)
    victim = _victim(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("secret\n")
    (outside / "victim").chmod(0o600)
    os.symlink(outside, src.tree / "ext")
    os.symlink(victim, src.tree / "mm" / "link.c")
    for rel in ("ext/victim", "mm/link.c"):
        text = f"--- a/{rel}\n+++ b/{rel}\n@@ -1 +1 @@\n-secret\n+owned\n"
        with pytest.raises(LabError, match=rf"0001-x\.patch.*{rel}.*outside the kernel tree"):
            _apply(tmp_path / rel.replace("/", "_"), src, text)
    _assert_untouched(victim)
    _assert_untouched(outside / "victim")


def test_git_headers_name_every_path() -> None:
    """Renames, copies, deletions and mode changes count, as `diff --git` headers."""
    text = (
        "diff --git a/old/name.c b/new/name.c\n"
        "similarity index 100%\n"
        "rename from old/name.c\n"
        "rename to new/name.c\n"
        "diff --git a/gone.c b/gone.c\n"
        "deleted file mode 100644\n"
        "index 1234567..0000000\n"
        "--- a/gone.c\n"
        "+++ /dev/null\n"
        "@@ -1 +0,0 @@\n"
        "-x\n"
        "diff --git a/tools/run.sh b/tools/run.sh\n"
        "old mode 100644\n"
        "new mode 100755\n"
    )
    assert patches.touched_files(text) == ["old/name.c", "new/name.c", "gone.c", "tools/run.sh"]


def test_diff_git_line_in_prose_is_not_a_header() -> None:
    text = "As in diff --git a/x b/y\ndiff --git a/../z b/../z\nthat was prose\n" + LEGIT_HUNK
    assert patches.touched_files(text) == ["mm/secretmem.c"]


def test_git_mode_change_leaves_pristine_tree_alone(tmp_path: Path) -> None:
    """A mode-only git diff (named by `diff --git` alone) applies; the pristine mode stays."""
    src = _tree(tmp_path)
    text = "diff --git a/mm/secretmem.c b/mm/secretmem.c\nold mode 100444\nnew mode 100755\n"
    out = _apply(tmp_path, src, text)
    assert stat.S_IMODE((out / "mm" / "secretmem.c").stat().st_mode) & 0o111
    pristine = src.tree / "mm" / "secretmem.c"
    assert stat.S_IMODE(pristine.stat().st_mode) == 0o444


def test_many_headers_take_linear_time() -> None:
    """A patch naming 100k files (or 100k git headers) is read in well under a second or two."""
    import time

    plain = "".join(f"--- a/d/f{i}\n+++ b/d/f{i}\n@@ -1 +1 @@\n-a\n+b\n" for i in range(100_000))
    git = "".join(f"diff --git a/g{i} b/g{i}\nindex 1..2 100644\n" for i in range(100_000))
    start = time.monotonic()
    assert len(patches.touched_files(plain)) == 100_000
    assert len(patches.touched_files(git)) == 100_000
    assert time.monotonic() - start < 5


def test_patch_size_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(patches, "MAX_PATCH_BYTES", 1000)
    src = _tree(tmp_path)
    with pytest.raises(LabError, match=r"0001-x\.patch.*larger than"):
        _apply(tmp_path, src, LEGIT_HUNK + "\n" * 2000)


@pytest.mark.parametrize("entry", ["../../victim", "/etc/hostname", "sub/../../x.patch"])
def test_series_entries_stay_in_their_directory(tmp_path: Path, entry: str) -> None:
    d = tmp_path / "patches" / "s"
    d.mkdir(parents=True)
    (tmp_path / "victim").write_text("secret\n")
    (d / "series").write_text(f"{entry}\n")
    with pytest.raises(LabError, match=r"series:1: .*outside"):
        patches.load_series(tmp_path / "patches", ("s",))
