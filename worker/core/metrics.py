"""Every Prometheus metric, defined once, for the API and the worker.

Names and labels follow celery-exporter where a metric exists there (its community dashboards
and alerts work unchanged); ``courier_*`` metrics are what no exporter gives. No label carries a
task id, a raw URL or user input: task names come from the registry, routes are templates.

Processes that fork (gunicorn, Celery prefork) run prometheus-client in multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``); each gauge says how values of several processes combine.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TypeVar

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics import MetricWrapperBase

from worker.core.queue_stats import QueueStats, QueueWorkers

# Task runtimes: from sub-millisecond no-ops to long jobs.
RUNTIME_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip
# Queue waits: milliseconds when idle, minutes under a backlog.
WAIT_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

TASK_LABELS = ("name", "hostname", "queue_name")
# Label values for a message naming a task not registered here, or a queue not configured
# (headers and routing keys are producer input: they never become label values as they are).
UNKNOWN_TASK = "unknown"
UNKNOWN_QUEUE = "unknown"


def queue_label(routing_key: object, queues: Collection[str]) -> str:
    """A message's routing key is its producer's: only a configured queue becomes a label, so
    no producer can add series."""
    if isinstance(routing_key, str) and routing_key in queues:
        return routing_key
    return UNKNOWN_QUEUE


def host_label(nodename: str) -> str:
    """The ``hostname`` label as celery-exporter writes it: the host of a Celery node name
    (``celery@vm`` -> ``vm``), so the API's sent counter and the worker's metrics agree."""
    return nodename.rpartition("@")[2]


M = TypeVar("M", bound=MetricWrapperBase)
# Children kept by ``labelled``: label values are bounded (registered tasks, configured queues,
# this worker's host), the bound guards against a caller that would pass anything else.
_CHILDREN: dict[tuple[int, tuple[str, ...]], MetricWrapperBase] = {}
_CHILDREN_KEPT = 4096


def labelled(metric: M, *values: str) -> M:
    """``metric.labels(*values)``, remembered: prometheus-client's ``labels`` checks, converts
    and locks on every call to find the child it already holds, several times per task. The
    child is the same object (its value follows a fork: it reopens its file in a new pid)."""
    key = (id(metric), values)
    child = _CHILDREN.get(key)
    if child is None:
        child = metric.labels(*values)
        if len(_CHILDREN) < _CHILDREN_KEPT:
            _CHILDREN[key] = child
    return child  # type: ignore[return-value]


# --- task lifecycle (celery-exporter names) ---
TASK_SENT = Counter(
    "celery_task_sent",
    "Task messages published (the API, and workers re-publishing retries).",
    TASK_LABELS,
)
TASK_RECEIVED = Counter("celery_task_received", "Tasks received by a worker.", TASK_LABELS)
TASK_STARTED = Counter("celery_task_started", "Tasks a worker started executing.", TASK_LABELS)
TASK_SUCCEEDED = Counter("celery_task_succeeded", "Tasks that succeeded.", TASK_LABELS)
TASK_FAILED = Counter(
    "celery_task_failed",
    "Tasks that failed for good (exception: its class name).",
    (*TASK_LABELS, "exception"),
)
# The failures above without their exception: every series of it exists at 0 from worker start
# (one per task, queue and worker), so the failure ratio sees the first burst of an exception
# no counter had yet (``celery_task_failed_total{exception=...}`` starts at its first failure).
TASK_FAILURES = Counter(
    "courier_task_failures",
    "Tasks that failed for good, whatever the exception (celery_task_failed_total without it):"
    " every series exists at 0 from worker start, so the failure ratio sees the first burst of"
    " an exception no series had yet.",
    TASK_LABELS,
)
TASK_RETRIED = Counter("celery_task_retried", "Failed attempts that will be retried.", TASK_LABELS)
TASK_REJECTED = Counter(
    "celery_task_rejected",
    "Messages a worker rejected (requeued or dropped): an unknown task name, no task name, an"
    " invalid message. name is a registered task or unknown, queue_name a configured queue or"
    " unknown: message headers never become label values.",
    TASK_LABELS,
)
DEAD_LETTERS = Counter(
    "courier_dead_letters",
    "Messages set aside on the dead-letter list instead of run (reason: envelope, body, "
    "headers, unknown_task); also counted in celery_task_rejected_total.",
    ("reason", "queue_name"),
)
TASKS_PURGED = Counter(
    "courier_tasks_purged",
    "Messages removed from a queue by DELETE /v1/queues/{name}/messages (each task revoked).",
    ("queue_name",),
)
# Labelled, as every metric here: an unlabelled one creates its value at import, before the
# entry points have switched prometheus-client to multiprocess mode (worker/core/multiproc.py).
FAILOVER_REWRITES = Counter(
    "courier_failover_rewrites",
    "Accepted tasks a Redis failover lost and the API wrote again on the new primary "
    "(app/failover_audit.py); master: the Sentinel master name.",
    ("master",),
)
TASK_REVOKED = Counter("celery_task_revoked", "Tasks revoked before or while running.", TASK_LABELS)
TASKS_LOST = Counter(
    "courier_tasks_lost",
    "Queued tasks whose message vanished from Redis (purged, list deleted), failed as"
    " MessageLost by reconcile_records.",
    ("name", "queue_name"),
)
TASK_RUNTIME = Histogram(
    "celery_task_runtime",
    "Runtime of successful tasks, seconds.",
    TASK_LABELS,
    buckets=RUNTIME_BUCKETS,
)
TASK_QUEUE_WAIT_TIME = Histogram(
    "celery_task_queue_wait_time",
    "Seconds from publish (or ETA) to start; celery-exporter's name.",
    TASK_LABELS,
    buckets=WAIT_BUCKETS,
)
COURIER_QUEUE_WAIT = Histogram(
    "courier_task_queue_wait_seconds",
    "Seconds from enqueue (or ETA, when later) to start, from the producer's courier_enqueued_at"
    " header; a task from another producer (a stock Celery client sets no such header, and"
    " Celery's protocol carries no send time) is measured from its ETA when it has one.",
    ("name", "queue_name"),
    buckets=WAIT_BUCKETS,
)
QUEUE_WAIT_UNMEASURED = Counter(
    "courier_task_queue_wait_unmeasured",
    "Executions started whose queue wait is unknown (a producer that sets neither Courier's "
    "enqueue header nor an ETA): absent from both queue-wait histograms.",
    ("name", "queue_name"),
)

# --- workers (each worker exports its own hostname) ---
# livemax: a process that died without setting 0 (a killed inline child) takes its 1 with it.
WORKER_UP = Gauge(
    "celery_worker_up", "1 while the worker serves.", ("hostname",), multiprocess_mode="livemax"
)
WORKER_TASKS_ACTIVE = Gauge(
    "celery_worker_tasks_active",
    "Tasks the worker is executing now.",
    ("hostname",),
    multiprocess_mode="livesum",
)

# --- API ---
HTTP_REQUESTS = Counter(
    "courier_http_requests", "HTTP requests by route template.", ("method", "route", "status")
)
HTTP_DURATION = Histogram(
    "courier_http_request_duration_seconds",
    "HTTP request latency by route template, seconds.",
    ("method", "route"),
    buckets=HTTP_BUCKETS,
)
# By method only: the route template is known only once routing ran.
HTTP_IN_PROGRESS = Gauge(
    "courier_http_requests_in_progress",
    "HTTP requests being served (live processes summed).",
    ("method",),
    multiprocess_mode="livesum",
)
TASKS_ENQUEUED = Counter(
    "courier_tasks_enqueued",
    "Task submissions by outcome: accepted (202), rejected (4xx), failed (5xx).",
    ("name", "outcome"),
)


def queue_families(
    stats: Sequence[QueueStats], workers: Mapping[str, QueueWorkers]
) -> list[GaugeMetricFamily]:
    """Cluster-wide queue gauges, exported by exactly one process at a time: a worker, or an API
    pod while no worker is alive (see QueueCollector)."""
    families = {
        "celery_queue_length": "Messages waiting in the broker queue (all priorities).",
        "courier_queue_backlog": "Waiting plus reserved-but-unacknowledged messages due now: the"
        " autoscaling signal.",
        "courier_queue_reserved": "Messages delivered to workers, not yet acknowledged, due now.",
        "courier_queue_delayed": "Messages held by workers until a future ETA (countdown).",
        "courier_queue_oldest_age_seconds": "Age of the oldest waiting message (0 when empty).",
        "celery_active_worker_count": "Live workers consuming the queue (from the worker registry"
        " in Redis).",
        "celery_active_process_count": "Pool processes of the live workers consuming the queue.",
    }
    gauges = {name: GaugeMetricFamily(name, doc, labels=["queue_name"]) for name, doc in
              families.items()}  # fmt: skip
    for s in stats:
        gauges["celery_queue_length"].add_metric([s.queue], s.waiting)
        gauges["courier_queue_backlog"].add_metric([s.queue], s.backlog)
        gauges["courier_queue_reserved"].add_metric([s.queue], s.reserved)
        gauges["courier_queue_delayed"].add_metric([s.queue], s.delayed)
        gauges["courier_queue_oldest_age_seconds"].add_metric([s.queue], s.oldest_age_seconds)
        consumers = workers.get(s.queue, QueueWorkers(0, 0))
        gauges["celery_active_worker_count"].add_metric([s.queue], consumers.workers)
        gauges["celery_active_process_count"].add_metric([s.queue], consumers.processes)
    return list(gauges.values())
