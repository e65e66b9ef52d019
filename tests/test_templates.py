"""Config templates: StrictUndefined gives one line naming template, line and variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.config import templates
from lab.errors import LabError


def test_render_and_undefined_variable(tmp_path: Path) -> None:
    (tmp_path / "ok.j2").write_text("CONFIG_A={{ a }}\n")
    assert templates.render_file(tmp_path, "ok.j2", {"a": "y"}) == "CONFIG_A=y\n"
    (tmp_path / "bad.j2").write_text("CONFIG_A=y\n{% if pol == 'x' %}\nCONFIG_B=y\n{% endif %}\n")
    with pytest.raises(LabError) as exc:
        templates.render_file(tmp_path, "bad.j2", {"pool": "cma", "arch": "arm64"})
    msg = str(exc.value)
    assert msg.startswith(f"{tmp_path / 'bad.j2'}:2: 'pol' is undefined")
    assert "arch='arm64'" in msg and "pool='cma'" in msg and "\n" not in msg


def test_missing_template_and_syntax_error(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="config template not found"):
        templates.render_file(tmp_path, "nope.j2", {})
    (tmp_path / "syn.j2").write_text("{% if %}\n")
    with pytest.raises(LabError, match=r"syn.j2:1: template syntax error"):
        templates.render_file(tmp_path, "syn.j2", {})


def test_repo_secretmem_templates_render_for_every_variant(repo: Path) -> None:
    from lab import build, config
    from lab.build import kconfig

    cfg = config.load(repo / "lab.toml")
    for arch in cfg.arches.values():
        for v in cfg.variants:
            for frag in build.render_fragments(cfg, arch, v):
                kconfig.parse_fragment(frag.text, frag.template)
