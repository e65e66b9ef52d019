"""Patch series: read `kernels/patches/<series>/series`, apply onto a copy of a tree.

The patched tree is a hard-link copy of the pristine one; every file a patch
touches is first replaced by a private copy, so the pristine tree never changes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lab import cache, prereqs
from lab.errors import InfraError, LabError
from lab.source import Log, Source


@dataclass(frozen=True)
class Patch:
    series: str
    name: str
    path: Path
    sha256: str


# How patches are applied is part of the result: `patch` applies hunks whose context
# only roughly matches ("fuzz"), which can silently land a change in the wrong place.
# The lab refuses fuzz, as `git am` does.
POLICY = "patch -p1 --fuzz=0"


@dataclass(frozen=True)
class Series:
    patches: tuple[Patch, ...]

    @property
    def digest(self) -> str:
        """Identity of the ordered patch contents (names do not matter, bytes do)."""
        return cache.digest("\n".join([POLICY, *(p.sha256 for p in self.patches)]))

    def describe(self) -> list[dict[str, str]]:
        return [{"series": p.series, "patch": p.name, "sha256": p.sha256} for p in self.patches]


def load_series(patches_dir: Path, names: tuple[str, ...]) -> Series:
    """Read the named series files; a missing file names the series and the path."""
    patches: list[Patch] = []
    for name in names:
        series_file = patches_dir / name / "series"
        if not series_file.is_file():
            available = (
                sorted(p.name for p in patches_dir.iterdir() if (p / "series").is_file())
                if patches_dir.is_dir()
                else []
            )
            raise LabError(
                f"patch series {name!r}: {series_file} not found; "
                f"available: {', '.join(available) or '(none)'}"
            )
        for no, line in enumerate(series_file.read_text().splitlines(), 1):
            entry = line.split("#", 1)[0].strip()
            if not entry:
                continue
            path = series_file.parent / entry.split()[0]
            if not path.is_file():
                raise LabError(f"{series_file}:{no}: patch {entry!r} not found")
            patches.append(Patch(name, entry, path, cache.file_digest(path)))
    return Series(tuple(patches))


_HEADER = re.compile(r"^(?:---|\+\+\+) (\S+)")
_HUNK = re.compile(r"^@@ .* @@.*$")


def touched_files(patch_text: str) -> list[str]:
    """Paths (strip level 1) a unified diff reads or writes."""
    out = []
    for line in patch_text.splitlines():
        m = _HEADER.match(line)
        if m and m[1] != "/dev/null":
            parts = m[1].split("/", 1)
            if len(parts) == 2 and parts[1] not in out:
                out.append(parts[1])
    return out


def hunk_header(patch_text: str, file: str, number: int) -> str:
    """The `@@ ... @@` line of hunk `number` (1-based) for `file` in a diff."""
    current = None
    count = 0
    for line in patch_text.splitlines():
        m = _HEADER.match(line)
        if m and line.startswith("+++"):
            current = m[1].split("/", 1)[-1]
            count = 0
        elif current == file and _HUNK.match(line):
            count += 1
            if count == number:
                return line
    return ""


_FAILED = re.compile(r"Hunk #(\d+) FAILED at (\d+)")
_CHECKING = re.compile(r"^(?:checking|patching) file (.+)$")


def explain_failure(patch_text: str, output: str) -> str:
    """Turn `patch` output into 'file: hunk #N (@@ ... @@) FAILED at L'."""
    current = ""
    for line in output.splitlines():
        if m := _CHECKING.match(line.strip()):
            current = m[1].strip().strip("'`")
        elif m := _FAILED.search(line):
            header = hunk_header(patch_text, current, int(m[1]))
            return f"{current}: hunk #{m[1]} {header} FAILED at line {m[2]}".replace("  ", " ")
        elif "can't find file to patch" in line or "No file to patch" in line:
            return f"{current or 'a file'} does not exist in the tree"
        elif "Reversed (or previously applied) patch detected" in line:
            return f"{current}: already applied (reversed patch detected)"
    tail = [x for x in output.strip().splitlines() if x.strip()][-1:]
    return tail[0] if tail else "patch failed without output"


def apply(source: Source, series: Series, cache_root: Path, log: Log) -> Path:
    """Return a tree with `series` applied on `source`, built once and cached."""
    if not series.patches:
        return source.tree
    key = f"{source.short_id}-{series.digest[:16]}"
    final = cache_root / "patched" / key
    if (final / "done").is_file():
        return final / "tree"
    with cache.locked(cache_root / "locks" / f"patched-{key}.lock"):
        if (final / "done").is_file():
            return final / "tree"
        with cache.staging_dir(final) as tmp:
            tree = tmp / "tree"
            log(f"applying {len(series.patches)} patches")
            proc = subprocess.run(
                [prereqs.program("cp"), "-al", str(source.tree), str(tree)],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                # Another filesystem: hard links fail, copy instead.
                shutil.rmtree(tree, ignore_errors=True)
                shutil.copytree(source.tree, tree, symlinks=True)
            for patch in series.patches:
                _apply_one(tree, patch)
            (tmp / "series.txt").write_text(
                "\n".join(f"{p.sha256}  {p.series}/{p.name}" for p in series.patches) + "\n"
            )
            (tmp / "done").write_text(source.identity + "\n")
    return final / "tree"


def _apply_one(tree: Path, patch: Patch) -> None:
    text = patch.path.read_text(errors="replace")
    label = f"{patch.series}/{patch.name}"
    dry = _run_patch(tree, patch.path, dry_run=True)
    if dry.returncode != 0:
        raise LabError(
            f"patch {label} does not apply: {explain_failure(text, dry.stdout + dry.stderr)}"
        )
    for rel in touched_files(text):
        _unshare(tree / rel)
    real = _run_patch(tree, patch.path, dry_run=False)
    if real.returncode != 0:
        raise InfraError(f"patch {label} passed --dry-run but failed: {real.stdout.strip()[-300:]}")


def _run_patch(tree: Path, path: Path, dry_run: bool) -> subprocess.CompletedProcess[str]:
    argv = [
        prereqs.program("patch"),
        "-p1",
        "--fuzz=0",
        "--forward",
        "--batch",
        "--no-backup-if-mismatch",
        "-i",
        str(path),
    ]
    if dry_run:
        argv.append("--dry-run")
    try:
        return subprocess.run(argv, cwd=tree, capture_output=True, text=True)
    except FileNotFoundError:
        raise LabError("patch not found; install it with: sudo apt-get install patch") from None


def _unshare(path: Path) -> None:
    """Replace a hard link to the pristine tree by a private, writable copy."""
    if not path.is_file() or path.is_symlink():
        return
    tmp = path.with_name(path.name + ".lab-unshare")
    shutil.copy2(path, tmp)
    os.chmod(tmp, 0o644 | (os.stat(path).st_mode & 0o111))
    os.replace(tmp, path)
