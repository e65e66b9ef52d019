"""Kconfig fragments and .config files: parse, merge, verify, explain.

Pure except `find_dependencies`, which reads Kconfig files of a source tree
(only when a requested symbol was dropped, to say why).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from lab.errors import UserError

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
# What Kconfig accepts as a value: tristate, decimal, hex, or a quoted string.
_VALUE = re.compile(r'^(?:[ymn]|-?[0-9]+|0[xX][0-9a-fA-F]+|"(?:[^"\\]|\\.)*")$')
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


@dataclass(frozen=True)
class Setting:
    symbol: str  # with the CONFIG_ prefix
    value: str  # y, m, n, a number or a quoted string; "n" for "is not set"
    source: str  # where it was requested: "file:line"

    def line(self) -> str:
        if self.value == "n":
            return f"# {self.symbol} is not set"
        return f"{self.symbol}={self.value}"


def parse_fragment(text: str, source: str) -> list[Setting]:
    """Parse a config fragment; anything but settings, comments and blanks is an error."""
    out = []
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if m := _SET.match(line):
            if not _VALUE.match(m[2]):
                raise UserError(
                    f"{source}:{no}: {m[1]}: {m[2]!r} is not a kconfig value "
                    '(y, m, n, a number, 0x-hex or a "quoted string"); '
                    "did a template join two lines?"
                )
            out.append(Setting(m[1], m[2], f"{source}:{no}"))
        elif m := _UNSET.match(line):
            out.append(Setting(m[1], "n", f"{source}:{no}"))
        elif line.startswith("# CONFIG_"):
            raise UserError(
                f"{source}:{no}: malformed line {line[:80]!r} "
                "(expected '# CONFIG_FOO is not set'; did a template join two lines?)"
            )
        elif line and not line.startswith("#"):
            raise UserError(
                f"{source}:{no}: not a kconfig line: {line!r} "
                "(expected CONFIG_FOO=value or '# CONFIG_FOO is not set')"
            )
    return out


def parse_config(text: str) -> dict[str, str]:
    """Symbol -> value of a .config; unset symbols map to "n"."""
    values = {}
    for line in text.splitlines():
        if m := _SET.match(line):
            values[m[1]] = m[2]
        elif m := _UNSET.match(line):
            values[m[1]] = "n"
    return values


def requested(settings: Iterable[Setting]) -> dict[str, Setting]:
    """The effective request of several fragments: the last setting of a symbol wins."""
    out: dict[str, Setting] = {}
    for s in settings:
        out.pop(s.symbol, None)
        out[s.symbol] = s
    return out


def merge(base: str, settings: Iterable[Setting]) -> str:
    """Overlay settings onto a base .config: replace in place, append new ones."""
    wanted = requested(settings)
    lines = []
    for line in base.splitlines():
        m = _SET.match(line) or _UNSET.match(line)
        if m and m[1] in wanted:
            continue
        lines.append(line)
    lines.append("# --- lab fragments ---")
    lines.extend(s.line() for s in wanted.values())
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Dropped:
    setting: Setting
    final: str  # the value in the final .config ("n" when absent)


def verify(wanted: Mapping[str, Setting], final: Mapping[str, str]) -> list[Dropped]:
    """Requested settings that olddefconfig did not keep."""
    dropped = []
    for symbol, setting in wanted.items():
        got = final.get(symbol, "n")
        if got != setting.value:
            dropped.append(Dropped(setting, got))
    return dropped


def diff(base: Mapping[str, str], final: Mapping[str, str]) -> list[str]:
    """Lines describing how `final` differs from `base`, sorted by symbol."""
    out = []
    for sym in sorted(set(base) | set(final)):
        a, b = base.get(sym, "n"), final.get(sym, "n")
        if a != b:
            out.append(f"{sym}: {a} -> {b}")
    return out


# --- explaining a dropped symbol -------------------------------------------------

_KEYWORDS = (
    "config",
    "menuconfig",
    "choice",
    "endchoice",
    "menu",
    "endmenu",
    "if",
    "endif",
    "source",
    "rsource",
    "osource",
    "comment",
    "mainmenu",
)
_TOKEN = re.compile(r'"[^"]*"|[A-Za-z0-9_]+')


@dataclass(frozen=True)
class Dependency:
    kind: str  # "depends on", "if", "menu", "choice", "def_bool", "prompt if"
    expr: str
    where: str  # file:line


def _conditions_of(text: str) -> tuple[str, str]:
    """Split 'bool "prompt" if EXPR' into (rest, EXPR)."""
    m = re.search(r"\sif\s+(.+)$", text)
    return (text[: m.start()], m[1]) if m else (text, "")


def find_dependencies(tree: Path, srcarch: str, symbol: str) -> list[Dependency]:
    """Collect the conditions under which SYMBOL (no CONFIG_ prefix) can be set.

    A small reader, not a Kconfig implementation: it knows entries, `if` blocks,
    `menu ... depends on` and choices, which covers the ways a fragment symbol
    usually gets dropped.
    """
    deps: list[Dependency] = []
    files = [p for p in tree.rglob("Kconfig*") if p.is_file()]
    files = [
        p
        for p in files
        if not (
            p.relative_to(tree).parts[0] == "arch"
            and len(p.relative_to(tree).parts) > 2
            and p.relative_to(tree).parts[1] != srcarch
        )
    ]
    for path in sorted(files):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if symbol not in text:
            continue
        deps.extend(_scan(text, str(path.relative_to(tree)), symbol))
    return deps


def _scan(text: str, name: str, symbol: str) -> list[Dependency]:
    stack: list[Dependency] = []  # enclosing if/menu/choice conditions
    pending_block: str | None = None  # "menu" or "choice" awaiting its depends on
    in_entry = False
    found: list[Dependency] = []
    help_indent: int | None = None  # inside help text deeper than this indentation
    for no, raw in enumerate(text.splitlines(), 1):
        indent = len(raw.expandtabs(8)) - len(raw.expandtabs(8).lstrip())
        if help_indent is not None:
            if not raw.strip() or indent > help_indent:
                continue
            help_indent = None
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line in ("help", "---help---"):
            help_indent = indent
            in_entry = False
            continue
        word = line.split()[0]
        where = f"{name}:{no}"
        if word in _KEYWORDS:
            in_entry = False
            pending_block = None
            rest = line[len(word) :].strip()
            if word == "if":
                stack.append(Dependency("if", rest, where))
            elif word in ("endif", "endmenu", "endchoice"):
                if stack:
                    stack.pop()
            elif word in ("menu", "choice"):
                stack.append(Dependency(word, "", where))
                pending_block = word
            elif word in ("config", "menuconfig") and rest == symbol:
                in_entry = True
                found.extend(d for d in stack if d.expr)
            continue
        if pending_block and word == "depends" and stack:
            top = stack[-1]
            expr = line.removeprefix("depends").strip().removeprefix("on").strip()
            stack[-1] = Dependency(
                top.kind, f"{top.expr} && {expr}" if top.expr else expr, top.where
            )
            continue
        if not in_entry:
            continue
        if word == "depends":
            found.append(Dependency("depends on", line.split("on", 1)[1].strip(), where))
        elif word in ("def_bool", "def_tristate"):
            found.append(Dependency(word, line[len(word) :].strip(), where))
        elif word in ("bool", "tristate", "int", "hex", "string", "prompt"):
            _, cond = _conditions_of(line)
            if cond:
                found.append(Dependency("prompt if", cond, where))
    return found


def explain(dep: Dependency, final: Mapping[str, str]) -> str:
    """'depends on A && !B [A=y, B=y] (mm/Kconfig:12)'."""
    values = []
    for tok in _TOKEN.findall(dep.expr):
        if tok.startswith('"') or tok.isdigit() or tok in ("y", "n", "m"):
            continue
        values.append(f"{tok}={final.get('CONFIG_' + tok, 'n')}")
    shown = f" [{', '.join(dict.fromkeys(values))}]" if values else ""
    return f"{dep.kind} {dep.expr}{shown} ({dep.where})"
