"""Flower, as ``make up`` and the chart run it, submitting tasks to Courier's worker.

Before: a task sent through Flower's ``/api/task/async-apply`` answered 404 on
``GET /v1/tasks/{id}`` after it succeeded (no record), and async-apply with ``args`` answered
500 (a TypeError from Celery's argument check). Now the worker creates the record of a task
that has none, and positional arguments fail the task as ``InvalidPayload``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import wait_for_status
from tests.utils.processes import Service, courier_env, free_port, wait_until
from worker.core.names import DEFAULT_QUEUE

LOGIN = ("courier", "flower-test-password")
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def flower(
    courier_vars: dict[str, str], live_api: TestClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real Flower on Courier's app, started after the worker (it asks the workers once)."""
    port = free_port()
    env = courier_env({**courier_vars, "FLOWER_BASIC_AUTH": ":".join(LOGIN)})
    args = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "flower"]
    args += ["--address=127.0.0.1", f"--port={port}"]
    log: Path = tmp_path_factory.mktemp("flower") / "flower.log"
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(f"{url}/api/workers", auth=LOGIN, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    with Service(args, env, log) as service:
        try:
            wait_until(answers, TIMEOUT, "Flower's API")
        except TimeoutError:
            raise AssertionError(service.output()[-3000:]) from None
        yield url


def async_apply(flower: str, body: dict[str, object]) -> str:
    response = httpx.post(
        f"{flower}/api/task/async-apply/noop", json=body, auth=LOGIN, timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text
    return str(response.json()["task-id"])


def test_a_task_sent_through_flower_has_a_true_status(flower: str, live_api: TestClient) -> None:
    task_id = async_apply(flower, {"kwargs": {"echo": "from flower"}})
    status = wait_for_status(live_api, task_id, timeout=TIMEOUT)
    assert status["status"] == "succeeded", status
    assert (status["result"], status["name"], status["queue"]) == (
        "from flower",
        "noop",
        DEFAULT_QUEUE,
    )
    assert live_api.get(f"/tasks/{task_id}").json()["status"] == "SUCCESS"


def test_flower_async_apply_with_args_fails_the_task_clearly(
    flower: str, live_api: TestClient
) -> None:
    task_id = async_apply(flower, {"args": ["positional"]})
    status = wait_for_status(live_api, task_id, timeout=TIMEOUT)
    assert status["status"] == "failed", status
    assert "InvalidPayload" in str(status["error"]) and "keyword" in str(status["error"]), status
