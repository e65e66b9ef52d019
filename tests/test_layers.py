"""The layering of lab/ by stage, read from the source (AST; no lab module is imported).

docs/architecture.md draws what this enforces. Every `import` counts, lazy ones inside functions
and `if TYPE_CHECKING:` ones included: a type-only import is still a dependency, and type-only
imports are what once made the import graph 13 floors deep.
"""

from __future__ import annotations

import ast
import graphlib
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAB = REPO / "lab"

# Imported by anyone; they import no stage.
FOUNDATION = {"lab", "errors", "outcome", "cache", "proc", "progress"}

# stage -> the stages it may import (FOUNDATION is always allowed). A stage is a subpackage of
# lab/ or one of the flat plumbing modules (prereqs: the host prerequisite table; doctor: the
# `lab doctor` checks). `hosts` appears only under `cli`: nothing else drives lab hosts.
ALLOWED: dict[str, set[str]] = {
    "config": set(),
    "classify": set(),
    # provenance: the lab's git commit, file digests, QEMU's version (asks git and QEMU).
    "provenance": set(),
    # ktap: a selftest's KTAP/TAP output read into per-subtest results (pure).
    "ktap": set(),
    "results": set(),
    "prereqs": {"config"},
    "image": {"config", "prereqs"},
    "build": {"config", "image", "prereqs"},
    "doctor": {"config", "image", "prereqs"},
    "vm": {"config", "image", "build", "prereqs"},
    "report": {"results", "classify"},
    # run -> report: a matrix run ends by rendering its reports (also when interrupted).
    "run": {"config", "classify", "results", "image", "build", "vm", "prereqs", "report",
            "provenance", "ktap"},
    # hosts -> vm: a host reports its own accelerator choice (vm.accel). A host's kernel and
    # base image reach it as the run stage's Inputs, so hosts needs neither build nor image.
    "hosts": {"config", "results", "vm", "run"},
    # export: cells as LAVA jobs (run's prepared cells, vm's QEMU arguments) and back.
    "export": {"config", "classify", "results", "image", "build", "vm", "run"},
    "cli": {
        "config", "classify", "results", "prereqs", "image", "build", "doctor", "vm",
        "report", "run", "hosts", "export", "provenance",
    },
    "__main__": {"cli"},
}  # fmt: skip

# Modules that plan or classify: nothing in their import closure may start a process.
PURE = [
    "lab.config",
    "lab.config.failures",
    "lab.config.hosts",
    "lab.config.templates",
    "lab.config.tomlread",
    "lab.config.variants",
    "lab.classify",
    "lab.classify.signatures",
    "lab.run.cell",
    "lab.run.expect",
    "lab.run.matrix",
    "lab.run.selection",
    "lab.run.testcase",
    "lab.export.lava",
    "lab.export.lavalog",
    "lab.export.kcidb",
    "lab.ktap",
]
SPAWNERS = {"subprocess", "pexpect", "fabric", "paramiko", "invoke", "multiprocessing", "lab.proc"}
SSH_LIBS = {"fabric", "paramiko", "invoke"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(LAB.rglob("*.py")) if "__pycache__" not in p.parts}


MODULES = modules()


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in the file; `from lab.x import y` yields lab.x.y when
    y is a module, else lab.x."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                yield node.lineno, sub if sub in MODULES else node.module


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "lab"


def lab_edges() -> Iterator[tuple[str, int, str]]:
    for name, path in MODULES.items():
        for line, target in imports(path):
            if target == "lab" or target.startswith("lab."):
                yield name, line, target


def where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(REPO)}:{line}"


def test_the_stage_table_is_acyclic_and_names_every_stage() -> None:
    graph = {s: deps - {s} for s, deps in ALLOWED.items()}
    tuple(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError on a cycle
    stages = {stage(m) for m in MODULES} - FOUNDATION - {"guest"}
    assert stages <= set(ALLOWED), f"stages missing from ALLOWED: {stages - set(ALLOWED)}"
    for s, deps in ALLOWED.items():
        assert deps <= set(ALLOWED), f"{s} names unknown stages {deps - set(ALLOWED)}"


def test_each_stage_imports_only_the_stages_below_it() -> None:
    bad = []
    for src, line, target in lab_edges():
        a, b = stage(src), stage(target)
        if a == b or b in FOUNDATION or a == "guest":
            continue
        if a in FOUNDATION:
            bad.append(f"{where(src, line)} imports {target} (foundation imports no stage)")
        elif b not in ALLOWED.get(a, set()):
            allowed = ", ".join(sorted(ALLOWED.get(a, set()))) or "foundation only"
            bad.append(
                f"{where(src, line)} imports {target} ({a} -> {b} not allowed; {a} may import: "
                f"{allowed})"
            )
    assert not bad, "\n".join(bad)


def test_only_the_cli_imports_hosts() -> None:
    bad = [
        f"{where(src, line)} imports {target}"
        for src, line, target in lab_edges()
        if stage(target) == "hosts" and stage(src) not in {"hosts", "cli"}
    ]
    assert not bad, "\n".join(bad)


def test_one_cli_module_opens_lab_hosts_and_nothing_names_their_worker() -> None:
    # SSH is a plug-in: lab/cli/hosts.py opens the hosts' workers and hands them to the run
    # stage as `Worker`s; nobody else tells a lab host's worker from a local one (the CLI
    # once tested isinstance(w, RemoteWorker) to read its cell count).
    importers = {src for src, _, target in lab_edges() if stage(target) == "hosts"}
    assert importers - {m for m in MODULES if stage(m) == "hosts"} == {"lab.cli.hosts"}
    bad = [
        f"{where(name, node.lineno)} names RemoteWorker"
        for name, path in MODULES.items()
        if stage(name) != "hosts"
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if (isinstance(node, ast.Name) and node.id == "RemoteWorker")
        or (isinstance(node, ast.Attribute) and node.attr == "RemoteWorker")
    ]
    assert not bad, "\n".join(bad)


def test_no_stage_reaches_into_another_stages_private_names() -> None:
    # `from lab.x import _name` or `mod._name` across stages couples a caller to a helper
    # its stage may change at will (how cli once reached runner._infra_cell).
    bad = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if not (node.module == "lab" or node.module.startswith("lab.")):
                    continue
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    if full in MODULES:
                        aliases[alias.asname or alias.name] = full
                    elif _private(alias.name) and stage(node.module) != stage(name):
                        bad.append(f"{where(name, node.lineno)} imports {full}")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and _private(node.attr)
                and stage(aliases[node.value.id]) != stage(name)
            ):
                bad.append(f"{where(name, node.lineno)} uses {aliases[node.value.id]}.{node.attr}")
    assert not bad, "\n".join(bad)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def closure(start: str) -> dict[str, str]:
    """Every module `import start` runs (parent packages included) -> the module that
    brought it in, over the AST graph; third-party top-level names included."""
    seen: dict[str, str] = {start: start}
    todo = [start]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        found = [(0, ".".join(parts[:i])) for i in range(1, len(parts))]
        if name in MODULES:
            found += list(imports(MODULES[name]))
        for _, target in found:
            if not (target == "lab" or target.startswith("lab.")):
                target = target.split(".")[0]
            if target not in seen:
                seen[target] = name
                if target in MODULES:
                    todo.append(target)
    return seen


def chain(seen: dict[str, str], end: str) -> str:
    path = [end]
    while seen[path[-1]] != path[-1]:
        path.append(seen[path[-1]])
    return " <- ".join(path)


def test_planners_and_classifiers_start_no_process() -> None:
    bad = []
    for name in PURE:
        assert name in MODULES, f"PURE names {name}, which is not a module"
        seen = closure(name)
        bad += [f"{name}: {chain(seen, s)}" for s in sorted(SPAWNERS & set(seen))]
    assert not bad, "\n".join(bad)


def test_the_host_side_entry_needs_no_ssh_library() -> None:
    # `python3 -m lab.hosts.remote` runs on a lab host that has python3 and QEMU, not fabric.
    seen = closure("lab.hosts.remote")
    assert not SSH_LIBS & set(seen), [chain(seen, s) for s in SSH_LIBS & set(seen)]
    assert not list(imports(LAB / "hosts" / "__init__.py"))


def test_guest_code_imports_nothing_from_lab() -> None:
    files = sorted((LAB / "guest").rglob("*.py")) + sorted((REPO / "testcases").rglob("*.py"))
    bad = [
        f"{p.relative_to(REPO)}:{line} imports {target}"
        for p in files
        for line, target in imports(p)
        if target == "lab" or target.startswith("lab.")
    ]
    assert files and not bad, "\n".join(bad)


def test_imports_are_read_from_every_form() -> None:
    # The checks above are only as good as imports(): lazy, aliased and from-imports all count.
    src = LAB / "vm" / "boot.py"
    found = {t for _, t in imports(src)}
    assert "lab.build" in found and "lab.image" in found, found
    assert sys.version_info >= (3, 11)
