"""The ``table`` problem: CSV or Parquet files, K tasks of four kinds, missing labels masked per task."""

from flatmtl.workers.problems.table.problem import TableProblem

__all__ = ["TableProblem"]
