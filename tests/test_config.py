"""lab.toml loading: valid files, and one clear line for each kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import config
from lab.errors import LabError


def test_repo_lab_toml_loads(repo: Path) -> None:
    cfg = config.load(repo / "lab.toml")
    names = [v.name for v in cfg.variants]
    assert {"U0", "U1", "C0", "C1", "C2", "P0", "P1", "R0"} <= set(names)
    assert set(cfg.arches) == {"x86_64", "arm64"}
    c0 = cfg.variant("C0")
    assert c0.params["pool"] == "cma" and c0.params["fault"] == "oom"
    assert "secretmem=64M" in c0.cmdline and "secretmem.enable=1" in c0.cmdline
    assert "secretmem=" not in cfg.variant("U0").cmdline.replace("secretmem.enable", "")
    assert cfg.arch("arm64").qemu.cpu == "cortex-a57"


def test_mini_lab_expands_axes(mini_lab: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAB_CACHE_DIR", raising=False)
    cfg = config.load(mini_lab / "lab.toml")
    assert [v.name for v in cfg.variants] == ["demo-False", "demo-True"]
    assert cfg.cache_dir == mini_lab / "cache"


def test_env_cache_dir_wins(mini_lab: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_CACHE_DIR", "/somewhere/else")
    assert config.load(mini_lab / "lab.toml").cache_dir == Path("/somewhere/else")


def _error(path: Path) -> str:
    with pytest.raises(LabError) as exc:
        config.load(path)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_malformed_toml_names_line_and_column(mini_lab: Path) -> None:
    f = mini_lab / "lab.toml"
    f.write_text(f.read_text().replace('kind = "tarball"', 'kind = "tarball'))
    msg = _error(f)
    assert str(f) in msg and "line 4, column 16" in msg


def test_unknown_key_lists_valid_keys(mini_lab: Path) -> None:
    f = mini_lab / "lab.toml"
    f.write_text(f.read_text().replace('machine = "microvm"', 'machine = "microvm"\nmachne = "x"'))
    msg = _error(f)
    assert "arch.x86_64.qemu" in msg and "'machne'" in msg and "machine" in msg


def test_bad_choice_lists_choices(mini_lab: Path) -> None:
    f = mini_lab / "lab.toml"
    f.write_text(f.read_text().replace('kind = "tarball"', 'kind = "svn"'))
    msg = _error(f)
    assert "source.kind" in msg and "'svn'" in msg and "debian, tarball, tree, git" in msg


def test_wrong_type(mini_lab: Path) -> None:
    f = mini_lab / "lab.toml"
    f.write_text(f.read_text().replace('make_arch = "x86_64"', "make_arch = 3"))
    assert "arch.x86_64.make_arch: expected a string" in _error(f)


def test_unknown_arch_and_variant_list_valid_ones(mini_lab: Path) -> None:
    cfg = config.load(mini_lab / "lab.toml")
    with pytest.raises(LabError, match=r"unknown arch 'mips'; valid: x86_64"):
        cfg.arch("mips")
    with pytest.raises(LabError, match=r"unknown variant 'nope'; valid: demo-False, demo-True"):
        cfg.variant("nope")


def test_undefined_variable_in_name_template(mini_lab: Path) -> None:
    f = mini_lab / "lab.toml"
    f.write_text(
        f.read_text().replace(
            'configs = ["knob.config.j2"]', 'configs = ["knob.config.j2"]\nname = "{{ id }}"'
        )
    )
    msg = _error(f)
    assert "'id' is undefined" in msg and "knob=False" in msg


def test_duplicate_variant_names(mini_lab: Path) -> None:
    f = mini_lab / "lab.toml"
    f.write_text(
        f.read_text().replace(
            'configs = ["knob.config.j2"]', 'configs = ["knob.config.j2"]\nname = "same"'
        )
    )
    assert "produced twice" in _error(f)
