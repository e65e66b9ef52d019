"""Jinja rendering with StrictUndefined and one-line errors.

An undefined variable in a config template is a user error that must name the
template, the line and the variables that were available, never a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from lab.errors import LabError


@lru_cache(maxsize=8)
def _environment(directory: str) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def _describe(context: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in sorted(context.items())) or "(none)"


def render_file(directory: Path, name: str, context: Mapping[str, Any]) -> str:
    """Render template `name` found in `directory`."""
    path = directory / name
    if not path.is_file():
        raise LabError(f"{path}: config template not found")
    try:
        return _environment(str(directory)).get_template(name).render(**context)
    except jinja2.UndefinedError as exc:
        line = _error_line(exc, name)
        raise LabError(
            f"{path}{line}: {exc.message}; variables available: {_describe(context)}"
        ) from None
    except jinja2.TemplateSyntaxError as exc:
        raise LabError(f"{path}:{exc.lineno}: template syntax error: {exc.message}") from None


def render_string(source: str, context: Mapping[str, Any], where: str) -> str:
    """Render a short template taken from lab.toml; `where` names its key."""
    try:
        env = _environment(".")
        return env.from_string(source).render(**context)
    except jinja2.UndefinedError as exc:
        raise LabError(
            f"{where}: {exc.message}; variables available: {_describe(context)}"
        ) from None
    except jinja2.TemplateSyntaxError as exc:
        raise LabError(f"{where}: template syntax error: {exc.message}") from None


def _error_line(exc: BaseException, name: str) -> str:
    """Find the template line of an error from the traceback Jinja rewrites."""
    tb = exc.__traceback__
    lineno = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(name):
            lineno = tb.tb_lineno
        tb = tb.tb_next
    return f":{lineno}" if lineno else ""
