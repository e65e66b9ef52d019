"""Hostile or broken lab.toml: one line naming the key and what is valid, exit 2.

lab.toml is trusted configuration (docs/lab-toml.md), but a typo or a mistake in
it must still give one clear line, never a traceback, a hang or a silently
dropped cell; and its templates render in Jinja's sandbox.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import config
from lab.build import source
from lab.config import templates
from lab.errors import LabError
from lab.run import matrix, testcase
from lab.vm import qemu

TESTCASE = 'TESTCASE = {"purpose": "p", "arches": ARCHES}\n\n\ndef run(t):\n    pass\n'


def _edit(lab: Path, old: str, new: str) -> Path:
    f = lab / "lab.toml"
    text = f.read_text()
    assert old in text
    f.write_text(text.replace(old, new, 1))
    return f


def _variant_key(lab: Path, line: str) -> Path:
    """Add `line` to [variants.demo]."""
    return _edit(lab, 'configs = ["knob.config.j2"]', f'configs = ["knob.config.j2"]\n{line}')


def _error(file: Path) -> str:
    with pytest.raises(LabError) as exc:
        config.load(file)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(str(file))
    return msg


def _testcase(lab: Path, name: str = "api", arches: str = '["*"]') -> testcase.TestCase:
    d = lab / "testcases"
    d.mkdir(exist_ok=True)
    (d / f"{name}.py").write_text(TESTCASE.replace("ARCHES", arches))
    return testcase.load(d / f"{name}.py")


# --- templates ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ 1/0 }}", "division by zero"),
        ("{{ knob + 'x' }}", "unsupported operand"),
        ("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", "recursion"),
        ("{% include 'nope.txt' %}", "template not found: 'nope.txt'"),
        ("{% include '/etc/passwd' %}", "template not found: '/etc/passwd'"),
        ("{% include '../../../../../../etc/passwd' %}", "template not found"),
    ],
)
def test_template_runtime_errors_are_one_line(mini_lab: Path, template: str, expected: str) -> None:
    msg = _error(_variant_key(mini_lab, f'description = "{template}"'))
    assert "[variants.demo] description" in msg
    assert "knob=False" in msg  # the combination
    assert expected in msg


def test_include_is_relative_to_lab_toml_not_the_cwd(
    mini_lab: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    (mini_lab / "snippet.txt").write_text("from the snippet")
    f = _variant_key(mini_lab, "description = \"{% include 'snippet.txt' %}\"")
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    assert config.load(f).variants[0].description == "from the snippet"


@pytest.mark.parametrize(
    "name", ["/etc/passwd", "../" * 12 + "etc/passwd", "../../lab.toml", "sub/../../../lab.toml"]
)
def test_config_template_outside_config_dir_is_one_line(mini_lab: Path, name: str) -> None:
    with pytest.raises(LabError) as exc:
        templates.render_file(mini_lab / "kernels" / "config", name, {})
    assert "\n" not in str(exc.value)
    assert "config template not found" in str(exc.value)


@pytest.mark.parametrize(
    "body",
    ["{{ 1/0 }}", "{% include 'nope.j2' %}", "{% macro m() %}{{ m() }}{% endmacro %}{{m()}}"],
)
def test_config_template_runtime_errors_name_the_file(tmp_path: Path, body: str) -> None:
    (tmp_path / "bad.j2").write_text("CONFIG_A=y\n" + body + "\n")
    with pytest.raises(LabError) as exc:
        templates.render_file(tmp_path, "bad.j2", {"arch": "x86_64"})
    msg = str(exc.value)
    assert msg.startswith(str(tmp_path / "bad.j2")) and "\n" not in msg


def test_templates_are_sandboxed(mini_lab: Path, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    payload = f"{{{{ cycler.__init__.__globals__.os.system('touch {marker}') }}}}"
    msg = _error(_variant_key(mini_lab, f'description = "{payload}"'))
    assert "[variants.demo] description" in msg and "unsafe" in msg
    (tmp_path / "evil.j2").write_text(payload + "\n")
    with pytest.raises(LabError, match="unsafe"):
        templates.render_file(tmp_path, "evil.j2", {})
    assert not marker.exists()


# --- numbers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("[lab]", "[boot]\nready_timeout = nan\n[lab]", "boot.ready_timeout"),
        ("[lab]", "[boot]\nready_timeout = inf\n[lab]", "boot.ready_timeout"),
        ("[lab]", "[boot]\nshutdown_timeout = -inf\n[lab]", "boot.shutdown_timeout"),
        ("[lab]", "[boot]\nready_timeout = 1e9\n[lab]", "boot.ready_timeout"),
        ('console = "ttyS0"', 'console = "ttyS0"\nmemory_mib = 9223372036854775807', "memory_mib"),
        ('console = "ttyS0"', 'console = "ttyS0"\nsmp = 100000000', "smp"),
        ('cache_dir = "cache"', 'cache_dir = "cache"\njobs = 100000000', "lab.jobs"),
        ("[variants.demo]", "[variants.demo]\nparams = { x = nan }", "variants.demo.params.x"),
        ("knob = [false, true]", "knob = [false, inf]", "variants.demo.axes.knob"),
    ],
)
def test_non_finite_and_huge_numbers_are_refused(
    mini_lab: Path, old: str, new: str, key: str
) -> None:
    msg = _error(_edit(mini_lab, old, new))
    assert key in msg
    assert "finite" in msg or "too large" in msg


def test_matrix_repeat_is_bounded(mini_lab: Path) -> None:
    with pytest.raises(LabError, match=r"matrix\.repeat: 100000000 is too large; must be <= "):
        matrix.parse_spec({"repeat": 100000000}, str(mini_lab / "lab.toml"))
    cfg = config.load(mini_lab / "lab.toml")
    with pytest.raises(LabError, match=r"--repeat 100000000 is too large"):
        matrix.plan(cfg, [_testcase(mini_lab)], matrix.MatrixSpec(), repeat=100000000)


def test_axis_product_is_capped_before_it_is_built(mini_lab: Path) -> None:
    axes = "\n".join(f"a{i} = [{', '.join(str(v) for v in range(10))}]" for i in range(12))
    f = _edit(mini_lab, "knob = [false, true]", f"knob = [false, true]\n{axes}")
    start = time.monotonic()
    msg = _error(f)
    assert time.monotonic() - start < 5
    assert "[variants.demo]" in msg and "combinations" in msg


def test_every_combination_excluded_says_so(mini_lab: Path) -> None:
    f = _edit(
        mini_lab,
        "knob = [false, true]",
        "knob = [false, true]\n[[variants.demo.exclude]]\nknob = false\n"
        "[[variants.demo.exclude]]\nknob = true",
    )
    msg = _error(f)
    assert "[variants.demo]" in msg and "every combination is excluded" in msg


# --- names and strings -------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["../../../../escape", "a b", "-x", "..", "x*", ""])
def test_arch_names_are_validated_like_variant_names(mini_lab: Path, arch: str) -> None:
    f = _edit(mini_lab, "[arch.x86_64]", f'[arch."{arch}"]')
    f = _edit(mini_lab, "[arch.x86_64.qemu]", f'[arch."{arch}".qemu]')
    msg = _error(f)
    assert f"arch name {arch!r}" in msg and "letters, digits" in msg


@pytest.mark.parametrize("name", ["-{{ knob }}", "--variant={{ knob }}", "..", "a\u0001{{ knob }}"])
def test_bad_variant_names_are_refused(mini_lab: Path, name: str) -> None:
    toml_name = name.replace("\u0001", "\\u0001")
    msg = _error(_variant_key(mini_lab, f'name = "{toml_name}"'))
    assert "is not a valid variant name" in msg


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("[lab]", '[boot]\ncmdline = "quiet\\u0000init=/bin/sh"\n[lab]', "boot.cmdline"),
        ('image = "arch', 'cmdline = "a\\u001b[2J"\nimage = "arch', "arch.x86_64.cmdline"),
        ("[variants.demo]", '[variants.demo]\ncmdline = "x\\u0000y"', "cmdline"),
        ("[variants.demo]", '[variants.demo]\ncmdline = "x\\u007fy"', "cmdline"),
        ('cache_dir = "cache"', 'cache_dir = "ca\\u0000che"', "lab.cache_dir"),
    ],
)
def test_control_characters_are_refused(mini_lab: Path, old: str, new: str, key: str) -> None:
    msg = _error(_edit(mini_lab, old, new))
    assert key in msg and "control character" in msg


def test_cmdline_whitespace_is_still_collapsed(mini_lab: Path) -> None:
    f = _variant_key(mini_lab, 'cmdline = "a\\nb\\tc"')
    assert config.load(f).variants[0].cmdline == "a b c"


def test_deep_toml_nesting_is_one_line(mini_lab: Path) -> None:
    f = _edit(mini_lab, "[lab]", "x = " + "[" * 5000 + "]" * 5000 + "\n[lab]")
    assert "lab.toml" in _error(f)


# --- [matrix] and test case arches --------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"variants": ["demo-False", "Z9"]}, "[matrix] variants: 'Z9' matches nothing; valid: "),
        ({"arches": ["x86_64", "riscv"]}, "[matrix] arches: 'riscv' matches nothing; valid: "),
        ({"testcases": ["apii"]}, "[matrix] testcases: 'apii' matches nothing; valid: api"),
    ],
)
def test_matrix_typos_are_errors(mini_lab: Path, raw: dict[str, object], expected: str) -> None:
    cfg = config.load(mini_lab / "lab.toml")
    spec = matrix.parse_spec(raw, str(cfg.file))
    with pytest.raises(LabError) as exc:
        matrix.plan(cfg, [_testcase(mini_lab)], spec)
    assert expected in str(exc.value)


def test_testcase_arch_typo_is_an_error(mini_lab: Path) -> None:
    cfg = config.load(mini_lab / "lab.toml")
    tc = _testcase(mini_lab, arches='["x86-64"]')
    with pytest.raises(LabError) as exc:
        matrix.plan(cfg, [tc], matrix.MatrixSpec())
    msg = str(exc.value)
    assert str(tc.path) in msg and "'x86-64'" in msg and "valid: x86_64" in msg


def test_cell_count_is_bounded(mini_lab: Path) -> None:
    cfg = config.load(mini_lab / "lab.toml")
    tcs = [_testcase(mini_lab, f"t{i}") for i in range(60)]
    with pytest.raises(LabError, match="cells; at most"):
        matrix.plan(cfg, tcs, matrix.MatrixSpec(repeat=1000))


# --- QEMU option escaping -----------------------------------------------------------------


def test_comma_in_result_path_is_escaped(mini_lab: Path) -> None:
    arch = config.load(mini_lab / "lab.toml").arch("x86_64")
    launch = qemu.Launch(
        arch,
        "tcg",
        Path("/k"),
        Path("/i"),
        "console=ttyS0",
        Path("/tmp/res,id=evil,path=/x/result.jsonl"),
        512,
        1,
    )
    argv = launch.argv()
    assert "file,id=result,path=/tmp/res,,id=evil,,path=/x/result.jsonl" in argv


# --- git source ---------------------------------------------------------------------------


def _bare_repo(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / "Makefile").write_text("all:\n")

    def git(*args: str, cwd: Path = work) -> None:
        subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    git("add", "Makefile")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    git("clone", "-q", "--bare", str(work), str(tmp_path / "repo.git"), cwd=tmp_path)
    return tmp_path / "repo.git"


def test_git_url_and_ref_are_not_options(tmp_path: Path) -> None:
    repo = _bare_repo(tmp_path)
    marker = tmp_path / "PWNED_GIT"
    hostile = f"--upload-pack=touch {marker}; git-upload-pack"
    for url, ref in (
        (hostile, "main"),
        (hostile, "a" * 40),
        (str(repo), f"--upload-pack=touch {marker}"),
    ):
        spec = config.SourceSpec("git", url=url, ref=ref)
        with pytest.raises(LabError):
            source.prepare(spec, tmp_path / f"cache-{len(ref)}-{len(url)}", lambda _m: None)
    assert not marker.exists()
    # and a plain local repository still works
    src = source.prepare(
        config.SourceSpec("git", url=str(repo), ref="main"), tmp_path / "cache", lambda _m: None
    )
    assert (src.tree / "Makefile").read_text() == "all:\n"


# --- through the CLI, as a user would see it ----------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("[variants.demo]", '[variants.demo]\ndescription = "{{ 1/0 }}"', "division by zero"),
        ("[lab]", "[boot]\nready_timeout = nan\n[lab]", "boot.ready_timeout: nan"),
        ("[arch.x86_64]", '[arch."../../../escape"]', "arch name '../../../escape'"),
        ("[variants.demo]", '[variants.demo]\nname = "-{{ knob }}"', "not a valid variant"),
        ("[lab]", '[matrix]\narches = ["riscv"]\n[lab]', "'riscv' matches nothing"),
        ("[lab]", "[matrix]\nrepeat = 100000000\n[lab]", "matrix.repeat"),
    ],
)
def test_cli_matrix_list_gives_one_line_and_exit_2(
    mini_lab: Path, old: str, new: str, expected: str
) -> None:
    _testcase(mini_lab)
    f = _edit(mini_lab, old, new)
    if "escape" in new:
        f = _edit(mini_lab, "[arch.x86_64.qemu]", '[arch."../../../escape".qemu]')
    proc = subprocess.run(
        [sys.executable, "-m", "lab", "-c", str(f), "matrix", "--list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.startswith("lab:")]
    assert len(lines) == 1 and lines[0].startswith("lab: error: "), proc.stderr
    assert expected in lines[0]


def test_boot_cmdline_may_span_lines(mini_lab: Path) -> None:
    f = _edit(mini_lab, "[lab]", '[boot]\ncmdline = """quiet\nloglevel=3"""\n[lab]')
    assert config.load(f).boot.cmdline.split() == ["quiet", "loglevel=3"]
