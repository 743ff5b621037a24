"""Columns of a CSV or Parquet file through pyarrow, one at a time, so a caller converting them into its own
arrays never holds the whole decoded file next to its result.

Parquet is opened memory-mapped and decoded column by column; a CSV (a text format: nothing to map) is parsed
once, only the columns asked for, and each column is handed over and dropped from the parsed table, freeing it. Empty
cells and the usual NA spellings (``NA``, ``NaN``, ``null``...) are nulls. Errors name the file and, for a
value, its column and row (rows count data rows from 1, the header not included).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from flatmtl.workers.problems.errors import DataNotFoundError, ProblemError

try:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
except ImportError:  # the tables extra: a base install lists the problem, and opening a table names the extra
    pa = pc = pacsv = pq = None

Format = Literal["auto", "csv", "parquet"]
FORMATS = ("auto", "csv", "parquet")
SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def file_format(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    suffixes = [s.lower() for s in path.suffixes]
    for suffix in reversed(suffixes):
        if suffix in SUFFIXES:
            return SUFFIXES[suffix]
    raise ProblemError(f"table: cannot tell the format of {path} from its name; set format to 'csv' or 'parquet'")


def located(path: Path, column: str, row: int, message: str) -> ProblemError:
    """An error about one cell: row is the 0-based data row, reported from 1."""
    return ProblemError(f"table: {path}: column {column!r}, row {row + 1}: {message}")


class ColumnFile:
    """One table file: its column names and row count at once (from the header or Parquet footer), its columns
    on demand with ``take``."""

    def __init__(self, path: Path | str, declared_format: str = "auto", *, role: str = "train") -> None:
        if pa is None:
            raise ProblemError("table: reading CSV or Parquet files needs pyarrow: pip install 'flatmtl[tables]'")
        self.path = Path(path).expanduser()
        self.role = role
        if not self.path.is_file():
            raise DataNotFoundError(self.path, f"the {role} table (a CSV or Parquet file)")
        self.format = file_format(self.path, declared_format)
        self._table: pa.Table | None = None
        try:
            if self.format == "parquet":
                self._parquet = pq.ParquetFile(self.path, memory_map=True)
                self.names = list(self._parquet.schema_arrow.names)
                self.num_rows = self._parquet.metadata.num_rows
            else:
                with pacsv.open_csv(self.path) as reader:
                    self.names = list(reader.schema.names)
                self.num_rows = -1
        except (pa.ArrowInvalid, OSError) as error:
            raise ProblemError(f"table: {self.path} is not a readable {self.format} file: {error}") from None
        if len(set(self.names)) != len(self.names):
            twice = sorted({n for n in self.names if self.names.count(n) > 1})
            raise ProblemError(f"table: {self.path} names column(s) {twice} more than once")

    def require(self, columns: Sequence[str], what: str) -> None:
        """Each of ``columns`` exists in this file; otherwise an error naming the missing ones and ``what`` asked."""
        missing = [c for c in columns if c not in self.names]
        if missing:
            raise ProblemError(
                f"table: {what} name column(s) {missing} that the {self.role} file {self.path} does not have; "
                f"its columns: {self.names}"
            )

    def load(self, columns: Sequence[str], categorical: Sequence[str] = ()) -> None:
        """Parse a CSV's ``columns``, the ``categorical`` ones dictionary-encoded as they are read (each distinct
        string stored once); Parquet decodes each column on ``take``."""
        if self.format != "csv":
            return
        self.require(columns, "the options")
        types = {column: pa.dictionary(pa.int32(), pa.string()) for column in categorical}
        convert = pacsv.ConvertOptions(include_columns=list(columns), strings_can_be_null=True, column_types=types)
        try:
            self._table = pacsv.read_csv(self.path, convert_options=convert)
        except pa.ArrowInvalid as error:
            raise ProblemError(f"table: {self.path} is not a readable CSV file: {error}") from None
        self.num_rows = self._table.num_rows

    def take(self, column: str) -> pa.ChunkedArray:
        """The column's values; a CSV column is dropped from the parsed table once taken."""
        if self.format == "parquet":
            return self._parquet.read(columns=[column], use_threads=True).column(0)
        if self._table is None or column not in self._table.column_names:
            raise ProblemError(f"table: column {column!r} of {self.path} was not loaded")
        values = self._table.column(column)
        self._table = self._table.drop_columns([column])
        return values

    def release(self) -> None:
        self._table = None


def as_float(values: pa.ChunkedArray, path: Path, column: str, needs: str) -> pa.ChunkedArray:
    """The column as float64 (nulls kept); a cell that is no number fails naming its row and ``needs``."""
    numeric = (pa.types.is_floating, pa.types.is_integer, pa.types.is_boolean, pa.types.is_null)
    if any(check(values.type) for check in numeric):
        return pc.cast(values, pa.float64())
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        try:
            return pc.cast(values, pa.float64())
        except pa.ArrowInvalid:
            for row, cell in enumerate(values.to_pylist()):
                if cell is None:
                    continue
                try:
                    float(cell)
                except ValueError:
                    raise located(path, column, row, f"{cell!r} is not a number; {needs}") from None
    raise ProblemError(f"table: {path}: column {column!r} holds {values.type}, not numbers; {needs}")
