"""lab/prereqs.py: one table for what the lab runs or reads on the host; doctor and setup
follow it, and the commands take their programs from it."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from lab import cli, config, doctor, image, prereqs
from lab.build import kselftest
from lab.errors import LabError

REPO = Path(__file__).resolve().parent.parent
LAB = REPO / "lab"

# Call sites that start a program: the argv (or program name) is their first argument.
RUNNERS = {
    ("subprocess", "run"),
    ("subprocess", "Popen"),
    ("subprocess", "check_output"),
    ("subprocess", "call"),
    ("proc", "run_streaming"),
    ("pexpect", "spawn"),
    ("shutil", "which"),
    ("os", "execvp"),
}


def _literal_programs(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) of every program a call site names as a string literal."""
    out = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        if not (isinstance(owner, ast.Name) and (owner.id, node.func.attr) in RUNNERS):
            continue
        if not node.args:
            continue
        first = node.args[0]
        if isinstance(first, ast.List | ast.Tuple) and first.elts:
            first = first.elts[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            out.append((node.lineno, first.value))
    return out


def test_no_code_runs_a_program_the_table_lacks() -> None:
    """Every program the lab starts by a literal name is a row of the table (the other call
    sites take theirs from prereqs.program()/compiler()/qemu() or sys.executable)."""
    strays = []
    # lab/guest/ runs inside the VM, on the image's programs, not the host's.
    for path in sorted(p for p in LAB.rglob("*.py") if p.parent.name != "guest"):
        for line, name in _literal_programs(ast.parse(path.read_text())):
            if name not in prereqs.PROGRAMS:
                strays.append(f"{path.relative_to(LAB)}:{line}: {name}")
    assert strays == []


def test_the_scan_sees_literal_program_names() -> None:
    code = 'subprocess.run(["nosuch", "-x"])\nshutil.which("other")\nsubprocess.run(argv)\n'
    assert _literal_programs(ast.parse(code)) == [(1, "nosuch"), (2, "other")]


def test_program_refuses_names_outside_the_table() -> None:
    assert prereqs.program("make") == "make"
    with pytest.raises(AssertionError, match=r"missing from lab/prereqs\.py"):
        prereqs.program("nosuch-tool")


def test_default_lab_toml_covers_compilers_libc_qemu_and_firmware() -> None:
    cfg = config.load(REPO / "lab.toml")
    rows = prereqs.for_config(cfg, tests=True)
    packages = {r.package for r in rows}
    assert {
        # kernel builds, both arches
        "make", "gcc", "flex", "bison", "bc", "libelf-dev", "libssl-dev", "patch",
        "gcc-aarch64-linux-gnu", "binutils-aarch64-linux-gnu", "binutils",
        # the static selftests: libc headers, static libc, uapi headers per arch
        "libc6-dev", "linux-libc-dev", "libc6-dev-arm64-cross", "linux-libc-dev-arm64-cross",
        # boot: QEMU and the microvm firmware
        "qemu-system-x86", "qemu-system-arm", "qemu-system-data",
        # source and image
        "linux-source-6.1", "xz-utils", "apt", "debian-archive-keyring",
        # the lab's own tests
        "chromium", "openssh-server", "openssh-client", "mmdebstrap",
    } <= packages  # fmt: skip
    paths = {r.path for r in rows if r.path}
    assert {
        "/usr/aarch64-linux-gnu/include/sys/uio.h",
        "/usr/aarch64-linux-gnu/lib/libc.a",
        "/usr/include/x86_64-linux-gnu/sys/uio.h",
        "/usr/lib/x86_64-linux-gnu/libc.a",
        "/usr/share/qemu/bios-microvm.bin",
        "/usr/src/linux-source-6.1.tar.xz",
    } <= paths
    assert not {"chromium", "mmdebstrap"} & {r.package for r in prereqs.for_config(cfg)}


def test_commands_run_the_tables_programs() -> None:
    """The build's make, the toolchain's compiler and QEMU's binary are the table's rows."""
    cfg = config.load(REPO / "lab.toml")
    arm = cfg.arch("arm64")
    assert prereqs.compiler(arm).name == "aarch64-linux-gnu-gcc"
    assert prereqs.compiler(arm).package == "gcc-aarch64-linux-gnu"
    assert prereqs.qemu(arm).name == arm.qemu.binary
    assert prereqs.firmware(arm) == ()  # virt + -kernel loads no firmware
    x86 = cfg.arch("x86_64")
    assert [n.path for n in prereqs.firmware(x86)] == ["/usr/share/qemu/bios-microvm.bin"]
    src = (LAB / "build" / "__init__.py").read_text()
    assert 'prereqs.program("make")' in src


@pytest.fixture
def fake_host(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """A host where every package's row is present except the names/paths in the returned set;
    `doctor.install` "installs" by removing the rows of the given packages."""
    absent: set[str] = set()
    real_locate = prereqs.Need.locate

    def locate(self: prereqs.Need) -> str | None:
        if (self.path or self.name) in absent:
            return None
        if real_locate(self) is not None or not self.package:
            return real_locate(self)  # rows no package provides stay as they are
        return self.path or f"/usr/bin/{self.name}"

    installed: list[list[str]] = []

    def install(packages: list[str]) -> None:
        installed.append(packages)
        cfg = config.load(REPO / "lab.toml")
        for row in prereqs.for_config(cfg, tests=True):
            if row.package in packages:
                absent.discard(row.path or row.name)

    monkeypatch.setattr(prereqs.Need, "locate", locate)
    monkeypatch.setattr(doctor, "install", install)
    monkeypatch.setattr(doctor, "installed", installed, raising=False)
    return absent


def test_doctor_names_the_cross_libc_when_only_the_compiler_is_there(
    fake_host: set[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The fresh-machine failure of issue 19: gcc-aarch64-linux-gnu without its recommended
    libc6-dev-arm64-cross. Doctor must say so and setup must install exactly that."""
    fake_host |= {
        "/usr/aarch64-linux-gnu/include/sys/uio.h",
        "/usr/aarch64-linux-gnu/lib/libc.a",
    }
    toml = str(REPO / "lab.toml")
    assert cli.main(["--config", toml, "doctor"]) == 1
    out = capsys.readouterr().out
    assert "MISSING arm64 libc headers" in out and "MISSING arm64 static libc" in out
    assert "apt-get install -y --no-install-recommends libc6-dev-arm64-cross\n" in out
    assert cli.main(["--config", toml, "setup"]) == 0
    assert doctor.installed == [["libc6-dev-arm64-cross"]]  # type: ignore[attr-defined]
    assert "all prerequisites present" in capsys.readouterr().out


def test_setup_fails_naming_what_a_package_did_not_bring(
    fake_host: set[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_host.add("/usr/share/qemu/bios-microvm.bin")
    monkeypatch.setattr(doctor, "install", lambda packages: None)
    assert cli.main(["--config", str(REPO / "lab.toml"), "setup"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0] == "installing: qemu-system-data"
    assert err[1].startswith("lab: error: still missing after setup: bios-microvm.bin")


def test_selftest_build_names_the_missing_cross_libc(fake_host: set[str], tmp_path: Path) -> None:
    """Before compiling (and before fetching anything) the selftest build says which
    package is missing, instead of the compiler's `sys/uio.h: No such file`."""
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("needs the arm64 cross compiler to version it")
    fake_host.add("/usr/aarch64-linux-gnu/include/sys/uio.h")
    cfg = config.load(REPO / "lab.toml")
    tree = tmp_path / "src"
    (tree / "tools/testing/selftests/vm").mkdir(parents=True)
    (tree / "tools/testing/selftests/vm/memfd_secret.c").write_text("int main(void){}\n")
    (tree / "tools/testing/selftests/kselftest.h").write_text("\n")
    with pytest.raises(LabError) as exc:
        kselftest.build(
            "kselftest:vm/memfd_secret",
            cfg.arch("arm64"),
            tree,
            image.ImageRecipe(sources=(image.AptSource("http://mirror.example/d", ("x",)),)),
            tmp_path / "cache",
            lambda _m: None,
        )
    assert str(exc.value) == (
        "arm64 libc headers not found (needed to compile kselftest:vm/memfd_secret for arm64); "
        "install with: sudo apt-get install -y --no-install-recommends libc6-dev-arm64-cross"
    )


def test_doctor_reports_a_non_package_problem_without_an_apt_line(
    mini_lab: Path, fake_host: set[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """mini_lab's [source] is a tarball path that does not exist: only the user can fix it."""
    assert cli.main(["--config", str(mini_lab / "lab.toml"), "doctor"]) == 1
    out = capsys.readouterr().out
    assert "to install what is missing" not in out
    assert "not a package (fix by hand): kernel source:" in out


def test_doctor_exits_zero_when_all_present(
    fake_host: set[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--config", str(REPO / "lab.toml"), "doctor", "--tests"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("all prerequisites present")


def test_require_is_one_line() -> None:
    need = prereqs.Need("nosuch-tool", "nosuch-pkg", "build", "a test")
    with pytest.raises(LabError) as exc:
        prereqs.require([need, prereqs.PROGRAMS["make"]], "do a thing")
    assert str(exc.value) == (
        "nosuch-tool not found (needed to do a thing); "
        "install with: sudo apt-get install -y --no-install-recommends nosuch-pkg"
    )
