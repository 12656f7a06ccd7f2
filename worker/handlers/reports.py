"""Report rendering: rows of scalars to CSV or JSON, with a summary. No Celery, no Redis."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

Scalar = str | int | float | bool | None
Row = dict[str, Scalar]
ReportFormat = Literal["csv", "json"]


@dataclass(frozen=True)
class Report:
    content: bytes
    content_type: str
    columns: list[str]
    rows: int
    numeric_totals: dict[str, float]


def columns_of(rows: Sequence[Row]) -> list[str]:
    """Union of the rows' keys in first-seen order, so sparse rows still line up."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def numeric_totals(rows: Sequence[Row], columns: Sequence[str]) -> dict[str, float]:
    """Sum of each column whose present values are all numbers (booleans excluded)."""
    totals: dict[str, float] = {}
    for column in columns:
        values = [row[column] for row in rows if row.get(column) is not None]
        if values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            totals[column] = float(sum(v for v in values if isinstance(v, int | float)))
    return totals


def render_report(report_id: str, rows: Sequence[Row], fmt: ReportFormat) -> Report:
    columns = columns_of(rows)
    totals = numeric_totals(rows, columns)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
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
