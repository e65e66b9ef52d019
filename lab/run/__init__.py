"""run: test cases and expectations, cells, the matrix plan, the runner and its workers."""
