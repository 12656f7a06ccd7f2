"""Celery signal handlers: logging, metrics and tracing, for every process of a worker.

Where each signal fires matters under the prefork pool:
- main process: ``celeryd_init`` (before the pool forks), ``worker_init``, ``worker_ready``,
  ``worker_shutdown``, ``task_received``, ``task_revoked``, ``task_rejected``, ``task_unknown``,
  Courier's ``message_dead_lettered``;
- pool children: ``worker_process_init``/``_shutdown`` and ``task_prerun``/``postrun``/
  ``success``/``failure``/``retry``;
- any publisher (API, worker retrying, beat): ``before_task_publish``/``after_task_publish``,
  whose handlers are ``worker/core/publish_signals.py``'s (the API connects only those).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
from typing import Any

import redis
from celery import Celery, Task
from celery.bootsteps import RUN  # type: ignore[attr-defined]
from celery.signals import (
    celeryd_init,
    setup_logging,
    task_failure,
    task_postrun,
    task_prerun,
    task_received,
    task_rejected,
    task_retry,
    task_revoked,
    task_success,
    task_unknown,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from worker.celery_config import PRIORITY_STEPS
from worker.core import metrics
from worker.core.dead_letters import DeadLetter, message_dead_lettered
from worker.core.envelope import REASONS
from worker.core.logging import configure_logging, skip_unlogged_record_fields
from worker.core.metrics import UNKNOWN_TASK
from worker.core.multiproc import mark_process_dead, wipe_multiproc_dir
from worker.core.publish_signals import connect_publisher_signals
from worker.core.queue_stats import deregister_worker, register_worker
from worker.core.redis_client import create_redis
from worker.core.settings import get_settings
from worker.core.tracing.setup import flush_tracing, init_tracing
from worker.metrics_server import MetricsServer, worker_port_server

logger = logging.getLogger(__name__)
WORKER_SERVICE_NAME = "courier-worker"
_STARTED_AT = "courier_started_at"
_LABELS = "courier_metric_labels"  # the request attribute keeping its labels (name, host, queue)


class _MainProcess:
    """State of the worker's main process: metrics server and registry heartbeat."""

    server: MetricsServer | None = None
    stop = threading.Event()
    hostname = ""  # the host of the worker's node name: every metric's ``hostname`` label


# --- logging -----------------------------------------------------------------------------


def _setup_logging(**_: Any) -> None:
    # Connecting to setup_logging stops Celery from installing its own plain-text handlers.
    configure_logging(get_settings().log_level)
    skip_unlogged_record_fields()


# --- main process --------------------------------------------------------------------------


def _prepare_metrics_dir(**_: Any) -> None:
    wipe_multiproc_dir()


def _start_metrics_server(sender: Any, **_: Any) -> None:
    settings = get_settings()
    if not settings.worker_metrics_port:
        return
    _MainProcess.server = worker_port_server(settings, PRIORITY_STEPS)
    _MainProcess.server.start()
    logger.info("worker metrics server listening", extra={"port": _MainProcess.server.port})


def _heartbeat(hostname: str, queues: list[str], concurrency: int) -> None:
    settings = get_settings()
    client = create_redis(settings)
    interval = settings.worker_heartbeat_seconds
    while not _MainProcess.stop.is_set():
        try:
            register_worker(client, hostname, queues, concurrency, ttl=3 * interval)
        except redis.RedisError as exc:  # away, or refusing (a full Redis answers OOM)
            logger.warning("worker heartbeat failed", extra={"error": str(exc)})
        _MainProcess.stop.wait(interval)
    with contextlib.suppress(redis.RedisError):  # its entry expires by itself
        deregister_worker(client, hostname)
    client.close()


# Failures Courier itself raises or reports: their series exist before the first one, so the
# first burst of each is seen by increase() and rate(). Another exception's series starts at its
# first failure, as in celery-exporter: courier_task_failures_total, which has no exception
# label and exists from the start, is what the failure ratio counts.
KNOWN_FAILURES = (
    "InvalidPayload", "PermanentError", "TransientError", "TimeLimitExceeded",
    "SoftTimeLimitExceeded", "WorkerLostError", "DeadLettered", "MessageLost",
)  # fmt: skip


def _create_series(app: Celery, hostname: str, queues: list[str]) -> None:
    """Every per-task counter at 0 for each registered task, consumed queue and this worker, as
    celery-exporter does for what it sees: a counter born at its first increment hides that
    increment from increase() and rate(), so a task that always fails had no failure ratio."""
    names = sorted(name for name in app.tasks if not name.startswith("celery."))
    for queue in queues:
        for reason in REASONS:
            metrics.DEAD_LETTERS.labels(reason, queue)
        for name in names:
            for counter in (
                metrics.TASK_RECEIVED, metrics.TASK_STARTED, metrics.TASK_SUCCEEDED,
                metrics.TASK_RETRIED, metrics.TASK_REJECTED, metrics.TASK_REVOKED,
                metrics.TASK_FAILURES,
            ):  # fmt: skip
                counter.labels(name, hostname, queue)
            metrics.QUEUE_WAIT_UNMEASURED.labels(name, queue)
            for exception in KNOWN_FAILURES:
                metrics.TASK_FAILED.labels(name, hostname, queue, exception)


def _worker_ready(sender: Any, **_: Any) -> None:
    hostname: str = sender.hostname  # Celery's node name: the worker registry's key
    _MainProcess.hostname = host = metrics.host_label(hostname)
    metrics.WORKER_UP.labels(host).set(1)
    metrics.WORKER_TASKS_ACTIVE.labels(host).set(0)
    queues = sorted(sender.app.amqp.queues.consume_from)
    _create_series(sender.app, host, queues)
    # The pool's own count: solo and Courier's inline pool run one task whatever --concurrency
    # says, and the registry feeds celery_active_process_count.
    pool = getattr(sender.controller, "pool", None)
    processes = getattr(pool, "num_processes", None) or getattr(sender.controller, "concurrency", 1)
    concurrency = int(processes or 1)
    threading.Thread(
        target=_heartbeat, args=(hostname, queues, concurrency), daemon=True, name="heartbeat"
    ).start()
    if _MainProcess.server:
        blueprint = sender.controller.blueprint
        _MainProcess.server.running = lambda: blueprint.state == RUN
        # The sender is the consumer: its connection is None from a connection loss until
        # it is connected again (celery.worker.consumer: on_connection_error_after_connected).
        _MainProcess.server.consuming = lambda: sender.connection is not None
        _MainProcess.server.ready.set()
    if not sender.controller.pool_cls.__module__.endswith("prefork"):
        # solo, threads, gevent, eventlet: no children, this process executes the tasks.
        init_tracing(WORKER_SERVICE_NAME)


def _worker_shutdown(**_: Any) -> None:
    _MainProcess.stop.set()
    if _MainProcess.hostname:
        metrics.WORKER_UP.labels(_MainProcess.hostname).set(0)
    flush_tracing()
    # Sent once the pool has stopped; the process exits next. The interpreter's last garbage
    # collection walked every object the worker holds, most of an idle worker's stop (0.24-0.28 s
    # of CPU of 0.27 in the inline pool); frozen, they are left to the exit.
    gc.freeze()


def _request_labels(request: Any, task: Any = None) -> tuple[str, str, str]:
    """Labels of a worker ``Request`` (``task_received``) or of the task ``Context`` Celery
    passes to ``task_revoked``, whose task name is its sender's (a Context has no ``name``)."""
    name = getattr(task, "name", None) or getattr(request, "name", None)
    name = name or getattr(request, "task", None) or UNKNOWN_TASK
    hostname = getattr(request, "hostname", None)
    host = metrics.host_label(str(hostname)) if hostname else _MainProcess.hostname
    delivery = getattr(request, "delivery_info", None) or {}
    return str(name), host, _queue_label(delivery.get("routing_key"))


def _count_received(request: Any, **_: Any) -> None:
    metrics.labelled(metrics.TASK_RECEIVED, *_request_labels(request)).inc()


def _count_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    task = sender if isinstance(sender, Task) else None
    metrics.TASK_REVOKED.labels(*_request_labels(request, task)).inc()


def _count_rejected(sender: Any = None, message: Any = None, **_: Any) -> None:
    """A message the consumer rejected (no task name, invalid) or whose task is not registered
    (``task_unknown``). Its headers and routing key are whatever the producer wrote: the labels
    keep only registered task names and configured queues, so no producer can add series."""
    headers = getattr(message, "headers", None) or {}
    delivery = getattr(message, "delivery_info", None) or {}
    app = getattr(sender, "app", None)
    tasks = app.tasks if app is not None else {}
    queues = app.amqp.queues if app is not None else {}
    name, queue = str(headers.get("task", "")), str(delivery.get("routing_key", ""))
    metrics.TASK_REJECTED.labels(
        name if name in tasks else UNKNOWN_TASK,
        metrics.host_label(str(getattr(sender, "hostname", None) or _MainProcess.hostname)),
        metrics.queue_label(queue, queues),
    ).inc()


def _count_dead_lettered(
    letter: DeadLetter, routing_key: str | None, tasks: frozenset[str], **_: Any
) -> None:
    """A message the transport set aside: a rejection to celery-exporter's dashboards (bounded
    labels as above), and a dead letter by reason."""
    metrics.DEAD_LETTERS.labels(letter.reason, _queue_label(letter.queue)).inc()
    metrics.TASK_REJECTED.labels(
        letter.task if letter.task in tasks else UNKNOWN_TASK,
        _MainProcess.hostname,
        _queue_label(routing_key),
    ).inc()


# --- pool children -------------------------------------------------------------------------


def _child_started(**_: Any) -> None:
    init_tracing(WORKER_SERVICE_NAME)


def _child_stopping(**_: Any) -> None:
    flush_tracing()
    mark_process_dead(os.getpid())


def _queue_label(routing_key: object) -> str:
    return metrics.queue_label(routing_key, get_settings().queues)


def _task_labels(task: Task, request: Any) -> tuple[str, str, str]:  # type: ignore[type-arg]
    """Worked out once per execution, at its start, and kept on ``request`` (the task's: read
    once by each handler, ``Task.request`` is a property that walks Celery's request stack)
    for its end."""
    labels: tuple[str, str, str] | None = getattr(request, _LABELS, None)
    if labels is None:
        delivery = request.delivery_info or {}
        host = metrics.host_label(request.hostname or "")
        labels = (task.name, host, _queue_label(delivery.get("routing_key")))
        setattr(request, _LABELS, labels)
    return labels


def _task_started(sender: Task, **_: Any) -> None:  # type: ignore[type-arg]
    # The queue wait is measured with the start stamp, in order (worker/lifecycle.py).
    request = sender.request
    labels = _task_labels(sender, request)
    setattr(request, _STARTED_AT, time.perf_counter())
    metrics.labelled(metrics.TASK_STARTED, *labels).inc()
    metrics.labelled(metrics.WORKER_TASKS_ACTIVE, labels[1]).inc()


def _task_finished(sender: Task, **_: Any) -> None:  # type: ignore[type-arg]
    metrics.labelled(metrics.WORKER_TASKS_ACTIVE, _task_labels(sender, sender.request)[1]).dec()


def _task_succeeded(sender: Task, **_: Any) -> None:  # type: ignore[type-arg]
    request = sender.request
    labels = _task_labels(sender, request)
    metrics.labelled(metrics.TASK_SUCCEEDED, *labels).inc()
    started = getattr(request, _STARTED_AT, None)
    if started is not None:
        metrics.labelled(metrics.TASK_RUNTIME, *labels).observe(time.perf_counter() - started)


def _task_failed(sender: Task, exception: BaseException | None = None, **_: Any) -> None:  # type: ignore[type-arg]
    labels = _task_labels(sender, sender.request)
    metrics.labelled(metrics.TASK_FAILED, *labels, type(exception).__name__).inc()
    metrics.labelled(metrics.TASK_FAILURES, *labels).inc()


def _task_retried(sender: Task, **_: Any) -> None:  # type: ignore[type-arg]
    metrics.labelled(metrics.TASK_RETRIED, *_task_labels(sender, sender.request)).inc()


def connect_signals(app: Celery) -> None:
    """Connect every handler once (``dispatch_uid``), whichever process imports the app."""
    del app  # handlers are process-wide; the argument documents which app they serve
    connect_publisher_signals()
    for signal, handler in (
        (setup_logging, _setup_logging),
        (celeryd_init, _prepare_metrics_dir),
        (worker_init, _start_metrics_server),
        (worker_ready, _worker_ready),
        (worker_shutdown, _worker_shutdown),
        (task_received, _count_received),
        (task_revoked, _count_revoked),
        (task_rejected, _count_rejected),
        (task_unknown, _count_rejected),
        (message_dead_lettered, _count_dead_lettered),
        (worker_process_init, _child_started),
        (worker_process_shutdown, _child_stopping),
        (task_prerun, _task_started),
        (task_postrun, _task_finished),
        (task_success, _task_succeeded),
        (task_failure, _task_failed),
        (task_retry, _task_retried),
    ):
        signal.connect(handler, weak=False, dispatch_uid=f"courier.{handler.__name__}")
