"""Where the guest packages come from: the host's apt sources (or lab.toml's); recipe_for."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from lab.config import ImageSpec
from lab.errors import LabError
from lab.image.recipe import APT_ETC, RELEASE, RELEASE_SUITES, AptSource, ImageRecipe

# ---------------------------------------------------------------------------------------------
# Where the guest packages come from: the host's apt sources (or lab.toml's), parsed here so
# users behind a local mirror or apt proxy get theirs


def _source_error(where: str, message: str) -> LabError:
    return LabError(f"{where}: {message}")


def _options(text: str, where: str) -> dict[str, str]:
    opts = {}
    for word in text.split():
        key, eq, value = word.partition("=")
        if not eq or not key:
            raise _source_error(where, f"option {word!r} is not key=value")
        opts[key.rstrip("+-").lower()] = value
    return opts


def parse_one_line(text: str, where: str) -> list[AptSource]:
    """`deb [opts] URI SUITE [COMPONENT...]` lines (sources.list, *.list); deb-src is skipped."""
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        here = f"{where}:{number}"
        kind, _, rest = line.partition(" ")
        rest = rest.strip()
        opts: dict[str, str] = {}
        if rest.startswith("["):
            inside, closed, rest = rest[1:].partition("]")
            if not closed:
                raise _source_error(here, "unclosed '[' in the options")
            opts = _options(inside, here)
        words = rest.split()
        if kind not in ("deb", "deb-src") or len(words) < 2:
            raise _source_error(here, "expected 'deb [options] URI SUITE [COMPONENT...]'")
        if kind == "deb":
            uri, suite, *components = words
            out.append(AptSource(uri, (suite,), tuple(components), opts.get("signed-by", "")))
    return out


def parse_deb822(text: str, where: str) -> list[AptSource]:
    """deb822 stanzas (*.sources): Types, URIs, Suites, Components, Signed-By, Enabled."""
    out = []
    stanzas: list[dict[str, str]] = [{}]
    field = ""
    for number, raw in enumerate(text.splitlines(), 1):
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if stanzas[-1]:
                stanzas.append({})
            field = ""
            continue
        if raw[0] in " \t":
            if not field:
                raise _source_error(f"{where}:{number}", "continuation line without a field")
            stanzas[-1][field] = (stanzas[-1][field] + "\n" + raw.strip()).lstrip("\n")
            continue
        name, colon, value = raw.partition(":")
        if not colon or not name.strip():
            raise _source_error(f"{where}:{number}", "expected 'Field: value'")
        field = name.strip().lower()
        stanzas[-1][field] = value.strip()
    for stanza in stanzas:
        if not stanza or stanza.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in stanza.get("types", "").split():
            continue
        uris, suites = stanza.get("uris", "").split(), stanza.get("suites", "").split()
        if not uris or not suites:
            raise _source_error(where, "a stanza of type deb needs URIs and Suites")
        components = tuple(stanza.get("components", "").split())
        signed_by = stanza.get("signed-by", "")
        out += [AptSource(uri, tuple(suites), components, signed_by) for uri in uris]
    return out


def host_sources(etc: Path = APT_ETC) -> list[AptSource]:
    """The host's apt sources, in apt's order: sources.list, then sources.list.d/*.list and
    *.sources by name."""
    files = [etc / "sources.list"]
    parts = etc / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    out = []
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise LabError(f"cannot read {path}: {exc.strerror}") from None
        parse = parse_deb822 if path.suffix == ".sources" else parse_one_line
        out += parse(text, str(path))
    return out


def release_sources(sources: list[AptSource], release_suites: tuple[str, ...]) -> list[AptSource]:
    """The entries that serve the guest's release suites, component main only (all the image
    needs). A Signed-By that is not a keyring file (an inline key, a fingerprint) is dropped:
    the recipe's keyring verifies that entry instead."""
    by_key: dict[tuple[str, str], list[str]] = {}
    for src in sources:
        if "main" not in src.components:
            continue
        signed_by = src.signed_by if src.signed_by.startswith("/") else ""
        for suite in src.suites:
            if suite in release_suites:
                suites = by_key.setdefault((src.uri.rstrip("/"), signed_by), [])
                if suite not in suites:
                    suites.append(suite)
    return [AptSource(uri, tuple(s), ("main",), sb) for (uri, sb), s in by_key.items()]


def recipe_for(spec: ImageSpec, images_dir: Path, etc: Path = APT_ETC) -> ImageRecipe:
    """The image recipe of a lab.toml [image] section; without [[image.sources]] the mirror
    is whatever the host's apt uses for the guest's release."""
    if spec.sources:
        sources = [AptSource(uri, suites, components) for uri, suites, components in spec.sources]
    else:
        sources = release_sources(host_sources(etc), RELEASE_SUITES)
        if not sources:
            raise LabError(
                f"no {RELEASE} entry with component main in the host's apt sources "
                f"({etc}/sources.list, {etc}/sources.list.d/*.list, *.sources): "
                "add [[image.sources]] uri = ..., suites = [...] to lab.toml (docs/lab-toml.md)"
            )
    recipe = ImageRecipe(sources=tuple(sources), init_script=images_dir / "init")
    changes: dict[str, Any] = {}
    if spec.extra_packages:
        changes["packages"] = (*recipe.packages, *spec.extra_packages)
    if spec.keyring:
        changes["keyring"] = Path(spec.keyring)
    return dataclasses.replace(recipe, **changes) if changes else recipe


def recipe_keyrings(recipe: ImageRecipe) -> tuple[str, ...]:
    """The keyring files apt verifies the recipe's sources with."""
    return tuple(sorted({src.signed_by or str(recipe.keyring) for src in recipe.sources}))
