"""The metrics table, from the prometheus-client objects themselves (``worker/core/metrics.py``;
``app/middleware/metrics.py`` defines none of its own): name as scraped, type, labels and help text.

Which process exports a metric is not in the object, so it is said here, once per metric, and
checked both ways: a new metric without an entry, or an entry for a metric that is gone, fails
the generator (and so the suite) instead of leaving the table wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.metrics import MetricWrapperBase

from tools.docsgen.markdown import code, table
from worker.core import metrics

API = "API"
WORKER = "worker"
LEASE = "one worker or API pod (lease)"

EXPORTED_BY: dict[str, str] = {
    "celery_task_sent_total": "API, worker",
    "celery_task_received_total": WORKER,
    "celery_task_started_total": WORKER,
    "celery_task_succeeded_total": WORKER,
    "celery_task_failed_total": WORKER,
    "courier_task_failures_total": WORKER,
    "celery_task_retried_total": WORKER,
    "celery_task_rejected_total": WORKER,
    "courier_dead_letters_total": WORKER,
    "courier_tasks_purged_total": API,
    "courier_failover_rewrites_total": API,
    "celery_task_revoked_total": WORKER,
    "courier_tasks_lost_total": "the worker that ran it",
    "celery_task_runtime": WORKER,
    "celery_task_queue_wait_time": WORKER,
    "courier_task_queue_wait_seconds": WORKER,
    "courier_task_queue_wait_unmeasured_total": WORKER,
    "celery_worker_up": "worker (its own)",
    "celery_worker_tasks_active": "worker (its own)",
    "courier_http_requests_total": API,
    "courier_http_request_duration_seconds": API,
    "courier_http_requests_in_progress": API,
    "courier_tasks_enqueued_total": API,
    "celery_queue_length": LEASE,
    "courier_queue_backlog": LEASE,
    "courier_queue_reserved": LEASE,
    "courier_queue_delayed": LEASE,
    "courier_queue_oldest_age_seconds": LEASE,
    "celery_active_worker_count": LEASE,
    "celery_active_process_count": LEASE,
}


@dataclass(frozen=True)
class MetricDoc:
    name: str
    kind: str
    labels: tuple[str, ...]
    help: str


def _wrapped(metric: MetricWrapperBase) -> MetricDoc:
    (family,) = metric.describe()
    # A counter is scraped with `_total`; describe() names the family without it.
    name = f"{family.name}_total" if family.type == "counter" else family.name
    return MetricDoc(name, family.type, tuple(metric._labelnames), family.documentation)


def documented() -> list[MetricDoc]:
    """Every metric the code defines: the module's objects, then the queue gauges' families."""
    found = [
        _wrapped(value) for value in vars(metrics).values() if isinstance(value, MetricWrapperBase)
    ]
    for family in metrics.queue_families([], {}):
        found.append(
            MetricDoc(family.name, family.type, tuple(family._labelnames), family.documentation)
        )
    return found


def rows() -> list[list[str]]:
    found = documented()
    names = {metric.name for metric in found}
    if unsaid := sorted(names - EXPORTED_BY.keys()):
        raise ValueError(f"say which process exports {unsaid} (EXPORTED_BY)")
    if gone := sorted(EXPORTED_BY.keys() - names):
        raise ValueError(f"EXPORTED_BY names metrics the code no longer defines: {gone}")
    return [
        [
            code(metric.name),
            metric.kind,
            ", ".join(code(label) for label in metric.labels),
            metric.help,
            EXPORTED_BY[metric.name],
        ]
        for metric in found
    ]


def render() -> str:
    return table(["metric", "type", "labels", "meaning", "exported by"], rows())
