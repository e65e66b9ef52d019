"""In-guest test cases as seen from the host: metadata read without running them.

A test case is `testcases/<name>.py` with a module-level literal `TESTCASE = {...}`
and a `run(t)` function that only the guest executes. The host parses the file with
`ast` and `literal_eval`s the dict, so loading metadata never imports or runs guest
code on the host.
"""

from __future__ import annotations

import ast
import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.config import MAX_MEMORY_MIB, MAX_SECONDS, check_cmdline
from lab.errors import UserError
from lab.run import expect

# A test case is a few kilobytes of Python; the bound keeps a stray file from
# costing the host its memory (ast trees are ~10x the source).
MAX_FILE_BYTES = 1 << 20
_MUTATORS = {"update", "setdefault", "pop", "popitem", "clear", "__setitem__", "__delitem__"}

KEYS = {
    "name": "the file's stem",
    "purpose": "one line",
    "arches": "list of arch names, or ['*']",
    "timeout": "seconds the test case may run in the guest",
    "destructive": "true if it leaves the guest unusable (always a fresh boot)",
    "cmdline": "kernel command line additions",
    "memory_mib": "guest memory it needs (0: the arch default)",
    "expect": "rules 'condition -> outcome' (see lab/run/expect.py)",
    "needs": "host-built artefacts, e.g. ['kselftest:vm/memfd_secret']",
    "families": "variant families it applies to: list of names or globs, or ['*']",
    "params": "variant parameters it needs: {name: [values]} (all must hold)",
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
    # The variants it is about: a test case of one family (LKDTM crash types) means
    # nothing on a kernel of another, so `lab matrix` plans only the pairs that apply.
    families: tuple[str, ...] = ("*",)
    params: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def runs_on(self, arch: str) -> bool:
        return "*" in self.arches or arch in self.arches

    def applies_to(self, family: str, params: Mapping[str, object]) -> bool:
        """Does it apply to a variant of `family` with these parameters?"""
        if not any(fnmatch.fnmatchcase(family, f) for f in self.families):
            return False
        return all(_scalar(params.get(k)) in values for k, values in self.params)


def _scalar(value: object) -> str:
    """A parameter as TESTCASE['params'] spells it (TOML true is 'true', 1 is '1')."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _read(path: Path) -> str:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise UserError(f"{path}: larger than {MAX_FILE_BYTES >> 10} KiB; not a test case")
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path}: not UTF-8 text (byte {exc.start}); test cases are Python source"
        ) from None


def _changes(node: ast.AST) -> bool:
    """Does `node` bind or modify the name TESTCASE (`TESTCASE = `, `TESTCASE[k] = `, `.update`)?"""
    if isinstance(node, ast.Name):
        return node.id == "TESTCASE" and not isinstance(node.ctx, ast.Load)
    if isinstance(node, ast.Subscript | ast.Attribute):
        target = node.value
        return (
            isinstance(target, ast.Name)
            and target.id == "TESTCASE"
            and not isinstance(node.ctx, ast.Load)
        )
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        base = node.func.value
        return isinstance(base, ast.Name) and base.id == "TESTCASE" and node.func.attr in _MUTATORS
    return False


def _literal(path: Path) -> dict[str, Any]:
    text = _read(path)
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as exc:
        line = f":{exc.lineno}" if exc.lineno else ""
        raise UserError(f"{path}{line}: syntax error: {exc.msg}") from None
    except (MemoryError, RecursionError):
        raise UserError(f"{path}: too complex to parse (nesting too deep)") from None
    # The host reads the first binding, the guest's module ends up with the last: they
    # must be the same one, so TESTCASE is bound once and never changed.
    changes = [getattr(n, "lineno", 0) for n in ast.walk(tree) if _changes(n)]
    if len(changes) > 1:
        lines = ", ".join(str(n) for n in sorted(changes)[:5])
        raise UserError(
            f"{path}: TESTCASE is bound or changed more than once (lines {lines}); "
            "assign it once, as a literal dict"
        )
    for node in tree.body:
        value_node: ast.expr | None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value_node = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, value_node = node.target, node.value
        else:
            continue
        if not (isinstance(target, ast.Name) and target.id == "TESTCASE") or value_node is None:
            continue
        try:
            value = ast.literal_eval(value_node)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            # TypeError: an unhashable key or set member, e.g. {["k"]: 1}.
            raise UserError(
                f"{path}:{node.lineno}: TESTCASE must be a literal dict "
                "(strings, numbers, booleans, lists)"
            ) from None
        if not isinstance(value, dict):
            raise UserError(f"{path}:{node.lineno}: TESTCASE must be a dict")
        return value
    raise UserError(f"{path}: no module-level TESTCASE = {{...}} literal")


def load(path: Path, classes: Sequence[str] = ()) -> TestCase:
    meta = _literal(path)
    where = f"{path}: TESTCASE"
    unknown = sorted(set(meta) - set(KEYS))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; valid: {', '.join(KEYS)}")

    def get(key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        value = meta.get(key, default)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
            raise UserError(f"{where}[{key!r}]: expected {KEYS[key]}, got {value!r}")
        return value

    name = get("name", str, path.stem)
    if name != path.stem:
        raise UserError(f"{where}['name']: {name!r} must equal the file name {path.stem!r}")
    arches = get("arches", list, ["*"])
    rules_text = get("expect", list, ["* -> pass"])
    needs = get("needs", list, [])
    families = get("families", list, ["*"])
    params = get("params", dict, {})
    for k, v in params.items():
        if not isinstance(k, str) or not isinstance(v, list) or not v:
            raise UserError(
                f"{where}['params']: {k!r}: {v!r} is not valid; expected "
                "{'name': ['value', ...]} with at least one value"
            )
        if not all(isinstance(x, str | int | bool) for x in v):
            raise UserError(f"{where}['params'][{k!r}]: values must be strings or numbers")
    for key, items in (
        ("arches", arches),
        ("expect", rules_text),
        ("needs", needs),
        ("families", families),
    ):
        if not all(isinstance(x, str) for x in items):
            raise UserError(f"{where}[{key!r}]: expected a list of strings")
    timeout = float(get("timeout", (int, float), 60))
    if not math.isfinite(timeout) or timeout <= 0:
        raise UserError(f"{where}['timeout']: {timeout!r} must be a positive, finite number")
    if timeout > MAX_SECONDS:
        raise UserError(f"{where}['timeout']: {timeout:g} is too large; at most {MAX_SECONDS:g}")
    memory_mib = get("memory_mib", int, 0)
    if memory_mib != 0 and not 64 <= memory_mib <= MAX_MEMORY_MIB:
        raise UserError(
            f"{where}['memory_mib']: {memory_mib} is not valid; "
            f"0 (the arch default) or 64..{MAX_MEMORY_MIB}"
        )
    return TestCase(
        name=name,
        path=path,
        purpose=get("purpose", str, ""),
        arches=tuple(arches),
        timeout=timeout,
        destructive=get("destructive", bool, False),
        cmdline=check_cmdline(get("cmdline", str, ""), f"{where}['cmdline']"),
        memory_mib=memory_mib,
        rules=tuple(expect.parse_rule(r, f"{where}['expect']", classes) for r in rules_text),
        needs=tuple(needs),
        families=tuple(families) or ("*",),
        params=tuple((k, tuple(_scalar(x) for x in v)) for k, v in sorted(params.items())),
    )


def discover(directory: Path, classes: Sequence[str] = ()) -> list[TestCase]:
    if not directory.is_dir():
        raise UserError(f"test case directory {directory} not found (lab.toml [lab] testcases_dir)")
    return [load(p, classes) for p in sorted(directory.glob("*.py")) if not p.name.startswith("_")]


def find(directory: Path, name: str, classes: Sequence[str] = ()) -> TestCase:
    path = directory / f"{name}.py"
    if not path.is_file():
        names = [p.stem for p in sorted(directory.glob("*.py")) if not p.name.startswith("_")]
        raise UserError(f"unknown test case {name!r}; valid: {', '.join(names) or '(none)'}")
    return load(path, classes)
