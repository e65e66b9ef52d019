"""apt in a private directory (any arch, no root); other packages for the guest arch."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from lab import cache, prereqs
from lab.errors import InfraError, LabError
from lab.image.recipe import DebFile, ImageRecipe, Log
from lab.image.sources import recipe_keyrings

# ---------------------------------------------------------------------------------------------
# apt, in a private directory: any arch, no root, no dpkg --add-architecture


@dataclass(frozen=True)
class AptDir:
    root: Path
    deb_arch: str

    @property
    def config(self) -> Path:
        return self.root / "apt.conf"


def _apt_conf(apt: AptDir, recipe: ImageRecipe) -> str:
    r = apt.root
    # Every Dir:: points into the private directory and the config/parts directories are empty
    # ones of ours, so the host's apt configuration, sources, keys, pinning and hooks
    # (Post-Invoke scripts) play no part. APT::Architectures makes the guest arch the only one
    # apt considers, which is what lets an amd64 host resolve arm64 packages.
    lines = [
        f'Dir "{r}/";',
        f'Dir::State "{r}/state/";',
        f'Dir::State::Lists "{r}/lists/";',
        f'Dir::State::status "{r}/status";',
        f'Dir::Cache "{r}/cache/";',
        f'Dir::Cache::archives "{r}/cache/archives/";',
        f'Dir::Log "{r}/log/";',
        f'Dir::Etc "{r}/etc/";',
        f'Dir::Etc::sourcelist "{r}/etc/sources.list";',
        f'Dir::Etc::sourceparts "{r}/etc/empty/";',
        f'Dir::Etc::parts "{r}/etc/empty/";',
        'Dir::Etc::main "/dev/null";',
        'Dir::Etc::preferences "/dev/null";',
        f'Dir::Etc::preferencesparts "{r}/etc/empty/";',
        f'Dir::Etc::trusted "{recipe.keyring}";',
        f'Dir::Etc::trustedparts "{r}/etc/empty/";',
        f'APT::Architecture "{apt.deb_arch}";',
        f'APT::Architectures {{ "{apt.deb_arch}"; }};',
        # apt drops to the _apt user for downloads when run as root; that user cannot write
        # into a caller's cache directory. Downloads are hash-checked either way.
        'APT::Sandbox::User "root";',
        'Acquire::Languages "none";',
        'Acquire::Retries "3";',
        # The private directory is guarded by the builder's own flock.
        'Debug::NoLocking "true";',
    ]
    return "\n".join(lines) + "\n"


def _sources_list(recipe: ImageRecipe) -> str:
    out = []
    for src in recipe.sources:
        for suite in src.suites:
            comps = " ".join(src.components)
            keyring = src.signed_by or recipe.keyring
            out.append(f"deb [signed-by={keyring}] {src.uri} {suite} {comps}")
    return "\n".join(out) + "\n"


def _prepare_apt(apt: AptDir, recipe: ImageRecipe) -> None:
    if not recipe.sources:
        raise LabError("the image recipe has no apt sources (lab.toml [[image.sources]])")
    for keyring in recipe_keyrings(recipe):
        if not Path(keyring).is_file():
            raise LabError(
                f"apt keyring {keyring} not found: "
                "install debian-archive-keyring or set [image] keyring in lab.toml"
            )
    if shutil.which(prereqs.program("apt-get")) is None:
        raise LabError(
            "apt-get not found: the image builder fetches guest packages with Debian's apt"
        )
    for sub in ("state", "lists/partial", "cache/archives/partial", "log", "etc/empty"):
        (apt.root / sub).mkdir(parents=True, exist_ok=True)
    (apt.root / "status").touch()
    _write_if_changed(apt.root / "etc" / "sources.list", _sources_list(recipe))
    _write_if_changed(apt.config, _apt_conf(apt, recipe))


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _run_apt(
    apt: AptDir, args: list[str], cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update({"APT_CONFIG": str(apt.config), "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"})
    try:
        return subprocess.run(
            [prereqs.program("apt-get"), "-q", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise LabError(
            f"apt-get {args[0]} for {apt.deb_arch} took over {timeout:.0f} s: "
            "check access to the mirrors"
        ) from None


def _apt_problem(done: subprocess.CompletedProcess[str]) -> str:
    """The one stderr line that says what went wrong. apt ends a failed update with a generic
    "E: Some index files failed to download"; the line naming the URL or key is more useful."""
    lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
    specific = ("Failed to fetch", "NO_PUBKEY", "GPG error", "is not signed", "Unable to locate")
    for line in lines:
        if any(s in line for s in specific):
            return line
    errors = (
        [ln for ln in lines if ln.startswith("E:")]
        or [ln for ln in lines if ln.startswith("W:")]
        or lines
    )
    return errors[0] if errors else f"exit status {done.returncode}"


def _have_lists(apt: AptDir) -> bool:
    return any(
        p.name.endswith(("Packages", "Packages.lz4", "Packages.xz", "Packages.gz"))
        for p in (apt.root / "lists").iterdir()
    )


# apt reports an unreachable mirror with warnings and exit status 0; these mark a failed update.
_UPDATE_FAILED = ("Failed to fetch", "failed to download", "GPG error", "is not signed")
_UNTRUSTED = ("NO_PUBKEY", "GPG error", "is not signed", "EXPKEYSIG")


def _update_hint(problem: str, recipe: ImageRecipe) -> str:
    if any(s in problem for s in _UNTRUSTED):
        return f"check the image recipe's keyring ({recipe.keyring})"
    if "Release file" in problem or " 404 " in problem:
        return "check the image recipe's mirror URLs and suites"
    return "check network access to the mirrors"


def apt_update(apt: AptDir, recipe: ImageRecipe, log: Log) -> None:
    suites = ", ".join(s for src in recipe.sources for s in src.suites)
    had_lists = _have_lists(apt)
    started = time.monotonic()
    done = _run_apt(apt, ["update"])
    failed = done.returncode != 0 or any(s in done.stderr for s in _UPDATE_FAILED)
    if not failed:
        if "W:" in done.stderr:
            log(f"apt update ({apt.deb_arch}) warned: {_apt_problem(done)}")
        log(f"apt update ({apt.deb_arch}: {suites}) in {time.monotonic() - started:.1f} s")
        return
    problem = _apt_problem(done)
    if had_lists and not any(s in done.stderr for s in _UNTRUSTED):
        # Offline, but with verified lists from an earlier update: good enough to rebuild from
        # the cached .debs (e.g. after an /init edit); the manifest records exact versions.
        log(
            f"apt update ({apt.deb_arch}) failed, "
            f"using the package lists from the last update: {problem}"
        )
        return
    raise LabError(
        f"apt-get update for {apt.deb_arch} ({suites}) failed: {problem}: "
        + _update_hint(problem, recipe)
    )


_URI_LINE = re.compile(
    r"^'(?P<uri>[^']+)' (?P<file>\S+) (?P<size>\d+) SHA256:(?P<sha>[0-9a-f]{64})$"
)


def parse_print_uris(text: str, deb_arch: str) -> list[DebFile]:
    """`apt-get download --print-uris` lines -> DebFile (name, version from the file name,
    where apt writes an epoch's ':' as '%3a')."""
    debs = []
    for line in text.splitlines():
        m = _URI_LINE.match(line.strip())
        if m is None:
            continue
        filename = m["file"]
        parts = urllib.parse.unquote(filename).removesuffix(".deb").split("_")
        if len(parts) != 3:
            raise InfraError(f"unexpected .deb file name from apt: {filename}")
        package, version, arch = parts
        if arch not in (deb_arch, "all"):
            raise InfraError(f"apt resolved {package} for {arch}, not {deb_arch}")
        debs.append(DebFile(package, version, arch, filename, int(m["size"]), m["sha"], m["uri"]))
    return sorted(debs, key=lambda d: d.package)


def apt_resolve(apt: AptDir, recipe: ImageRecipe) -> list[DebFile]:
    done = _run_apt(apt, ["download", "--print-uris", *recipe.packages])
    problem = _apt_problem(done) if (done.returncode != 0 or "E:" in done.stderr) else ""
    if problem:
        m = re.search(r"Unable to locate package (\S+)", done.stderr)
        suites = ", ".join(s for src in recipe.sources for s in src.suites)
        if m:
            raise LabError(
                f"package {m[1]} not found for {apt.deb_arch} in {suites}: "
                "fix the image recipe's package list"
            )
        raise LabError(f"apt cannot resolve the image packages for {apt.deb_arch}: {problem}")
    debs = parse_print_uris(done.stdout, apt.deb_arch)
    if len(debs) != len(set(recipe.packages)):
        got = {d.package for d in debs}
        raise LabError(
            f"apt resolved {sorted(got)} for {sorted(set(recipe.packages))}: "
            "fix the image recipe's package list"
        )
    return debs


def fetch_debs(apt: AptDir, debs: list[DebFile], deb_dir: Path, log: Log) -> dict[str, bytes]:
    """The .deb bytes for each package, downloading only those not already in `deb_dir`."""
    deb_dir.mkdir(parents=True, exist_ok=True)
    missing = [d for d in debs if not (deb_dir / d.filename).is_file()]
    if missing:
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=".download-", dir=deb_dir) as tmp:
            done = _run_apt(
                apt, ["download", *(f"{d.package}={d.version}" for d in missing)], cwd=Path(tmp)
            )
            if done.returncode != 0:
                raise LabError(
                    f"downloading {', '.join(d.package for d in missing)} "
                    f"for {apt.deb_arch} failed: "
                    f"{_apt_problem(done)}: check network access to the mirrors"
                )
            for d in missing:
                got = Path(tmp, d.filename)
                if not got.is_file() or cache.file_digest(got) != d.sha256:
                    raise InfraError(
                        f"apt-get download of {d.filename} gave no file or a wrong sha256"
                    )
                got.replace(deb_dir / d.filename)
        size = sum(d.size for d in missing)
        log(
            f"downloaded {len(missing)} .debs ({size / 1e6:.1f} MB) "
            f"in {time.monotonic() - started:.1f} s"
        )
    else:
        log(f"all {len(debs)} .debs already in {deb_dir}")
    out = {}
    for d in debs:
        data = (deb_dir / d.filename).read_bytes()
        if cache.digest(data) != d.sha256:
            # A truncated or stale cached file: drop it so the next build downloads it again.
            (deb_dir / d.filename).unlink()
            raise InfraError(
                f"cached {deb_dir / d.filename} has a wrong sha256; removed it, build again"
            )
        out[d.package] = data
    return out
