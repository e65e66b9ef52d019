"""The guest image's mirror comes from the host's apt sources (or lab.toml [image]): parsing
one-line and deb822 files, picking the guest release's entries, and bad [image] values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lab import config, image
from lab.config import ImageSpec
from lab.errors import LabError
from lab.image import AptSource
from lab.image import apt as image_apt

KEY = "/usr/share/keyrings/debian-archive-keyring.gpg"
NO_SPEC = ImageSpec((), (), "")

ONE_LINE = f"""\
# the main archive, with a keyring
deb [arch=amd64 signed-by={KEY}] http://mirror.example/debian/ bookworm main contrib
deb http://mirror.example/debian bookworm-updates main   # no signed-by: the recipe's keyring
deb-src http://mirror.example/debian bookworm main

deb http://security.example/debian-security bookworm-security main non-free-firmware
deb [ trusted=yes ] file:/srv/local-mirror ./
deb https://vendor.example/apt cloud-sdk-bookworm main
"""

DEB822 = """\
Types: deb deb-src
# a comment inside the stanza
URIs: http://mirror.example/debian http://backup.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBGPL0BUBEADmW5NlOa
 -----END PGP PUBLIC KEY BLOCK-----

Types: deb
URIs: https://vendor.example/node
Suites: nodistro
Components: main

Enabled: no
Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
"""


def test_one_line_format() -> None:
    got = image.parse_one_line(ONE_LINE, "sources.list")
    assert got == [
        AptSource("http://mirror.example/debian/", ("bookworm",), ("main", "contrib"), KEY),
        AptSource("http://mirror.example/debian", ("bookworm-updates",), ("main",)),
        AptSource(
            "http://security.example/debian-security",
            ("bookworm-security",),
            ("main", "non-free-firmware"),
        ),
        AptSource("file:/srv/local-mirror", ("./",), ()),
        AptSource("https://vendor.example/apt", ("cloud-sdk-bookworm",), ("main",)),
    ]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("deb http://x", "expected 'deb [options] URI SUITE"),
        ("deb [signed-by=/k http://x bookworm main", "unclosed '['"),
        ("deb [signed-by] http://x bookworm main", "option 'signed-by' is not key=value"),
        ("rpm http://x bookworm main", "expected 'deb [options] URI SUITE"),
    ],
)
def test_one_line_errors_name_file_and_line(line: str, problem: str) -> None:
    with pytest.raises(LabError) as exc:
        image.parse_one_line(f"# ok\n{line}\n", "/etc/apt/sources.list")
    assert str(exc.value).startswith("/etc/apt/sources.list:2: ")
    assert problem in str(exc.value)


def test_deb822_format() -> None:
    got = image.parse_deb822(DEB822, "debian.sources")
    suites = ("bookworm", "bookworm-updates")
    inline = got[2].signed_by
    assert inline.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----\n")
    assert got == [
        AptSource("http://mirror.example/debian", suites, ("main",), KEY),
        AptSource("http://backup.example/debian", suites, ("main",), KEY),
        AptSource(
            "http://mirror.example/debian-security", ("bookworm-security",), ("main",), inline
        ),
        AptSource("https://vendor.example/node", ("nodistro",), ("main",)),
    ]


def test_deb822_errors() -> None:
    with pytest.raises(LabError, match=r"^x.sources:1: continuation line without a field$"):
        image.parse_deb822(" stray\n", "x.sources")
    with pytest.raises(LabError, match=r"^x.sources:2: expected 'Field: value'$"):
        image.parse_deb822("Types: deb\nno colon here\n", "x.sources")
    with pytest.raises(LabError, match="needs URIs and Suites"):
        image.parse_deb822("Types: deb\nURIs: http://x\n", "x.sources")


def test_release_entries_main_only_merged_per_mirror() -> None:
    """Only the guest release's suites (incl. security), only main; third-party suites
    (nodistro, cloud-sdk-bookworm) and flat repositories are left out; an inline key or
    fingerprint falls back to the recipe's keyring."""
    picked = image.release_sources(
        image.parse_one_line(ONE_LINE, "a.list") + image.parse_deb822(DEB822, "b.sources"),
        image.RELEASE_SUITES,
    )
    assert picked == [
        AptSource("http://mirror.example/debian", ("bookworm", "bookworm-updates"), ("main",), KEY),
        AptSource("http://mirror.example/debian", ("bookworm-updates",), ("main",)),
        AptSource("http://security.example/debian-security", ("bookworm-security",), ("main",)),
        AptSource("http://backup.example/debian", ("bookworm", "bookworm-updates"), ("main",), KEY),
        AptSource("http://mirror.example/debian-security", ("bookworm-security",), ("main",)),
    ]


def _etc(tmp_path: Path, files: dict[str, str]) -> Path:
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    for name, text in files.items():
        (etc / name).write_text(text)
    return etc


def test_host_sources_reads_apts_files_in_apts_order(tmp_path: Path) -> None:
    etc = _etc(
        tmp_path,
        {
            "sources.list": "deb http://one.example/debian bookworm main\n",
            "sources.list.d/b.sources": "Types: deb\nURIs: http://three.example/d\n"
            "Suites: bookworm-security\nComponents: main\n",
            "sources.list.d/a.list": "deb http://two.example/debian bookworm-updates main\n",
            "sources.list.d/c.list.disabled": "deb http://never.example/d bookworm main\n",
            "sources.list.d/d.sources.save": "Types: deb\nURIs: http://never.example/d\n",
        },
    )
    assert [s.uri for s in image.host_sources(etc)] == [
        "http://one.example/debian",
        "http://two.example/debian",
        "http://three.example/d",
    ]
    assert image.host_sources(tmp_path / "nothing") == []


def test_recipe_takes_the_hosts_mirror(tmp_path: Path) -> None:
    etc = _etc(tmp_path, {"sources.list.d/debian.sources": DEB822})
    recipe = image.recipe_for(NO_SPEC, tmp_path / "images", etc)
    assert recipe.init_script == tmp_path / "images" / "init"
    lines = image_apt._sources_list(recipe).splitlines()
    assert lines == [
        f"deb [signed-by={KEY}] http://mirror.example/debian bookworm main",
        f"deb [signed-by={KEY}] http://mirror.example/debian bookworm-updates main",
        f"deb [signed-by={KEY}] http://backup.example/debian bookworm main",
        f"deb [signed-by={KEY}] http://backup.example/debian bookworm-updates main",
        f"deb [signed-by={KEY}] http://mirror.example/debian-security bookworm-security main",
    ]
    assert image.recipe_keyrings(recipe) == (KEY,)


def test_signed_by_keyring_is_kept_per_source(tmp_path: Path) -> None:
    etc = _etc(
        tmp_path,
        {"sources.list": "deb [signed-by=/etc/apt/local.gpg] http://local.example/d bookworm main"},
    )
    recipe = image.recipe_for(ImageSpec((), (), "/k/other.gpg"), tmp_path, etc)
    assert image_apt._sources_list(recipe) == (
        "deb [signed-by=/etc/apt/local.gpg] http://local.example/d bookworm main\n"
    )
    assert image.recipe_keyrings(recipe) == ("/etc/apt/local.gpg",)


def test_lab_toml_sources_win_over_the_hosts(tmp_path: Path) -> None:
    etc = _etc(tmp_path, {"sources.list": "deb http://host.example/d bookworm main\n"})
    spec = ImageSpec(("strace",), (("http://mine.example/d", ("bookworm",), ("main",)),), "/k.gpg")
    recipe = image.recipe_for(spec, tmp_path, etc)
    assert recipe.sources == (AptSource("http://mine.example/d", ("bookworm",), ("main",)),)
    assert recipe.keyring == Path("/k.gpg") and recipe.packages[-1] == "strace"


def test_no_release_entry_is_one_clear_line(tmp_path: Path) -> None:
    etc = _etc(tmp_path, {"sources.list": "deb http://archive.example/ubuntu jammy main\n"})
    with pytest.raises(LabError) as exc:
        image.recipe_for(NO_SPEC, tmp_path, etc)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith("no bookworm entry with component main in the host's apt sources")
    assert "[[image.sources]]" in msg


def test_no_registry_host_is_named_in_the_repository() -> None:
    """Users behind a local mirror or proxy get theirs: no code, test or doc names a
    package registry's host."""
    repo = Path(__file__).resolve().parent.parent
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    hosts = ("debian" + ".org", "ubuntu" + ".com", "pypi" + ".org", "pythonhosted" + ".org")
    found = []
    for name in files:
        path = repo / name
        if not path.is_file():
            continue
        text = path.read_text(errors="replace").lower()
        found += [f"{name}: {h}" for h in hosts if h in text]
    assert found == []


# --- bad [image] values: one line, exit 2 --------------------------------------------


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        (
            '[[image.sources]]\nuri = "mirror without scheme"\nsuites = ["bookworm"]',
            "image.sources[0].uri: 'mirror without scheme' is not an apt URI",
        ),
        (
            '[[image.sources]]\nuri = "http://m.example/d"\nsuites = []',
            "image.sources[0].suites: expected at least one suite",
        ),
        (
            '[[image.sources]]\nuri = "http://m.example/d"\nsuites = ["book worm"]',
            "image.sources[0].suites: 'book worm' is not a valid suite",
        ),
        (
            '[[image.sources]]\nuri = "http://m.example/d"\nsuites = ["bookworm"]\ncomponents = []',
            "image.sources[0].components: expected at least one component",
        ),
        ('[image]\nkeyring = ""', "image.keyring: '' is not a keyring file path"),
        ('[image]\nextra_packages = ["Not A Package"]', "'Not A Package' is not a Debian package"),
        ('[image]\nmirror = "http://m.example/d"', "mirror"),
    ],
)
def test_bad_image_values_are_one_line_exit_2(mini_lab: Path, section: str, problem: str) -> None:
    f = mini_lab / "lab.toml"
    f.write_text(f.read_text() + "\n" + section + "\n")
    with pytest.raises(LabError) as exc:
        config.load(f)
    assert "\n" not in str(exc.value) and problem in str(exc.value), str(exc.value)
    proc = subprocess.run(
        [sys.executable, "-m", "lab", "--config", str(f), "image"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and problem in proc.stderr


def test_relative_keyring_is_relative_to_lab_toml(mini_lab: Path) -> None:
    f = mini_lab / "lab.toml"
    f.write_text(f.read_text() + '\n[image]\nkeyring = "keys/mirror.gpg"\n')
    assert config.load(f).image.keyring == str(mini_lab / "keys" / "mirror.gpg")
