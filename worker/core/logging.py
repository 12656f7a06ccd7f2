"""Structured JSON logs, one object per line, for API and worker alike."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from worker.core.tracing.setup import current_trace_ids

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is logged too.
# uvicorn's ``color_message`` duplicates the message with terminal escapes.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


# One encoder for every record: ``json.dumps(..., default=str)`` builds a new one per call.
_ENCODER = json.JSONEncoder(default=str)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = record.__dict__
        # The extras found by one set difference in C, not a test per attribute: most records
        # have none or one (Celery's task lines carry ``data``); several keep their order.
        extras = fields.keys() - _STANDARD
        if len(extras) == 1:
            (key,) = extras
            if not key.startswith("_"):
                entry[key] = fields[key]
        elif extras:
            for key, value in fields.items():
                if key in extras and not key.startswith("_"):
                    entry[key] = value
        ids = current_trace_ids()
        if ids:
            entry["trace_id"], entry["span_id"] = ids
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _ENCODER.encode(entry)


class LineStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """``StreamHandler`` minus its second lock and flush per record when the stream flushes at
    every newline by itself (``sys.stderr`` is line-buffered since Python 3.9): each record is
    one line, so it has reached the file once ``write`` returns, as before."""

    def flush(self) -> None:
        if not getattr(self.stream, "line_buffering", False):
            super().flush()


def configure_logging(level: str) -> None:
    handler = LineStreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def skip_unlogged_record_fields() -> None:
    """Stop every record from looking up what ``JsonFormatter`` never writes: the caller's file,
    line and function (a walk up the stack), thread, process and process name. The logging
    HOWTO's "Optimization" section names these switches. For a process whose only handler is
    ``configure_logging``'s (a worker: two records per task at INFO); process-wide, so not for
    one that shares its logging with other formatters."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
