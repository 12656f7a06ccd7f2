"""The worker's /metrics: lifecycle counters summed over prefork children, queue depth."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import app_state, settings_from, wait_for_status
from tests.utils.processes import (
    RedisServer,
    Service,
    celery_worker,
    courier_env,
    free_port,
    http_ok,
    wait_until,
)
from tests.utils.prom import scrape, total
from tests.utils.smtp import SmtpServer
from worker.core.names import DEFAULT_QUEUE


class Stack:
    def __init__(self, api: TestClient, worker: Service, port: int) -> None:
        self.api = api
        self.worker = worker
        self.url = f"http://127.0.0.1:{port}"

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        return scrape(f"{self.url}/metrics")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, smtp_server: SmtpServer) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("worker-metrics")
    port = free_port()
    with contextlib.ExitStack() as processes:
        server = processes.enter_context(RedisServer(tmp / "redis"))
        env = {
            "COURIER_REDIS_URL": server.url,
            "COURIER_WORKER_METRICS_PORT": str(port),
            "COURIER_EMAIL_BACKEND": "smtp",
            "COURIER_SMTP_HOST": "127.0.0.1",
            "COURIER_SMTP_PORT": str(smtp_server.port),
            "COURIER_RETRY_BACKOFF_SECONDS": "0.05",
            "COURIER_QUEUE_METRICS_LEASE_SECONDS": "5",
        }
        worker = processes.enter_context(
            celery_worker(courier_env(env), Path(tmp / "worker.log"), "metrics", concurrency=2)
        )
        api = processes.enter_context(TestClient(create_app(settings_from(env))))
        stack = Stack(api, worker, port)
        wait_until(lambda: http_ok(f"{stack.url}/readyz"), 90, "the worker's /readyz")
        yield stack


def run_all(api: TestClient, payloads: list[tuple[str, dict[str, object]]]) -> list[str]:
    ids = [api.post(f"/v1/tasks/{name}", json=body).json()["id"] for name, body in payloads]
    for task_id in ids:
        wait_for_status(api, task_id, timeout=30)
    return ids


def test_health_answers_without_the_broker(stack: Stack) -> None:
    response = httpx.get(f"{stack.url}/healthz", timeout=2)
    assert response.status_code == 200


def test_every_task_counter_exists_at_zero_before_the_first_task(stack: Stack) -> None:
    """Runs first in this module, before any task: a counter born at its first increment
    hides that increment from increase() (a task that always fails had no failure ratio)."""
    samples = stack.metrics()
    series = {(name, dict(labels).get("name")) for name, labels in samples}
    for task in ("noop", "send_email", "process_image", "generate_report"):
        for counter in ("received", "started", "succeeded", "retried", "rejected", "revoked"):
            assert (f"celery_task_{counter}_total", task) in series, (counter, task)
        assert total(samples, "courier_task_failures_total", name=task) == 0
        assert ("courier_task_failures_total", task) in series, task
        failed = [
            value
            for (name, labels), value in samples.items()
            if name == "celery_task_failed_total"
            and dict(labels).get("name") == task
            and dict(labels).get("exception") == "InvalidPayload"
        ]
        assert failed == [0], (task, failed)
    dead = [k for k in samples if k[0] == "courier_dead_letters_total"]
    assert len(dead) == 4 and all(samples[k] == 0 for k in dead)
    assert not any(task and task.startswith("celery.") for _, task in series)


def test_lifecycle_counters_sum_every_pool_child(stack: Stack) -> None:
    # Sleeping tasks overlap, so both prefork children execute some of them.
    run_all(stack.api, [("noop", {"sleep_seconds": 0.3})] * 6)
    samples = stack.metrics()
    assert total(samples, "celery_task_succeeded_total", name="noop") >= 6
    assert total(samples, "celery_task_started_total", name="noop") >= 6
    assert total(samples, "celery_task_received_total", name="noop", queue_name=DEFAULT_QUEUE) >= 6
    assert total(samples, "celery_task_runtime_count", name="noop") >= 6
    assert total(samples, "celery_task_runtime_sum", name="noop") >= 6 * 0.3
    assert total(samples, "courier_task_queue_wait_seconds_count", name="noop") >= 6
    assert total(samples, "celery_task_queue_wait_time_count", name="noop") >= 6
    hostname_up = [ls for (n, ls), v in samples.items() if n == "celery_worker_up" and v == 1]
    # celery-exporter's label: the host, not Celery's node name (metrics@host).
    assert hostname_up and dict(hostname_up[0])["hostname"] == socket.gethostname()
    assert total(samples, "celery_worker_tasks_active") == 0


def test_failures_carry_the_exception_and_retries_are_counted(stack: Stack) -> None:
    run_all(stack.api, [("send_email", {"to": "busy-metrics@example.com", "subject": "s"})])
    run_all(stack.api, [("process_image", {"image_id": "0" * 32, "width": 1, "height": 1})])
    samples = stack.metrics()
    assert total(samples, "celery_task_retried_total", name="send_email") == 3
    assert (
        total(samples, "celery_task_failed_total", name="send_email", exception="TransientError")
        == 1
    )
    assert (
        total(samples, "celery_task_failed_total", name="process_image", exception="PermanentError")
        == 1
    )
    assert total(samples, "courier_task_failures_total", name="send_email") == 1
    assert total(samples, "courier_task_failures_total", name="process_image") == 1


# A producer that knows nothing of Courier, in a process of its own (this one has Courier's
# publish signals connected, which stamp every publish).
STOCK_PRODUCER = """
import sys
from celery import Celery
stock = Celery("stock", broker=sys.argv[1], backend=sys.argv[1])
stock.send_task("noop", kwargs={}).get(timeout=20)
stock.send_task("noop", kwargs={}, countdown=0.2).get(timeout=20)
"""


def test_a_stock_producers_tasks_are_measured_by_eta_or_counted_as_unmeasured(
    stack: Stack,
) -> None:
    """Celery's protocol carries no send time: a task from a producer without Courier's header
    is measured from its ETA when it has one, else counted in ..._unmeasured_total."""
    before = stack.metrics()
    waits = total(before, "courier_task_queue_wait_seconds_count", name="noop")
    unmeasured = total(before, "courier_task_queue_wait_unmeasured_total", name="noop")
    url = app_state(stack.api).settings.redis_url
    subprocess.run([sys.executable, "-c", STOCK_PRODUCER, url], check=True, timeout=60)
    after = stack.metrics()
    assert total(after, "courier_task_queue_wait_unmeasured_total", name="noop") == unmeasured + 1
    assert total(after, "courier_task_queue_wait_seconds_count", name="noop") == waits + 1


def test_a_routing_key_that_is_no_queue_never_becomes_a_label(stack: Stack) -> None:
    """Straight onto the list, as any producer could: the routing key is the producer's."""
    made_up = f"made-up-{uuid.uuid4().hex}"
    task_id = str(uuid.uuid4())
    body = base64.b64encode(json.dumps([[], {}, {}]).encode()).decode()
    envelope = {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "task": "noop", "id": task_id},
        "properties": {
            "body_encoding": "base64",
            "delivery_info": {"exchange": "", "routing_key": made_up},
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    url = app_state(stack.api).settings.redis_url
    with redis.Redis.from_url(url) as client:
        client.lpush(DEFAULT_QUEUE, json.dumps(envelope))
        wait_until(lambda: client.exists(f"celery-task-meta-{task_id}"), 20, "the task to run")
    queues = {dict(labels).get("queue_name") for (_, labels) in stack.metrics()}
    assert made_up not in queues and "unknown" in queues


def test_backlog_counts_waiting_and_reserved_messages(stack: Stack) -> None:
    # A countdown task is fetched at once and held by the worker until its ETA: delayed.
    delayed = stack.api.post("/v1/tasks/noop", json={}, params={"countdown": 30}).json()["id"]
    wait_until(
        lambda: total(stack.metrics(), "courier_queue_delayed", queue_name=DEFAULT_QUEUE) == 1,
        10,
        "the delayed task to be held by the worker",
    )
    # Four long tasks on two children: two run (unacknowledged), two wait in the list.
    ids = [
        stack.api.post("/v1/tasks/noop", json={"sleep_seconds": 3}).json()["id"] for _ in range(4)
    ]
    wait_until(
        lambda: (
            sum(stack.api.get(f"/v1/tasks/{i}").json()["status"] == "started" for i in ids) == 2
        ),
        20,
        "two tasks running",
    )
    samples = stack.metrics()
    assert total(samples, "celery_queue_length", queue_name=DEFAULT_QUEUE) == 2
    assert total(samples, "courier_queue_reserved", queue_name=DEFAULT_QUEUE) == 2
    assert total(samples, "courier_queue_backlog", queue_name=DEFAULT_QUEUE) == 4
    assert total(samples, "courier_queue_delayed", queue_name=DEFAULT_QUEUE) == 1
    assert total(samples, "courier_queue_oldest_age_seconds", queue_name=DEFAULT_QUEUE) > 0
    assert total(samples, "celery_active_worker_count", queue_name=DEFAULT_QUEUE) == 1
    assert total(samples, "celery_active_process_count", queue_name=DEFAULT_QUEUE) == 2
    assert stack.api.delete(f"/v1/tasks/{delayed}").status_code == 202
    for task_id in ids:
        wait_for_status(stack.api, task_id, timeout=30)


def test_every_metric_is_labelled() -> None:
    """An unlabelled metric creates its value when the module is imported, before an entry
    point switches prometheus-client to multiprocess mode: its value class is then the
    single-process one, and a worker exported none of its per-task series (seen when
    courier_failover_rewrites_total was added without a label)."""
    from prometheus_client.metrics import MetricWrapperBase

    from worker.core import metrics as module

    unlabelled = [
        name
        for name, value in vars(module).items()
        if isinstance(value, MetricWrapperBase) and not value._labelnames
    ]
    assert unlabelled == []
