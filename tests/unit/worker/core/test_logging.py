"""``worker.core.logging``: what a JSON log line holds, whatever the shortcuts taken to write it.

Celery's two lines per task ("received", "succeeded") go through this formatter, so it was made
cheaper (benchmarks/worker_cpu.py); these pin down that every line still says the same: the
record's fields, every ``extra`` in the order given, nothing private, exceptions, values JSON
cannot encode as their ``str``; and the same line whether or not the process skips the caller,
thread and process lookups (``skip_unlogged_record_fields``).
"""

from __future__ import annotations

import io
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import pytest

from worker.core.logging import JsonFormatter, LineStreamHandler, skip_unlogged_record_fields


def _record(msg: str, args: Any = None, **extra: Any) -> logging.LogRecord:
    logger = logging.getLogger("celery.app.trace")
    return logger.makeRecord(logger.name, logging.INFO, "trace.py", 1, msg, args, None, extra=extra)


def _line(record: logging.LogRecord) -> dict[str, Any]:
    entry: dict[str, Any] = json.loads(JsonFormatter().format(record))
    return entry


def test_a_record_without_extras_holds_its_four_fields() -> None:
    record = _record("worker %s ready.", ("w@h",))
    assert _line(record) == {
        "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
        "level": "INFO",
        "logger": "celery.app.trace",
        "message": "worker w@h ready.",
    }


def test_celerys_task_line_keeps_its_data_extra() -> None:
    context = {"id": "t1", "name": "noop", "runtime": 0.5, "return_value": "{'n': 1}"}
    line = _line(_record("Task %(name)s[%(id)s] succeeded", context, data=context))
    assert line["message"] == "Task noop[t1] succeeded"
    assert line["data"] == context


def test_several_extras_are_written_in_the_order_given_and_private_ones_skipped() -> None:
    text = JsonFormatter().format(_record("m", zeta=1, _hidden=2, alpha=3, mid=4))
    assert list(json.loads(text)) == ["ts", "level", "logger", "message", "zeta", "alpha", "mid"]


def test_a_lone_private_extra_is_skipped() -> None:
    assert "_hidden" not in _line(_record("m", _hidden=1))


def test_values_json_cannot_encode_are_written_as_their_str() -> None:
    when = datetime(2026, 12, 7, tzinfo=UTC)
    assert _line(_record("m", when=when, ids={1}))["when"] == str(when)


def test_an_exception_is_written_with_its_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, "f.py", 1, "failed", (), sys.exc_info()
        )
    assert "ValueError: boom" in _line(record)["exception"]


def test_skipping_the_unlogged_fields_changes_no_line(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, name, getattr(logging, name))  # restored afterwards
    context = {"id": "t1", "name": "noop"}
    before = _line(_record("Task %(name)s[%(id)s] received", context, data=context))
    skip_unlogged_record_fields()
    record = _record("Task %(name)s[%(id)s] received", context, data=context)
    assert record.threadName is None and record.process is None  # nothing looked up
    after = _line(record)
    assert {**after, "ts": None} == {**before, "ts": None}


@pytest.mark.parametrize("line_buffering", [True, False])
def test_each_line_reaches_the_file_when_written_whether_or_not_the_stream_is_line_buffered(
    line_buffering: bool,
) -> None:
    """The handler skips its own flush only where the stream flushes at each newline itself."""
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", line_buffering=line_buffering)
    handler = LineStreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.handle(_record("task %s succeeded", ("t1",)))
    assert json.loads(raw.getvalue())["message"] == "task t1 succeeded"
