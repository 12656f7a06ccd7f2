"""The publish signals' handlers, for every process that sends tasks (API, worker, beat).

Apart from ``worker/signals.py`` so that a process that only publishes (the API) connects these
two without importing the worker's (its metrics server, queue statistics and pool hooks).
"""

from __future__ import annotations

import socket
import time
from functools import cache
from typing import Any

from celery.signals import after_task_publish, before_task_publish

from worker.core import metrics
from worker.core.names import ENQUEUED_AT_HEADER


def _stamp_enqueue_time(headers: dict[str, Any] | None = None, **_: Any) -> None:
    # Kept on retries: a retry's wait is measured from its ETA (worker/lifecycle.py).
    if headers is not None:
        headers.setdefault(ENQUEUED_AT_HEADER, time.time())


def _count_sent(sender: str, routing_key: str = "", **_: Any) -> None:
    # The API publishes once per submit: its child is kept (``labelled``), as is the host.
    metrics.labelled(metrics.TASK_SENT, sender, _hostname(), routing_key).inc()


@cache
def _hostname() -> str:
    """This process's host, the ``hostname`` label of what it publishes."""
    return socket.gethostname()


def connect_publisher_signals() -> None:
    """The enqueue timestamp and the sent counter, connected once (``dispatch_uid``)."""
    before_task_publish.connect(
        _stamp_enqueue_time, weak=False, dispatch_uid="courier._stamp_enqueue_time"
    )
    after_task_publish.connect(_count_sent, weak=False, dispatch_uid="courier._count_sent")
