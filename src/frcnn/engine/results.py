"""``results.csv``: one row per evaluation during training, and which way its columns improve.

The columns (docs/train.md): ``iter``, ``epoch``, ``elapsed_s`` (seconds of training), ``lr``,
the mean training losses since the previous row, the validation losses, then the headline
metrics. A value that is missing or NaN is an empty cell.
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..atomic import write_text_atomic
from ..config import METRIC_COLUMNS, TRAIN_LOSSES, VALIDATION_LOSSES

RESULTS_COLUMNS = ("iter", "epoch", "elapsed_s", "lr", *TRAIN_LOSSES, *VALIDATION_LOSSES, *METRIC_COLUMNS)


def lower_is_better(column: str) -> bool:
    """True for the validation losses, whose smaller values are better."""
    return column in VALIDATION_LOSSES


def improves(value: float, best: float | None, column: str) -> bool:
    """Whether ``value`` of ``column`` is strictly better than ``best`` (None: nothing yet); a
    NaN never improves."""
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value < best if lower_is_better(column) else value > best


def _cell(value: float | int | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def format_rows(rows: Sequence[Mapping[str, float]], columns: Sequence[str]) -> str:
    """The CSV text of ``rows`` under a header of ``columns``."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(column)) for column in columns])
    return text.getvalue()


def write_results(path: str | Path, rows: Sequence[Mapping[str, float]],
                  columns: Sequence[str] = RESULTS_COLUMNS) -> Path:
    """Write the table atomically."""
    return write_text_atomic(path, format_rows(rows, columns))


def read_results(path: str | Path) -> list[dict[str, float]]:
    """The rows of a results.csv, every cell a float (``iter`` an int; an empty cell NaN)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{key: (int(value) if key == "iter" else float(value) if value else math.nan)
             for key, value in row.items()} for row in rows]
