"""run: cells. Pure: testcase, expect, cell, selection, matrix (the plan). Then needs (built
before scheduling), job (CellJob, prepare_cell), execute (one cell), workers, schedule, and
orchestrate (a whole matrix run)."""
