"""Jinja rendering with StrictUndefined, in Jinja's sandbox, and one-line errors.

An undefined variable in a config template is a user error that must name the
template, the line and the variables that were available, never a traceback.
lab.toml and its templates are trusted configuration (docs/lab-toml.md), yet they
render in a SandboxedEnvironment: a template computes text, it has no business
reaching Python internals (`cycler.__init__.__globals__.os`), and the sandbox
also bounds `range()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.exceptions
import jinja2.sandbox

from lab.errors import UserError


@lru_cache(maxsize=8)
def _environment(directory: str) -> jinja2.Environment:
    return jinja2.sandbox.SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(directory),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def _describe(context: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in sorted(context.items())) or "(none)"


def _problem(exc: Exception, directory: Path) -> str:
    """One line for any failure while rendering; a template is code and can raise anything."""
    if isinstance(exc, jinja2.TemplateNotFound):
        return f"template not found: {exc.name!r} (looked in {directory})"
    if isinstance(exc, jinja2.exceptions.SecurityError):
        return f"unsafe template operation refused (templates render in a sandbox): {exc}"
    if isinstance(exc, RecursionError):
        return "template recursion too deep"
    text = " ".join(str(exc).split())[:300]
    return f"template error: {type(exc).__name__}: {text}"


def render_file(directory: Path, name: str, context: Mapping[str, Any]) -> str:
    """Render template `name` found in `directory` (and only there)."""
    path = directory / name
    try:
        inside = path.resolve().is_relative_to(directory.resolve())
    except (OSError, RuntimeError, ValueError):
        inside = False
    if not inside or not path.is_file():
        raise UserError(f"{path}: config template not found (config templates live in {directory})")
    try:
        return _environment(str(directory)).get_template(name).render(**context)
    except jinja2.UndefinedError as exc:
        line = _error_line(exc, name)
        raise UserError(
            f"{path}{line}: {exc.message}; variables available: {_describe(context)}"
        ) from None
    except jinja2.TemplateSyntaxError as exc:
        raise UserError(f"{path}:{exc.lineno}: template syntax error: {exc.message}") from None
    except Exception as exc:
        raise UserError(f"{path}{_error_line(exc, name)}: {_problem(exc, directory)}") from None


def render_string(source: str, context: Mapping[str, Any], where: str, directory: Path) -> str:
    """Render a short template taken from lab.toml; `where` names its key.

    `{% include %}` looks in `directory`, lab.toml's own, never the process's CWD.
    """
    try:
        env = _environment(str(directory))
        return env.from_string(source).render(**context)
    except jinja2.UndefinedError as exc:
        raise UserError(
            f"{where}: {exc.message}; variables available: {_describe(context)}"
        ) from None
    except jinja2.TemplateSyntaxError as exc:
        raise UserError(f"{where}: template syntax error: {exc.message}") from None
    except Exception as exc:
        raise UserError(f"{where}: {_problem(exc, directory)}") from None


def _error_line(exc: BaseException, name: str) -> str:
    """Find the template line of an error from the traceback Jinja rewrites."""
    tb = exc.__traceback__
    lineno = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(name):
            lineno = tb.tb_lineno
        tb = tb.tb_next
    return f":{lineno}" if lineno else ""
