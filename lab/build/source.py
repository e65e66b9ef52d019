"""Kernel sources: find or fetch them, extract once per identity, keep them pristine.

A source identity is a content hash (tarball), a commit (git) or a snapshot hash
of names, sizes and mtimes (local tree). Extracted trees get read-only files so
an accidental write fails loudly; builds use O= and never write into them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lab import cache, prereqs
from lab.config import SourceSpec
from lab.errors import InfraError, LabError, UserError

Log = Callable[[str], None]


@dataclass(frozen=True)
class Source:
    identity: str  # e.g. "tarball:sha256:<hex>", "git:<commit>", "tree:<hash>"
    tree: Path  # a pristine tree, read-only by convention
    description: str  # for humans and metadata: path, package version, url@ref

    @property
    def short_id(self) -> str:
        return cache.digest(self.identity)[:16]


def identify(spec: SourceSpec, cache_root: Path, log: Log) -> tuple[str, str]:
    """(identity, description) without extracting anything; fast when memoised."""
    if spec.kind in ("debian", "tarball"):
        tarball = _tarball(spec, log)
        return f"tarball:sha256:{_memo_file_digest(tarball, cache_root)}", _describe_tarball(
            spec, tarball
        )
    if spec.kind == "tree":
        tree = Path(spec.path).expanduser()
        _check_tree(tree, spec)
        return f"tree:{_tree_snapshot(tree)}", str(tree)
    commit = _git_resolve(spec, cache_root, log)
    return f"git:{commit}", f"{spec.url}@{spec.ref} ({commit[:12]})"


def prepare(spec: SourceSpec, cache_root: Path, log: Log) -> Source:
    """Return the pristine tree for this source, extracting it on first use."""
    identity, description = identify(spec, cache_root, log)
    if spec.kind == "tree":
        # A local tree is used in place: O= builds do not write into it.
        return Source(identity, Path(spec.path).expanduser().resolve(), description)
    short = cache.digest(identity)[:16]
    final = cache_root / "src" / short
    tree = final / "tree"
    if (final / "identity").is_file():
        return Source(identity, tree, description)
    with cache.locked(cache_root / "locks" / f"src-{short}.lock"):
        if (final / "identity").is_file():
            return Source(identity, tree, description)
        with cache.staging_dir(final) as tmp:
            if spec.kind == "git":
                log(f"exporting {description}")
                _git_export(spec, cache_root, identity.removeprefix("git:"), tmp / "tree")
            else:
                log(f"extracting {description}")
                _extract(_tarball(spec, log), tmp / "tree")
            _make_files_read_only(tmp / "tree")
            (tmp / "identity").write_text(identity + "\n")
    return Source(identity, tree, description)


# --- tarballs -----------------------------------------------------------------------


def _tarball(spec: SourceSpec, log: Log) -> Path:
    path = Path(spec.path).expanduser()
    if path.is_file():
        return path
    if spec.kind == "tarball":
        raise UserError(f"source tarball {path} not found (lab.toml [source] path)")
    apt = prereqs.program("apt-get")
    if os.geteuid() == 0 and shutil.which(apt):
        log(f"installing {spec.package} with apt-get (provides {path})")
        proc = subprocess.run(
            [apt, "install", "-y", "--no-install-recommends", spec.package],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not path.is_file():
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise InfraError(f"apt-get install {spec.package} failed: {last[0]}")
        return path
    raise UserError(
        f"kernel source {path} is missing; install it with: sudo apt-get install {spec.package}"
    )


def _describe_tarball(spec: SourceSpec, tarball: Path) -> str:
    if spec.kind != "debian":
        return str(tarball)
    try:
        version = subprocess.run(
            [prereqs.program("dpkg-query"), "-W", "-f=${Version}", spec.package],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except FileNotFoundError:
        version = ""
    return f"{spec.package} {version} ({tarball})".replace("  ", " ")


def _memo_file_digest(path: Path, cache_root: Path) -> str:
    """sha256 of a large file, remembered per (path, size, mtime) so a cache hit stays fast."""
    st = path.stat()
    memo = cache_root / "src" / "digests.json"
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    known = cache.memo_get(memo, key)
    if known is not None:
        return known
    value = cache.file_digest(path)
    cache.memo_put(memo, cache_root / "locks" / "src-digests.lock", key, value)
    return value


def _extract(tarball: Path, dest: Path) -> None:
    scratch = dest.parent / "extract"
    scratch.mkdir()
    proc = subprocess.run(
        [prereqs.program("tar"), "-xf", str(tarball), "-C", str(scratch), "--no-same-owner"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise InfraError(f"extracting {tarball} failed: {proc.stderr.strip()[:300]}")
    entries = list(scratch.iterdir())
    top = entries[0] if len(entries) == 1 and entries[0].is_dir() else scratch
    if not (top / "Makefile").is_file() or not (top / "Kconfig").is_file():
        raise UserError(
            f"{tarball} does not contain a kernel tree (no Makefile and Kconfig at top)"
        )
    os.rename(top, dest)
    if top != scratch:
        scratch.rmdir()


def _make_files_read_only(tree: Path) -> None:
    # Files only: read-only directories would stop `rm -rf` of the cache for non-root users.
    for dirpath, _dirs, files in os.walk(tree):
        for name in files:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                mode = os.stat(p).st_mode
                os.chmod(p, mode & ~0o222)


# --- local trees ----------------------------------------------------------------------


def _check_tree(tree: Path, spec: SourceSpec) -> None:
    if not (tree / "Makefile").is_file() or not (tree / "Kconfig").is_file():
        raise UserError(
            f"lab.toml [source] path: {tree} is not a kernel tree (no Makefile/Kconfig)"
        )
    if (tree / ".config").exists() or (tree / "include" / "config").exists():
        raise UserError(
            f"{tree} has been configured in place (.config or include/config exists); "
            "out-of-tree builds need a clean tree: run 'make mrproper' there"
        )


def _tree_snapshot(tree: Path) -> str:
    """Hash of every file's name, size and mtime: changes whenever an edit lands."""
    h = []
    for dirpath, dirs, files in os.walk(tree):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        for name in sorted(files):
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            h.append(f"{os.path.relpath(p, tree)}:{st.st_size}:{st.st_mtime_ns}")
    return cache.digest("\n".join(h))


# --- git --------------------------------------------------------------------------------

_SHA = re.compile(r"^[0-9a-f]{40}$")


def _git(args: list[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(
            [prereqs.program("git"), *args], cwd=cwd, capture_output=True, text=True
        )
    except FileNotFoundError:
        raise UserError("git not found; install it with: sudo apt-get install git") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise InfraError(f"git {args[0]} failed: {last}")
    return proc.stdout


def _git_resolve(spec: SourceSpec, cache_root: Path, log: Log) -> str:
    """The commit for url@ref: a full sha as is, else resolved once and remembered.

    Branches move; `lab build --refresh-source` forgets the remembered commit.
    """
    if _SHA.match(spec.ref):
        return spec.ref
    memo = cache_root / "src" / "git-refs.json"
    key = f"{spec.url} {spec.ref}"
    known = cache.memo_get(memo, key)
    if known is not None:
        return known
    log(f"resolving {spec.url} {spec.ref}")
    out = _git(["ls-remote", "--", spec.url, spec.ref, f"{spec.ref}^{{}}"])
    lines = [line.split() for line in out.splitlines() if line.strip()]
    if not lines:
        raise UserError(f"lab.toml [source] ref: {spec.ref!r} not found at {spec.url}")
    commit = lines[-1][0]  # the peeled tag (^{}) sorts last when present
    if not _SHA.match(commit):  # it becomes a git argument: a commit, never an option
        raise InfraError(f"git ls-remote {spec.url}: {commit[:60]!r} is not a commit id")
    cache.memo_put(memo, cache_root / "locks" / "src-git-refs.lock", key, commit)
    return commit


def forget_git_refs(cache_root: Path) -> None:
    (cache_root / "src" / "git-refs.json").unlink(missing_ok=True)


def _git_export(spec: SourceSpec, cache_root: Path, commit: str, dest: Path) -> None:
    repo = cache_root / "src" / "git" / cache.digest(spec.url)[:16]
    if not (repo / "HEAD").exists():
        repo.parent.mkdir(parents=True, exist_ok=True)
        _git(["init", "--bare", "-q", str(repo)])
    _git(["fetch", "-q", "--depth", "1", "--", spec.url, spec.ref], cwd=repo)
    try:
        _git(["cat-file", "-e", f"{commit}^{{commit}}"], cwd=repo)
    except LabError:  # the branch moved since it was resolved: ask for the commit itself
        _git(["fetch", "-q", "--depth", "1", "--", spec.url, commit], cwd=repo)
    dest.mkdir(parents=True)
    archive = subprocess.Popen(
        [prereqs.program("git"), "archive", "--format=tar", commit],
        cwd=repo,
        stdout=subprocess.PIPE,
    )
    untar = subprocess.run([prereqs.program("tar"), "-x", "-C", str(dest)], stdin=archive.stdout)
    if archive.stdout:
        archive.stdout.close()
    if archive.wait() != 0 or untar.returncode != 0:
        raise InfraError(f"exporting {spec.url}@{commit} failed")
