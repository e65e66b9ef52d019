"""Bad input at the CLI: one clear line on stderr, non-zero exit, never a traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def run_lab(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lab", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.startswith("lab:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_malformed_toml(mini_lab: Path) -> None:
    f = mini_lab / "lab.toml"
    f.write_text(f.read_text().replace("[build]", "[build"))
    msg = one_line_error(run_lab("--config", str(f), "build"))
    assert "malformed TOML" in msg and "line 6, column" in msg


def test_unknown_key(mini_lab: Path) -> None:
    f = mini_lab / "lab.toml"
    f.write_text(f.read_text().replace("[build]", "[build]\nconfgs = []"))
    msg = one_line_error(run_lab("--config", str(f), "build"))
    assert "[build]: unknown key 'confgs'; valid keys here:" in msg and "configs" in msg


def test_unknown_arch_and_variant(mini_lab: Path) -> None:
    f = str(mini_lab / "lab.toml")
    msg = one_line_error(run_lab("--config", f, "build", "--arch", "riscv"))
    assert "unknown arch 'riscv'; valid: x86_64" in msg
    msg = one_line_error(run_lab("--config", f, "build", "--variant", "C9"))
    assert "unknown variant 'C9'; valid: demo-False, demo-True" in msg


def test_undefined_template_variable(mini_lab: Path) -> None:
    (mini_lab / "kernels" / "config" / "knob.config.j2").write_text(
        "CONFIG_A=y\n{% if knobb %}CONFIG_FOO=y{% endif %}\n"
    )
    msg = one_line_error(run_lab("--config", str(mini_lab / "lab.toml"), "build"))
    assert "knob.config.j2:2: 'knobb' is undefined" in msg and "knob=False" in msg


def test_missing_cross_compiler(mini_lab: Path) -> None:
    f = mini_lab / "lab.toml"
    f.write_text(
        f.read_text().replace(
            'make_arch = "x86_64"',
            'make_arch = "x86_64"\ncross_compile = "nosuch-linux-"\n'
            'compiler_package = "gcc-nosuch-linux"',
        )
    )
    msg = one_line_error(run_lab("--config", str(f), "build"))
    assert "nosuch-linux-gcc, nosuch-linux-ld not found (needed to build for x86_64)" in msg
    assert (
        "apt-get install -y --no-install-recommends binutils-nosuch-linux gcc-nosuch-linux" in msg
    )


def test_patch_that_does_not_apply(mini_lab: Path) -> None:
    tree = mini_lab / "linux"
    (tree / "mm").mkdir(parents=True)
    (tree / "Makefile").write_text("all:\n")
    (tree / "Kconfig").write_text("")
    (tree / "mm" / "secretmem.c").write_text("a\nb\nc\n")
    series = mini_lab / "kernels" / "patches" / "s"
    series.mkdir()
    (series / "series").write_text("0001-x.patch\n")
    (series / "0001-x.patch").write_text(
        textwrap.dedent("""\
        --- a/mm/secretmem.c
        +++ b/mm/secretmem.c
        @@ -1,3 +1,3 @@ static int secretmem_fault(void)
         a
        -B
        +b2
         c
        """)
    )
    f = mini_lab / "lab.toml"
    text = f.read_text().replace(
        'kind = "tarball"\npath = "linux.tar.xz"', f'kind = "tree"\npath = "{tree}"'
    )
    f.write_text(
        text.replace('configs = ["knob.config.j2"]', 'configs = ["knob.config.j2"]\nseries = ["s"]')
    )
    msg = one_line_error(run_lab("--config", str(f), "build"))
    assert "patch s/0001-x.patch does not apply" in msg
    assert "mm/secretmem.c: hunk #1 @@ -1,3 +1,3 @@ static int secretmem_fault(void) FAILED" in msg


@pytest.mark.parametrize("argv", [["config", "show", "--arch", "nope"], ["doctor"]])
def test_other_commands_do_not_trace(mini_lab: Path, argv: list[str]) -> None:
    proc = run_lab("--config", str(mini_lab / "lab.toml"), *argv)
    assert "Traceback" not in proc.stderr


def test_missing_build_tools_named_with_their_packages(mini_lab: Path, tmp_path: Path) -> None:
    import os

    empty = tmp_path / "bin"
    empty.mkdir()
    proc = run_lab(
        "--config", str(mini_lab / "lab.toml"), "build", env={**os.environ, "PATH": str(empty)}
    )
    msg = one_line_error(proc)
    assert "make, gcc, flex, bison, bc, cpio, patch, cp not found (needed to build kernels)" in msg
    assert (
        "apt-get install -y --no-install-recommends bc bison coreutils cpio flex gcc make patch"
        in msg
    )
