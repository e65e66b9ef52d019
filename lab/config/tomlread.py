"""Strict, typed access to a parsed TOML table.

Every lookup knows its key path, so an error names the file, the key and what
would be valid, in one line. `done()` rejects keys nobody asked for: a typo in
lab.toml is an error, not a silently ignored setting.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from lab.errors import UserError

Scalar = str | int | bool | float
_MISSING: Any = object()


def _type_name(value: object) -> str:
    return {
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


class Table:
    """A TOML table being read; remembers which keys were consumed."""

    def __init__(self, file: Path, path: str, data: dict[str, Any]) -> None:
        self.file = file
        self.path = path
        self._data = data
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def fail(self, message: str) -> NoReturn:
        raise UserError(f"{self.file}: {message}")

    def fail_key(self, name: str, message: str) -> NoReturn:
        self.fail(f"{self.key(name)}: {message}")

    def has(self, name: str) -> bool:
        return name in self._data

    def names(self) -> list[str]:
        return list(self._data)

    def _get(self, name: str, default: Any) -> Any:
        self._seen.add(name)
        if name in self._data:
            return self._data[name]
        if default is _MISSING:
            self.fail_key(name, "missing (required)")
        return default

    def string(self, name: str, default: Any = _MISSING, choices: Sequence[str] = ()) -> str:
        value = self._get(name, default)
        if not isinstance(value, str):
            self.fail_key(name, f"expected a string, got {_type_name(value)}")
        if choices and value not in choices:
            self.fail_key(name, f"{value!r} is not valid; choose one of: {', '.join(choices)}")
        return value

    def integer(
        self,
        name: str,
        default: Any = _MISSING,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail_key(name, f"expected an integer, got {_type_name(value)}")
        if minimum is not None and value < minimum:
            self.fail_key(name, f"{value} is too small; must be >= {minimum}")
        if maximum is not None and value > maximum:
            self.fail_key(name, f"{value} is too large; must be <= {maximum}")
        return value

    def boolean(self, name: str, default: Any = _MISSING) -> bool:
        value = self._get(name, default)
        if not isinstance(value, bool):
            self.fail_key(name, f"expected true or false, got {_type_name(value)}")
        return value

    def strings(self, name: str, default: Any = _MISSING) -> tuple[str, ...]:
        value = self._get(name, default)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail_key(name, "expected an array of strings")
        return tuple(value)

    def scalar_map(self, name: str) -> dict[str, Scalar]:
        """A table whose values are strings, integers, booleans or numbers."""
        value = self._get(name, {})
        if not isinstance(value, dict):
            self.fail_key(name, f"expected a table, got {_type_name(value)}")
        for k, v in value.items():
            if not isinstance(v, str | int | bool | float):
                self.fail_key(
                    f"{name}.{k}", f"expected a string, number or boolean, got {_type_name(v)}"
                )
        return dict(value)

    def table(self, name: str, required: bool = False) -> Table:
        value = self._get(name, _MISSING if required else {})
        if not isinstance(value, dict):
            self.fail_key(name, f"expected a table, got {_type_name(value)}")
        return Table(self.file, self.key(name), value)

    def subtables(self) -> Iterator[tuple[str, Table]]:
        """All remaining entries, each of which must be a table ([x.NAME] sections)."""
        for name in list(self._data):
            if name in self._seen:
                continue
            yield name, self.table(name)

    def table_list(self, name: str) -> list[Table]:
        """An array of tables ([[x]] sections or inline `x = [{...}]`)."""
        value = self._get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.fail_key(name, "expected an array of tables")
        return [Table(self.file, f"{self.key(name)}[{i}]", v) for i, v in enumerate(value)]

    def raw(self, name: str, default: Any = _MISSING) -> Any:
        return self._get(name, default)

    def done(self) -> None:
        unknown = [k for k in self._data if k not in self._seen]
        if unknown:
            valid = sorted(self._seen)
            where = f"[{self.path}]" if self.path else "top level"
            self.fail(
                f"{where}: unknown key {unknown[0]!r}; valid keys here: "
                + (", ".join(valid) if valid else "(none)")
            )
