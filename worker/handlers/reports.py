"""Report rendering: rows of scalars to CSV or JSON, with a summary. No Celery, no Redis."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TypeGuard

from worker.core.errors import PermanentError

Scalar = str | int | float | bool | None
Row = dict[str, Scalar]
ReportFormat = Literal["csv", "json"]
# The CSV's last row holds the totals; this word labels it, in the first column not totalled.
TOTAL_LABEL = "total"


@dataclass(frozen=True)
class Report:
    content: bytes
    content_type: str
    columns: list[str]
    rows: int
    numeric_totals: dict[str, int | float]


def columns_of(rows: Sequence[Row]) -> list[str]:
    """Union of the rows' keys in first-seen order, so sparse rows still line up."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def _is_number(value: Scalar) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def numeric_totals(rows: Sequence[Row], columns: Sequence[str]) -> dict[str, int | float]:
    """Sum of each column whose present values are all numbers (booleans are not): an int
    when every value is one, else a float (``math.fsum``: no rounding error piles up)."""
    totals: dict[str, int | float] = {}
    for column in columns:
        values = [row[column] for row in rows if row.get(column) is not None]
        numbers = [v for v in values if _is_number(v)]
        if not values or len(numbers) < len(values):
            continue
        if all(isinstance(v, int) for v in numbers):
            totals[column] = sum(int(v) for v in numbers)
            continue
        try:
            total = math.fsum(numbers)
        except OverflowError:
            total = math.inf
        if not math.isfinite(total):
            raise PermanentError(f"the total of column {column!r} is not a finite number")
        totals[column] = total
    return totals


def totals_row(columns: Sequence[str], totals: dict[str, int | float]) -> Row:
    """The CSV's closing row: each total under its column, ``total`` in the first other one."""
    row: Row = dict(totals)
    label = next((column for column in columns if column not in totals), None)
    if label is not None:
        row[label] = TOTAL_LABEL
    return row


def render_report(report_id: str, rows: Sequence[Row], fmt: ReportFormat) -> Report:
    columns = columns_of(rows)
    totals = numeric_totals(rows, columns)
    if fmt == "csv":
        buffer = io.StringIO()
        # RFC 4180 line ends: the writer then quotes any cell holding a \r or a \n (with "\n" as
        # the terminator it left a lone \r unquoted, which readers take for a line end).
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(rows)
        if totals:
            writer.writerow(totals_row(columns, totals))
        return Report(buffer.getvalue().encode(), "text/csv", columns, len(rows), totals)
    document = {
        "report_id": report_id,
        "generated_at": datetime.now(UTC).isoformat(),
        "columns": columns,
        "rows": list(rows),
        "totals": totals,
    }
    content = json.dumps(document, indent=2).encode()
    return Report(content, "application/json", columns, len(rows), totals)
