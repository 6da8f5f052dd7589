"""CSV tables: read a file of named columns, and turn its columns into numeric features, class labels or targets.

No pandas: the csv module reads, numpy converts. Every error names the file, the line and the column."""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from federation.learning.datasets import DatasetError, DatasetNotFoundError

LOG = logging.getLogger(__name__)

DELIMITERS = (",", ";", "\t")
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_SHOWN = 8  # column names or classes listed in one error message


class TableError(DatasetError):
    """A CSV file that can't be read as a table: empty, ragged, no header, text where numbers belong..."""


class DataMismatchError(DatasetError):
    """A file that does not fit what the coordinator's model expects (a column, a class, a window)."""


@dataclass(frozen=True, eq=False)
class CsvTable:
    """A CSV file's header and its cells as text, one row per data line (blank lines skipped)."""

    path: Path
    columns: tuple[str, ...]
    cells: np.ndarray = field(repr=False)          # (rows, columns) of str
    line_numbers: np.ndarray = field(repr=False)   # the file line of each row, for error messages

    @property
    def num_rows(self) -> int:
        return len(self.cells)

    def column(self, name: str) -> np.ndarray:
        """The text cells of column `name`; DataMismatchError names the columns this file has."""
        return self.cells[:, self.index(name)]

    def index(self, name: str) -> int:
        try:
            return self.columns.index(name)
        except ValueError:
            raise DataMismatchError(
                f"{self.path} has no column {name!r}; its columns are {shown(self.columns)}") from None

    def select(self, rows: np.ndarray) -> "CsvTable":
        """The same table with only `rows` (indices, in the order given)."""
        return CsvTable(self.path, self.columns, self.cells[rows], self.line_numbers[rows])


def shown(names: Sequence[str]) -> str:
    """At most MAX_SHOWN names, quoted, for an error message."""
    head = ", ".join(repr(n) for n in names[:MAX_SHOWN])
    return head + (f" and {len(names) - MAX_SHOWN} more" if len(names) > MAX_SHOWN else "")


def read_csv_table(path: str | Path) -> CsvTable:
    """Read `path`: a header row of unique column names, then rows with as many fields (',' ';' or tab)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetNotFoundError(f"CSV file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise TableError(f"could not read CSV file {path} (UTF-8 text expected): {exc}") from None
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), "")
    if not first:
        raise TableError(f"CSV file {path} is empty: it needs a header row of column names, then rows of values")
    delimiter = max(DELIMITERS, key=first.count)
    reader = csv.reader(lines, delimiter=delimiter)
    header: list[str] | None = None
    rows: list[list[str]] = []
    numbers: list[int] = []
    try:
        for record in reader:
            if not any(cell.strip() for cell in record):
                continue  # a blank line
            if header is None:
                header = _header(path, record, reader.line_num)
                continue
            if len(record) != len(header):
                raise TableError(
                    f"{path}, line {reader.line_num}: {len(record)} fields, but the header has {len(header)} "
                    f"columns ({shown(header)}); every row needs one value per column (a ragged row)")
            rows.append([cell.strip() for cell in record])
            numbers.append(reader.line_num)
    except csv.Error as exc:
        raise TableError(f"{path}, line {reader.line_num}: not valid CSV: {exc}") from None
    assert header is not None
    if not rows:
        raise TableError(f"CSV file {path} has a header ({shown(header)}) but no rows of data")
    cells = np.array(rows, dtype=str).reshape(len(rows), len(header))
    LOG.info("read %d rows of %d columns from %s", len(rows), len(header), path)
    return CsvTable(path, tuple(header), cells, np.asarray(numbers, dtype=np.int64))


def _header(path: Path, record: list[str], line: int) -> list[str]:
    names = [cell.strip() for cell in record]
    if any(not name for name in names):
        raise TableError(f"{path}, line {line}: the header has an empty column name; name every column")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise TableError(f"{path}, line {line}: column names repeat ({shown(repeated)}); make them unique")
    numeric = [name for name in names if _is_float(name)]
    if len(numeric) == len(names):
        raise TableError(f"{path}, line {line}: the first row is all numbers ({shown(names)}); "
                         "the first row must name the columns")
    return names


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def numeric_columns(table: CsvTable, names: Sequence[str]) -> np.ndarray:
    """Columns `names`, in that order, as float32 (rows, len(names)); TableError names a non-number."""
    return np.stack([numeric_column(table, name) for name in names], axis=1) if names else \
        np.empty((table.num_rows, 0), np.float32)


def numeric_column(table: CsvTable, name: str) -> np.ndarray:
    """One column as finite float32 numbers; TableError names the first cell that is not one."""
    cells = table.column(name)
    try:
        values = cells.astype(np.float64)
    except ValueError:
        values = None
    if values is not None and np.isfinite(values).all() and (np.abs(values) <= FLOAT32_MAX).all():
        return values.astype(np.float32)
    for row, cell in enumerate(cells):
        number = _parse_float(cell)
        if number is None or not math.isfinite(number) or abs(number) > FLOAT32_MAX:
            what = "an empty cell" if not cell else f"{cell[:40]!r}"
            why = "not a number" if number is None else "not a finite number"
            raise TableError(
                f"{table.path}, line {int(table.line_numbers[row])}, column {name!r}: {what} is {why}; numeric "
                "columns need a number in every row (fill or drop the row), or leave this column out of the "
                "features")
    raise AssertionError("unreachable: astype failed but every cell parsed")  # pragma: no cover


def _parse_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def class_names_of(values: np.ndarray) -> tuple[str, ...]:
    """The distinct labels of a column, in order: numerically when every label is a number, else by text."""
    distinct = sorted({str(v) for v in values})
    if all(_is_float(v) for v in distinct):
        distinct.sort(key=float)
    return tuple(distinct)


def class_indices(table: CsvTable, name: str, class_names: Sequence[str]) -> np.ndarray:
    """Column `name`'s labels as int64 indices into `class_names` (the coordinator's); a label it does not
    know is a DataMismatchError naming it."""
    cells = table.column(name)
    index = {label: i for i, label in enumerate(class_names)}
    if all(_is_float(label) for label in class_names):  # "1" and "1.0" are the same class of a numeric label
        index.update({_number_text(label): i for i, label in enumerate(class_names)})
    labels = np.empty(len(cells), dtype=np.int64)
    for row, cell in enumerate(cells):
        found = index.get(cell)
        if found is None and _is_float(cell):
            found = index.get(_number_text(cell))
        if found is None:
            raise DataMismatchError(
                f"{table.path}, line {int(table.line_numbers[row])}, column {name!r}: label {cell[:40]!r} is not "
                f"one of the coordinator's {len(class_names)} classes ({shown(list(class_names))}); drop these "
                "rows or join a run that has this class")
        labels[row] = found
    return labels


def _number_text(text: str) -> str:
    number = float(text)
    return str(int(number)) if number.is_integer() else repr(number)


def feature_names(table: CsvTable, label: str, features: Sequence[str]) -> tuple[str, ...]:
    """The feature columns: `features` in the order given, or every column but the label, in file order."""
    if features:
        missing = [name for name in features if name not in table.columns]
        if missing:
            raise TableError(f"{table.path} has no column {shown(missing)} (named in [data] features); its columns "
                             f"are {shown(table.columns)}")
        if len(set(features)) != len(features):
            raise TableError(f"[data] features names a column twice: {shown(list(features))}")
        return tuple(features)
    chosen = tuple(name for name in table.columns if name != label)
    if not chosen:
        raise TableError(f"{table.path} has only the label column {label!r}: no features")
    return chosen


def standard_scaling(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-feature mean and std of `x` (rows, features) for standardizing; a constant feature gets std 1."""
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    mean = flat.mean(axis=0)
    std = flat.std(axis=0)
    std[~(std > 1e-12)] = 1.0
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def apply_scaling(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(x - mean) / std over the last axis, as float32; unchanged when no statistics are given."""
    if not mean:
        return x.astype(np.float32, copy=False)
    return ((x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)
