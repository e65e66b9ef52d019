"""The results tree of a run: its records (model), the directory on disk (store) and the
bounded reading of trees that come from elsewhere (bounded). Pure file work, no processes.

    results/<run-id>/
      run.json                 RunMeta
      cells/<cell-dir>/        one CellResult per finished cell (cell.json, evidence.json, logs)
      report.html, summary.md, junit.xml   rendered by lab.report
"""

from lab.results.bounded import (
    MAX_CELL_JSON,
    MAX_DEPTH,
    MAX_RUN_JSON,
    loads_bounded,
    open_inside,
    read_inside,
    regular_file,
)
from lab.results.model import STATUSES, CellResult, RunMeta, RunStatus, Unreadable, now
from lab.results.store import (
    LOCK,
    exit_code,
    finished_ids,
    host_info,
    load_run,
    locked_run,
    new_run,
    new_run_id,
    planned_ids,
    read_cells,
    resolve_run,
    scan_cells,
    summary_counts,
    write_run,
)

__all__ = [
    "LOCK",
    "MAX_CELL_JSON",
    "MAX_DEPTH",
    "MAX_RUN_JSON",
    "STATUSES",
    "CellResult",
    "RunMeta",
    "RunStatus",
    "Unreadable",
    "exit_code",
    "finished_ids",
    "host_info",
    "load_run",
    "loads_bounded",
    "locked_run",
    "new_run",
    "new_run_id",
    "now",
    "open_inside",
    "planned_ids",
    "read_cells",
    "read_inside",
    "regular_file",
    "resolve_run",
    "scan_cells",
    "summary_counts",
    "write_run",
]
