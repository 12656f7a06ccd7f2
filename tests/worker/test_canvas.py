"""Celery's canvas from a stock client (no Courier code) against Courier's worker.

Before: a mutable ``chain(noop.s(), noop.s())`` marked step 1 FAILURE after its body ran
(Celery's argument check raised ``TypeError`` in the worker while publishing step 2), and
``args=[...]`` failed with a TypeError from Celery's internals (Flower's async-apply answered
500). Now a step's body that succeeded is SUCCESS, and a task given positional arguments fails
with an ``InvalidPayload`` saying what to do.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest
from celery import Celery, Signature, chain, chord, group
from celery.result import GroupResult
from fastapi.testclient import TestClient

from tests.conftest import settings_from
from tests.utils.celery_apps import close_app
from tests.utils.processes import RedisServer
from worker.celery_config import create_celery_app
from worker.core.names import DEFAULT_QUEUE

TIMEOUT = 30


@pytest.fixture
def stock(redis_server: RedisServer, live_api: TestClient) -> Iterator[Celery]:
    app = Celery("stock", broker=redis_server.url, backend=redis_server.url)  # Celery's defaults
    yield app
    close_app(app)


def test_a_stock_client_that_names_no_queue_reaches_the_workers(
    stock: Celery, live_api: TestClient
) -> None:
    """Before, Courier's workers read only ``default`` while a stock client that names no queue
    sends to Celery's default, ``celery``: its send_task and group never ran. Courier's default
    queue is now Celery's own."""
    assert stock.conf.task_default_queue == DEFAULT_QUEUE  # the stock client's, untouched
    sent = stock.send_task("noop", kwargs={"echo": "no queue"})
    grouped = group(stock.signature("noop", kwargs={"echo": n}) for n in range(3)).apply_async()
    assert sent.get(timeout=TIMEOUT) == "no queue"
    assert grouped.get(timeout=TIMEOUT) == [0, 1, 2]
    members = cast(GroupResult, grouped).results or []  # celery-types says AsyncResult
    for result, echo in [(sent, "no queue"), *zip(members, range(3), strict=True)]:
        status = live_api.get(f"/v1/tasks/{result.id}").json()
        assert (status["status"], status["result"]) == ("succeeded", echo), status
        assert (status["name"], status["queue"], status["executions"]) == ("noop", DEFAULT_QUEUE, 1)
        assert live_api.get(f"/tasks/{result.id}").json()["status"] == "SUCCESS"


def test_a_stock_client_naming_another_configured_queue_reaches_it(
    stock: Celery, live_api: TestClient
) -> None:
    """The session's workers consume every queue of COURIER_QUEUES (here also ``reports``): how
    an upgrade drains the old ``default`` queue while ``COURIER_QUEUES`` lists it."""
    sent = stock.send_task("noop", kwargs={"echo": "routed"}, queue="reports")
    assert sent.get(timeout=TIMEOUT) == "routed"
    assert live_api.get(f"/v1/tasks/{sent.id}").json()["queue"] == "reports"


def test_a_mutable_chain_keeps_the_parents_success_and_fails_the_child_clearly(
    stock: Celery,
) -> None:
    result = chain(
        stock.signature("noop", kwargs={"echo": "first"}), stock.signature("noop")
    ).apply_async()
    parent: Any = result.parent  # the chain's first task (typed as any ResultBase or None)
    assert parent.get(timeout=TIMEOUT) == "first"
    assert parent.state == "SUCCESS"
    result.get(timeout=TIMEOUT, propagate=False)
    assert result.state == "FAILURE"
    assert type(result.result).__name__ == "InvalidPayload"
    assert ".si(" in str(result.result) and "keyword" in str(result.result)


def test_immutable_chains_groups_and_chords_run(stock: Celery) -> None:
    def si(echo: object) -> Signature:
        return stock.signature("noop", kwargs={"echo": echo}, immutable=True)

    assert chain(si(1), si(2)).apply_async().get(timeout=TIMEOUT) == 2
    assert group(si(n) for n in range(3)).apply_async().get(timeout=TIMEOUT) == [0, 1, 2]
    assert chord([si(n) for n in range(3)])(si("all done")).get(timeout=TIMEOUT) == "all done"


def test_positional_arguments_fail_as_invalid_payload_not_type_error(stock: Celery) -> None:
    result = stock.send_task("noop", args=[1, 2])
    result.get(timeout=TIMEOUT, propagate=False)
    assert result.state == "FAILURE"
    assert type(result.result).__name__ == "InvalidPayload"
    assert "2 positional argument(s)" in str(result.result)


def test_courier_tasks_stay_on_courier_apps(redis_server: RedisServer) -> None:
    """A team's own Celery app in a process that also builds Courier's gets none of Courier's
    tasks (Celery shares tasks with every app by default): its calls stay plain messages."""
    create_celery_app(settings_from({"COURIER_REDIS_URL": redis_server.url}))
    theirs = Celery("theirs", broker=redis_server.url)
    theirs.finalize()
    assert "noop" not in theirs.tasks
    theirs.close()


def test_a_task_from_another_producer_gets_a_record_and_a_true_status(
    stock: Celery, live_api: TestClient
) -> None:
    """Sent by a stock client (no Courier record): before, GET /v1/tasks/{id} and the seed's
    /tasks/{id} answered 404 after it succeeded; the worker now creates its record at start."""
    result = stock.send_task("noop", kwargs={"echo": "foreign"})
    assert result.get(timeout=TIMEOUT) == "foreign"
    status = live_api.get(f"/v1/tasks/{result.id}").json()
    assert status["status"] == "succeeded" and status["result"] == "foreign"
    assert (status["name"], status["queue"], status["executions"]) == ("noop", DEFAULT_QUEUE, 1)
    assert status["started_at"] is not None
    assert live_api.get(f"/tasks/{result.id}").json()["status"] == "SUCCESS"
    chained = chain(
        stock.signature("noop", kwargs={"echo": 1}, immutable=True),
        stock.signature("noop", kwargs={"echo": 2}, immutable=True),
    ).apply_async()
    assert chained.get(timeout=TIMEOUT) == 2
    assert live_api.get(f"/v1/tasks/{chained.id}").json()["status"] == "succeeded"
    assert live_api.get("/v1/tasks/00000000-0000-4000-8000-000000000000").status_code == 404
