from __future__ import annotations

import csv
import io
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.core.errors import PermanentError
from worker.handlers.reports import TOTAL_LABEL, Row, render_report

ROWS: list[Row] = [
    {"region": "north", "sales": 10, "ok": True},
    {"region": "south", "sales": 2.5, "note": "x"},
]

# Floats small enough that no sum of a few overflows, and that JSON can carry.
FLOATS = st.floats(min_value=-1e300, max_value=1e300, allow_nan=False, allow_infinity=False)
INTS = st.integers(min_value=-(2**70), max_value=2**70)
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, st.text(max_size=8))
COLUMN = st.sampled_from(["a", "b", "c", "d"])
ROWS_STRATEGY = st.lists(st.dictionaries(COLUMN, SCALARS, max_size=4), max_size=12)


def csv_rows(content: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(content.decode())))


def test_csv_report_has_the_union_of_columns_in_first_seen_order() -> None:
    report = render_report("q3", ROWS, "csv")
    assert report.content_type == "text/csv"
    rows = csv_rows(report.content)
    assert list(rows[0]) == ["region", "sales", "ok", "note"]
    assert rows[1] == {"region": "south", "sales": "2.5", "ok": "", "note": "x"}


def test_numeric_columns_are_totalled_and_booleans_are_not() -> None:
    assert render_report("q3", ROWS, "csv").numeric_totals == {"sales": 12.5}


def test_csv_report_ends_with_a_totals_row() -> None:
    rows = csv_rows(render_report("q3", ROWS, "csv").content)
    assert len(rows) == len(ROWS) + 1
    assert rows[-1] == {"region": TOTAL_LABEL, "sales": "12.5", "ok": "", "note": ""}


def test_integer_columns_total_as_integers() -> None:
    rows: list[Row] = [{"units": 4, "price": 1.5}, {"units": 10, "price": 2.0}]
    report = render_report("ints", rows, "json")
    totals = json.loads(report.content)["totals"]
    assert totals == {"units": 14, "price": 3.5}
    assert isinstance(totals["units"], int) and isinstance(totals["price"], float)
    assert csv_rows(render_report("ints", rows, "csv").content)[-1]["units"] == "14"


def test_json_report_carries_rows_and_totals() -> None:
    document = json.loads(render_report("q3", ROWS, "json").content)
    assert document["report_id"] == "q3"
    assert document["rows"] == ROWS
    assert document["totals"] == {"sales": 12.5}


def test_empty_report_is_an_empty_csv() -> None:
    report = render_report("empty", [], "csv")
    assert (report.rows, report.content) == (0, b"\r\n")


@pytest.mark.parametrize("text", ["a\rb", "a\nb", "a\r\nb"], ids=["cr", "lf", "crlf"])
def test_a_cell_holding_a_line_break_stays_one_cell(text: str) -> None:
    rows = csv_rows(render_report("notes", [{"note": text, "n": 1}], "csv").content)
    assert rows == [{"note": text, "n": "1"}, {"note": TOTAL_LABEL, "n": "1"}]


def test_a_total_beyond_a_floats_range_is_a_permanent_error() -> None:
    with pytest.raises(PermanentError, match="'big' is not a finite number"):
        render_report("huge", [{"big": 1e308}, {"big": 1e308}], "json")


def expected_totals(rows: list[Row]) -> dict[str, int | float]:
    columns = {column for row in rows for column in row}
    totals: dict[str, int | float] = {}
    for column in columns:
        values = [row[column] for row in rows if row.get(column) is not None]
        if not values or any(isinstance(v, bool | str) for v in values):
            continue
        numbers = [v for v in values if isinstance(v, int | float)]
        ints = all(isinstance(v, int) for v in numbers)
        totals[column] = sum(numbers) if ints else math.fsum(numbers)
    return totals


@given(ROWS_STRATEGY)
def test_totals_are_exact_ints_for_int_columns_and_floats_otherwise(rows: list[Row]) -> None:
    totals = render_report("p", rows, "json").numeric_totals
    assert totals == expected_totals(rows)
    for column, total in totals.items():
        ints = all(isinstance(row.get(column), int | None) for row in rows)
        assert type(total) is (int if ints else float)


@given(ROWS_STRATEGY)
def test_both_formats_carry_the_same_totals(rows: list[Row]) -> None:
    csv_report = render_report("p", rows, "csv")
    document = json.loads(render_report("p", rows, "json").content)
    assert document["totals"] == csv_report.numeric_totals
    if not csv_report.columns:
        return  # no column, no CSV line at all
    lines = csv_rows(csv_report.content)
    if not csv_report.numeric_totals:
        assert len(lines) == len(rows)  # no totals row without a numeric column
        return
    assert len(lines) == len(rows) + 1
    last = lines[-1]
    for column, total in csv_report.numeric_totals.items():
        assert type(total)(last[column]) == total
    others = [c for c in csv_report.columns if c not in csv_report.numeric_totals]
    if others:
        assert last[others[0]] == TOTAL_LABEL
        assert all(last[c] == "" for c in others[1:])
