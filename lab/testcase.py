"""In-guest test cases as seen from the host: metadata read without running them.

A test case is `testcases/<name>.py` with a module-level literal `TESTCASE = {...}`
and a `run(t)` function that only the guest executes. The host parses the file with
`ast` and `literal_eval`s the dict, so loading metadata never imports or runs guest
code on the host.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import expect
from lab.errors import LabError

KEYS = {
    "name": "the file's stem",
    "purpose": "one line",
    "arches": "list of arch names, or ['*']",
    "timeout": "seconds the test case may run in the guest",
    "destructive": "true if it leaves the guest unusable (always a fresh boot)",
    "cmdline": "kernel command line additions",
    "memory_mib": "guest memory it needs (0: the arch default)",
    "expect": "rules 'condition -> outcome' (see lab/expect.py)",
    "needs": "host-built artefacts, e.g. ['kselftest:vm/memfd_secret']",
}


@dataclass(frozen=True)
class TestCase:
    name: str
    path: Path
    purpose: str
    arches: tuple[str, ...]
    timeout: float
    destructive: bool
    cmdline: str
    memory_mib: int
    rules: tuple[expect.Rule, ...]
    needs: tuple[str, ...]

    def runs_on(self, arch: str) -> bool:
        return "*" in self.arches or arch in self.arches


def _literal(path: Path) -> dict[str, Any]:
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as exc:
        raise LabError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "TESTCASE"
        ):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                raise LabError(
                    f"{path}:{node.lineno}: TESTCASE must be a literal dict "
                    "(strings, numbers, booleans, lists)"
                ) from None
            if not isinstance(value, dict):
                raise LabError(f"{path}:{node.lineno}: TESTCASE must be a dict")
            return value
    raise LabError(f"{path}: no module-level TESTCASE = {{...}} literal")


def load(path: Path, classes: Sequence[str] = ()) -> TestCase:
    meta = _literal(path)
    where = f"{path}: TESTCASE"
    unknown = sorted(set(meta) - set(KEYS))
    if unknown:
        raise LabError(f"{where}: unknown key {unknown[0]!r}; valid: {', '.join(KEYS)}")

    def get(key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        value = meta.get(key, default)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
            raise LabError(f"{where}[{key!r}]: expected {KEYS[key]}, got {value!r}")
        return value

    name = get("name", str, path.stem)
    if name != path.stem:
        raise LabError(f"{where}['name']: {name!r} must equal the file name {path.stem!r}")
    arches = get("arches", list, ["*"])
    rules_text = get("expect", list, ["* -> pass"])
    needs = get("needs", list, [])
    for key, items in (("arches", arches), ("expect", rules_text), ("needs", needs)):
        if not all(isinstance(x, str) for x in items):
            raise LabError(f"{where}[{key!r}]: expected a list of strings")
    timeout = float(get("timeout", (int, float), 60))
    if timeout <= 0:
        raise LabError(f"{where}['timeout']: must be positive")
    return TestCase(
        name=name,
        path=path,
        purpose=get("purpose", str, ""),
        arches=tuple(arches),
        timeout=timeout,
        destructive=get("destructive", bool, False),
        cmdline=get("cmdline", str, ""),
        memory_mib=get("memory_mib", int, 0),
        rules=tuple(expect.parse_rule(r, f"{where}['expect']", classes) for r in rules_text),
        needs=tuple(needs),
    )


def discover(directory: Path, classes: Sequence[str] = ()) -> list[TestCase]:
    if not directory.is_dir():
        raise LabError(f"test case directory {directory} not found (lab.toml [lab] testcases_dir)")
    return [load(p, classes) for p in sorted(directory.glob("*.py")) if not p.name.startswith("_")]


def find(directory: Path, name: str, classes: Sequence[str] = ()) -> TestCase:
    path = directory / f"{name}.py"
    if not path.is_file():
        names = [p.stem for p in sorted(directory.glob("*.py")) if not p.name.startswith("_")]
        raise LabError(f"unknown test case {name!r}; valid: {', '.join(names) or '(none)'}")
    return load(path, classes)
