"""Run reports: a run directory -> report.html, summary.md, junit.xml; compare; merge.

Reading is at the edge (`load` reads run.json, the cell directories, console
excerpts and the kernels' rendered fragments once); everything after that is pure
string building over the loaded `Run`, so each renderer is testable on its own.

A run directory is the one lab.results describes. Two levels of "cell" appear:
  - a *run cell* is one execution: `run_cell_id` ("x86_64/C0/depletion#2"), one
    directory under cells/;
  - a *slot* is (arch, variant, test case) over its repetitions: one grid cell.
Counts (expected / unexpected / infra / not run) are per run cell; the grids,
cross-arch and unstable flags are per slot.

Everything read from a run directory is untrusted: console lines, evidence and
details come from the guest, and a results tree may have been copied from
anywhere. Each string is cleaned of control characters (they would corrupt XML
and drive terminals) and HTML-escaped where it lands in the report.

Modules: clean (untrusted values, limits), model (the loaded Run; `load`), html, markdown,
junit (one renderer each), render (the entry points), compare and merge (run against run).
"""

from __future__ import annotations

from lab.report.clean import MD_WIDTH, NOT_RUN_COLOUR, OTHER_COLOUR, REPORTS
from lab.report.compare import KINDS, Change, compare, format_compare
from lab.report.html import render_html
from lab.report.junit import render_junit
from lab.report.markdown import render_markdown
from lab.report.merge import merge
from lab.report.model import Evidence, Run, RunCell, Slot, load
from lab.report.observed import render_observed
from lab.report.render import render, text_summary

__all__ = [
    "KINDS",
    "MD_WIDTH",
    "NOT_RUN_COLOUR",
    "OTHER_COLOUR",
    "REPORTS",
    "Change",
    "Evidence",
    "Run",
    "RunCell",
    "Slot",
    "compare",
    "format_compare",
    "load",
    "merge",
    "render",
    "render_html",
    "render_junit",
    "render_markdown",
    "render_observed",
    "text_summary",
]
