from __future__ import annotations

import csv
import io
import json

from worker.handlers.reports import render_report

ROWS = [
    {"region": "north", "sales": 10, "ok": True},
    {"region": "south", "sales": 2.5, "note": "x"},
]


def test_csv_report_has_the_union_of_columns_in_first_seen_order() -> None:
    report = render_report("q3", ROWS, "csv")
    assert report.content_type == "text/csv"
    rows = list(csv.DictReader(io.StringIO(report.content.decode())))
    assert list(rows[0]) == ["region", "sales", "ok", "note"]
    assert rows[1] == {"region": "south", "sales": "2.5", "ok": "", "note": "x"}


def test_numeric_columns_are_totalled_and_booleans_are_not() -> None:
    assert render_report("q3", ROWS, "csv").numeric_totals == {"sales": 12.5}


def test_json_report_carries_rows_and_totals() -> None:
    document = json.loads(render_report("q3", ROWS, "json").content)
    assert document["report_id"] == "q3"
    assert document["rows"] == ROWS
    assert document["totals"] == {"sales": 12.5}


def test_empty_report_is_an_empty_csv() -> None:
    report = render_report("empty", [], "csv")
    assert (report.rows, report.content) == (0, b"\n")
