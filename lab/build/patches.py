"""Patch series: read `kernels/patches/<series>/series`, apply onto a copy of a tree.

The patched tree is a hard-link copy of the pristine one; every file a patch
touches is first replaced by a private copy, so the pristine tree never changes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lab import cache, prereqs
from lab.build import mbox
from lab.build.source import Log, Source
from lab.errors import InfraError, UserError


@dataclass(frozen=True)
class Patch:
    series: str
    name: str
    path: Path  # the patch file; for a mail, the mbox it came from
    sha256: str  # of the bytes `patch` applies: the file, or a mail's diff part
    # A patch from an mbox: only its diff part goes to `patch`, and its mail headers
    # and commit message go into the build's metadata, as `git am` would keep them.
    mail: mbox.MailPatch | None = None

    def read(self) -> bytes:
        """The bytes handed to `patch` (bounded: MAX_PATCH_BYTES)."""
        if self.mail is not None:
            return self.mail.diff
        # A git format-patch file is a mail: its commit message is not part of the diff.
        return mbox.diff_of_file(self.file_bytes())

    def file_bytes(self) -> bytes:
        """The whole patch file (bounded: MAX_PATCH_BYTES); a mail's diff for an mbox patch."""
        if self.mail is not None:
            return self.mail.diff
        with self.path.open("rb") as f:
            raw = f.read(MAX_PATCH_BYTES + 1)
        if len(raw) > MAX_PATCH_BYTES:
            raise UserError(
                f"patch {self.series}/{self.name} ({self.path}): larger than "
                f"{MAX_PATCH_BYTES >> 20} MiB"
            )
        return raw

    def describe(self) -> dict[str, str]:
        out = {"series": self.series, "patch": self.name, "sha256": self.sha256}
        if self.mail is not None:
            m = self.mail
            out |= {
                "message_id": m.message_id,
                "subject": m.subject,
                "tag": m.tag,
                "author": m.author,
                "date": m.date,
                "message": m.message,
            }
        return out


@dataclass(frozen=True)
class SeriesSource:
    """Where one named series came from: a quilt directory or an mbox (with its trailers)."""

    name: str
    path: Path
    kind: str  # "quilt" | "mbox"
    base_commit: str = ""
    cover_message_id: str = ""
    version: int = 0  # the [PATCH vN] of an mbox; 0 for quilt


# How patches are applied is part of the result: `patch` applies hunks whose context
# only roughly matches ("fuzz"), which can silently land a change in the wrong place.
# The lab refuses fuzz, as `git am` does.
POLICY = "patch -p1 --fuzz=0"
# A patch is read whole to find the files it touches; the largest kernel patch sets
# are a few MiB, so this only stops a runaway or hostile file.
MAX_PATCH_BYTES = 64 << 20


@dataclass(frozen=True)
class Series:
    patches: tuple[Patch, ...]
    sources: tuple[SeriesSource, ...] = ()

    @property
    def digest(self) -> str:
        """Identity of the ordered patch contents (names do not matter, bytes do)."""
        return cache.digest("\n".join([POLICY, *(p.sha256 for p in self.patches)]))

    def describe(self) -> list[dict[str, str]]:
        return [p.describe() for p in self.patches]

    def identity(self) -> list[dict[str, object]]:
        """Per named series: kind, file, version and the base-commit: trailer (build metadata)."""
        return [
            {
                "series": s.name,
                "kind": s.kind,
                "path": str(s.path),
                **({"version": s.version} if s.version else {}),
                **({"base_commit": s.base_commit} if s.base_commit else {}),
                **({"cover_message_id": s.cover_message_id} if s.cover_message_id else {}),
            }
            for s in self.sources
        ]


@dataclass(frozen=True)
class Pairing:
    """One line of a side-by-side of two series versions (git range-diff's view)."""

    a: int  # 1-based position in the first series, 0 when absent
    b: int  # 1-based position in the second series, 0 when absent
    mark: str  # "=" same diff, "!" changed diff, "<" only in the first, ">" only in the second
    title: str


def pair(a: Sequence[tuple[str, str]], b: Sequence[tuple[str, str]]) -> list[Pairing]:
    """Pair the patches of two versions of a series, each (subject, diff digest), by
    subject (pure).

    A patch keeps its subject from one version to the next far more often than its
    diff; the diff digest then says whether it changed.
    """
    b_by_title: dict[str, list[int]] = {}
    for j, (title, _digest) in enumerate(b, 1):
        b_by_title.setdefault(title, []).append(j)
    used: set[int] = set()
    out: list[Pairing] = []
    for i, (title, digest) in enumerate(a, 1):
        js = [j for j in b_by_title.get(title, []) if j not in used]
        if not js:
            out.append(Pairing(i, 0, "<", title))
            continue
        j = js[0]
        used.add(j)
        out.append(Pairing(i, j, "=" if digest == b[j - 1][1] else "!", title))
    for j, (title, _digest) in enumerate(b, 1):
        if j not in used:
            out.append(Pairing(0, j, ">", title))
    return sorted(out, key=lambda x: (x.b if x.b else x.a - 0.5, x.a))


def available(patches_dir: Path) -> list[str]:
    """Series names under patches_dir: quilt directories and mboxes."""
    if not patches_dir.is_dir():
        return []
    out = []
    for p in sorted(patches_dir.iterdir()):
        if (p / "series").is_file():
            out.append(p.name)
        elif mbox.is_mbox(p):
            out.append(p.stem)
        elif p.is_dir() and any(mbox.is_mbox(f) for f in p.iterdir()):
            out.append(p.name)
    return out


def check_name(name: str, where: str) -> None:
    """A series name is one directory entry under kernels/patches, nothing else."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise UserError(
            f"{where}: patch series {name!r} is not a name under kernels/patches/; "
            "use a directory or mbox name without '/'"
        )


def load_series(patches_dir: Path, names: tuple[str, ...]) -> Series:
    """Read the named series (quilt directories or mboxes); a missing one is named with its path."""
    patches: list[Patch] = []
    sources: list[SeriesSource] = []
    for name in names:
        check_name(name, str(patches_dir))
        if (box := mbox.find(patches_dir, name)) is not None:
            mail_series = mbox.read(box)
            sources.append(
                SeriesSource(
                    name,
                    box,
                    "mbox",
                    mail_series.base_commit,
                    mail_series.cover_message_id,
                    mail_series.version,
                )
            )
            patches.extend(
                Patch(name, f"{m.number:04d} {m.tag}", box, cache.digest(m.diff), m)
                for m in mail_series.patches
            )
            continue
        series_file = patches_dir / name / "series"
        if not series_file.is_file():
            raise UserError(
                f"patch series {name!r}: {series_file} not found (nor {name}.mbox/.mbx); "
                f"available: {', '.join(available(patches_dir)) or '(none)'}"
            )
        sources.append(SeriesSource(name, series_file.parent, "quilt"))
        for no, line in enumerate(series_file.read_text().splitlines(), 1):
            entry = line.split("#", 1)[0].strip()
            if not entry:
                continue
            rel = entry.split()[0]
            # The series file lists patches beside it (quilt's layout), nothing else.
            if rel.startswith("/") or ".." in rel.split("/"):
                raise UserError(
                    f"{series_file}:{no}: {rel!r} is outside the series directory; "
                    "list patch files that sit beside the series file"
                )
            path = series_file.parent / rel
            if not path.is_file():
                raise UserError(f"{series_file}:{no}: patch {entry!r} not found")
            patches.append(Patch(name, entry, path, cache.file_digest(path)))
    return Series(tuple(patches), tuple(sources))


_HEADER = re.compile(r"^(?:---|\+\+\+) (\S+)")
_HUNK = re.compile(r"^@@ .* @@.*$")
# What may follow `diff --git a/X b/Y` in git's extended header (git-diff(1)).
_GIT_EXTENDED = re.compile(
    r"^(?:old mode|new mode|deleted file mode|new file mode|similarity index|"
    r"dissimilarity index|rename from|rename to|copy from|copy to|index) |^--- |^Binary files "
)
# Extended header lines that name a path as is, without the a/ b/ prefix.
_GIT_NAMED = re.compile(r"^(?:rename|copy) (?:from|to) (.+)$")
_C_ESCAPES = {"a": "\a", "b": "\b", "t": "\t", "n": "\n", "v": "\v", "f": "\f", "r": "\r"}


def _unquote(name: str) -> str:
    """Git writes names with unusual bytes as C strings: `"a/x\\ty"`."""
    if not (len(name) >= 2 and name[0] == name[-1] == '"'):
        return name
    raw = bytearray()
    body = name[1:-1]
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt in "01234567" and i + 3 < len(body):
                raw.append(int(body[i + 1 : i + 4], 8) & 0xFF)
                i += 4
                continue
            raw += _C_ESCAPES.get(nxt, nxt).encode()
            i += 2
            continue
        raw += c.encode()
        i += 1
    return raw.decode(errors="replace")


def _strip1(name: str) -> str | None:
    """`patch -p1`: drop the first component (`a/`, `b/`); None for /dev/null or no prefix."""
    name = _unquote(name)
    if name == "/dev/null":
        return None
    parts = name.split("/", 1)
    return parts[1] if len(parts) == 2 else None


def _git_names(rest: str) -> list[str]:
    """The two names of `diff --git a/X b/Y`; [] when they cannot be told apart.

    Unquoted names may contain spaces, so only the unambiguous forms are read:
    both quoted, or the same name twice (a rename also has `rename from/to` lines).
    """
    if rest.startswith('"'):
        end = rest.find('" ', 1)
        while end != -1 and rest[end - 1] == "\\":
            end = rest.find('" ', end + 1)
        if end == -1:
            return []
        return [rest[: end + 1], rest[end + 2 :]]
    half = (len(rest) - 1) // 2
    if (
        len(rest) % 2 == 1
        and rest[half] == " "
        and rest[:half].split("/", 1)[1:] == (rest[half + 1 :].split("/", 1)[1:])
    ):
        return [rest[:half], rest[half + 1 :]]
    return []


def touched_files(patch_text: str) -> list[str]:
    """Paths (strip level 1) a unified diff reads or writes, from real file headers only.

    A `--- ` line counts only when a `+++ ` line and then a hunk `@@` follow it, and a
    `diff --git` line only when git's extended header or `--- ` follows it: the same
    text in a commit message is prose, and must not name files for the lab to touch.
    """
    lines = patch_text.splitlines()
    out: dict[str, None] = {}  # ordered, and linear in the number of files

    def add(name: str | None) -> None:
        if name is not None:
            out.setdefault(name)

    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.startswith("diff --git ") and _GIT_EXTENDED.match(nxt):
            for name in _git_names(line[len("diff --git ") :]):
                add(_strip1(name))
            j = i + 1
            while j < len(lines) and _GIT_EXTENDED.match(lines[j]):
                if lines[j].startswith("--- "):
                    break
                if m := _GIT_NAMED.match(lines[j]):
                    add(_unquote(m[1]))
                j += 1
        elif (
            line.startswith("--- ")
            and nxt.startswith("+++ ")
            and i + 2 < len(lines)
            and lines[i + 2].startswith("@@ ")
        ):
            for header in (line, nxt):
                if m := _HEADER.match(header):
                    add(_strip1(m[1]))
    return list(out)


def outside_reason(tree: Path, rel: str) -> str | None:
    """Why `rel` (a path from a patch) would leave `tree`, or None when it stays inside.

    Checked after resolution, so a symlink in the tree that points elsewhere counts.
    """
    if "\0" in rel:
        return "contains a NUL byte"
    if rel.startswith("/"):
        return "is absolute"
    if ".." in rel.split("/"):
        return "goes up with '..'"
    root = tree.resolve()
    try:
        target = (root / rel).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        return f"cannot be resolved ({exc})"
    if not target.is_relative_to(root):
        return f"resolves to {target}"
    return None


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
    label = f"{patch.series}/{patch.name}"
    if patch.mail is not None:
        label += f" ({patch.mail.label})"
    raw = patch.read()
    text = raw.decode(errors="replace")
    # Checked before `patch` runs at all: nothing from a patch may reach outside the tree.
    touched = touched_files(text)
    for rel in touched:
        if reason := outside_reason(tree, rel):
            raise UserError(
                f"patch {label} ({patch.path}): path {rel!r} {reason}, outside the kernel "
                "tree; a patch may only touch files inside the tree"
            )
    dry = _run_patch(tree, raw, dry_run=True)
    if dry.returncode != 0:
        raise UserError(
            f"patch {label} does not apply: {explain_failure(text, dry.stdout + dry.stderr)}"
        )
    for rel in touched:
        _unshare(tree / rel)
    real = _run_patch(tree, raw, dry_run=False)
    if real.returncode != 0:
        raise InfraError(f"patch {label} passed --dry-run but failed: {real.stdout.strip()[-300:]}")


def _run_patch(tree: Path, diff: bytes, dry_run: bool) -> subprocess.CompletedProcess[str]:
    """Run patch(1) on `diff` (on stdin: a mail's diff part has no file of its own)."""
    argv = [
        prereqs.program("patch"),
        "-p1",
        "--fuzz=0",
        "--forward",
        "--batch",
        "--no-backup-if-mismatch",
    ]
    if dry_run:
        argv.append("--dry-run")
    try:
        proc = subprocess.run(argv, cwd=tree, input=diff, capture_output=True)
    except FileNotFoundError:
        raise UserError("patch not found; install it with: sudo apt-get install patch") from None
    return subprocess.CompletedProcess(
        proc.args,
        proc.returncode,
        proc.stdout.decode(errors="replace"),
        proc.stderr.decode(errors="replace"),
    )


def _unshare(path: Path) -> None:
    """Replace a hard link to the pristine tree by a private, writable copy."""
    if not path.is_file() or path.is_symlink():
        return
    tmp = path.with_name(path.name + ".lab-unshare")
    shutil.copy2(path, tmp)
    os.chmod(tmp, 0o644 | (os.stat(path).st_mode & 0o111))
    os.replace(tmp, path)
