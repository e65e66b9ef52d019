"""Test-case needs are built before scheduling (lab.run.needs), so preparing a cell only
reads files, and `lab boot --exec` follows its command through vm.boot.exec_command."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from test_golden import _base, _kernel

from lab.build import kselftest, source
from lab.config import LabConfig, SourceSpec, load
from lab.errors import InfraError, UserError
from lab.outcome import CLASSES
from lab.run import needs, testcase
from lab.run.cell import Cell
from lab.run.job import Inputs, prepare_cell
from lab.vm import boot

REPO = Path(__file__).resolve().parent.parent
NEED = "kselftest:vm/memfd_secret"


def _cells(cfg: LabConfig, name: str, arches: tuple[str, ...]) -> list[Cell]:
    tc = testcase.find(cfg.testcases_dir, name, CLASSES)
    return [Cell(cfg.arch(a), v, tc) for a in arches for v in cfg.variants[:2]]


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[str, str]]:
    """source.prepare and kselftest.build as calls recorded (the real ones need a kernel
    tree and a cross compiler); each build writes a binary named after the arch."""
    calls: list[tuple[str, str]] = []

    def prepare(spec: SourceSpec, *_a: Any, **_k: Any) -> Any:
        calls.append(("source", spec.package))
        return type("Src", (), {"tree": tmp_path / "tree" / spec.package})()

    def build(spec: str, arch: Any, tree: Path, *_a: Any) -> Path:
        calls.append((arch.name, spec))
        if arch.name == "arm64":
            raise InfraError("aarch64-linux-gnu-gcc failed")
        out = tmp_path / arch.name / tree.name / "memfd_secret"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"\x7fELF " + arch.name.encode())
        return out

    monkeypatch.setattr(source, "prepare", prepare)
    monkeypatch.setattr(kselftest, "build", build)
    return calls


def test_each_need_is_built_once_per_arch_and_a_failure_names_its_cells(
    builds: list[tuple[str, str]],
) -> None:
    cfg = load(REPO / "lab.toml")
    cells = _cells(cfg, "kselftest", ("x86_64", "arm64"))
    built, unmet = needs.resolve(cfg, cells)
    assert builds == [("source", "linux-source-6.1"), ("arm64", NEED), ("x86_64", NEED)]
    assert set(built) == {("x86_64", "", NEED)} and set(unmet) == {("arm64", "", NEED)}
    for c in cells:
        problem = needs.failure(c, unmet)
        assert (problem is None) == (c.arch.name == "x86_64")
    assert "aarch64-linux-gnu-gcc failed" in str(needs.failure(cells[-1], unmet))


def test_a_need_is_built_from_the_source_of_each_cells_variant(
    builds: list[tuple[str, str]],
) -> None:
    # [sources.NAME]: a selftest is compiled from the tree of the kernel it runs on.
    cfg = load(REPO / "lab.toml")
    new = dataclasses.replace(cfg.source, package="linux-source-6.12")
    old_v, new_v = cfg.variants[0], dataclasses.replace(cfg.variants[1], source="new")
    cfg = dataclasses.replace(cfg, sources={"new": new}, variants=(old_v, new_v))
    tc = testcase.find(cfg.testcases_dir, "kselftest", CLASSES)
    cells = [Cell(cfg.arch("x86_64"), v, tc) for v in (old_v, new_v, old_v)]
    built, unmet = needs.resolve(cfg, cells)
    assert unmet == {}
    assert builds == [
        ("source", "linux-source-6.1"), ("x86_64", NEED),
        ("source", "linux-source-6.12"), ("x86_64", NEED),
    ]  # fmt: skip
    old_bin, new_bin = (needs.binaries(c, built)[NEED] for c in cells[:2])
    assert (old_bin.parent.name, new_bin.parent.name) == ("linux-source-6.1", "linux-source-6.12")
    assert needs.binaries(cells[2], built)[NEED] == old_bin


def test_a_cell_without_needs_builds_nothing(builds: list[tuple[str, str]]) -> None:
    cfg = load(REPO / "lab.toml")
    assert needs.resolve(cfg, _cells(cfg, "api", ("x86_64",))) == ({}, {})
    assert builds == []


def test_an_unknown_need_is_the_test_case_error_and_builds_nothing(
    builds: list[tuple[str, str]], tmp_path: Path
) -> None:
    cfg = load(REPO / "lab.toml")
    (tmp_path / "api.py").write_text(
        (REPO / "testcases" / "api.py")
        .read_text()
        .replace("TESTCASE = {", "TESTCASE = {\n    'needs': ['fetch:evil'],", 1)
    )
    tc = testcase.load(tmp_path / "api.py", CLASSES)
    cell = Cell(cfg.arch("x86_64"), cfg.variants[0], tc)
    built, unmet = needs.resolve(cfg, [cell])
    problem = needs.failure(cell, unmet)
    assert built == {} and builds == [] and isinstance(problem, UserError)
    assert f"{tmp_path}/api.py: unknown need 'fetch:evil'" in str(problem)


def test_preparing_a_cell_reads_the_built_binaries_and_builds_nothing(
    builds: list[tuple[str, str]], tmp_path: Path
) -> None:
    cfg = load(REPO / "lab.toml")
    (cell,) = _cells(cfg, "kselftest", ("x86_64",))[:1]
    binary = tmp_path / "memfd_secret"
    binary.write_bytes(b"\x7fELF built before")
    inputs = Inputs(_kernel(cfg, "x86_64", cell.variant.name), _base(cfg, "x86_64"),
                           {NEED: binary})  # fmt: skip
    job, files = prepare_cell(cfg, cell, inputs)
    assert files["lab/bin/memfd_secret"] == (b"\x7fELF built before", 0o755)
    assert builds == [] and job.record["testcase"] == "kselftest"


class _Guest:
    """A ready guest whose command sends the given exit record (or none)."""

    def __init__(self, exit_record: dict[str, Any] | None, how: str) -> None:
        self.exit, self.how, self.waited = exit_record, how, False
        self.results = self

    def first(self, kind: str) -> dict[str, Any] | None:
        return self.exit if kind == "exit" else None

    def follow(self, _until: Any, _timeout: float, _on: Any) -> str:
        return self.how

    def wait_exit(self) -> bool:
        self.waited = True
        return True


@pytest.mark.parametrize(
    ("record", "how", "want"),
    [
        ({"type": "exit", "status": 3}, "record", (3, "")),
        (None, "timeout", (None, "did not finish within 7s")),
        (None, "exited", (None, "the guest stopped before the command finished")),
        # A guest is untrusted: an exit record without an int status is no exit status.
        ({"type": "exit", "status": "0"}, "record", (None, "sent an exit record without a status")),
    ],
)
def test_boot_exec_follows_the_command_to_its_exit_status(
    record: dict[str, Any] | None, how: str, want: tuple[int | None, str]
) -> None:
    guest = _Guest(record, how)
    assert boot.exec_command(guest, 7.0, lambda _r: None) == want  # type: ignore[arg-type]
    assert guest.waited == (want[0] is not None)
