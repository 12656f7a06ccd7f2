"""A worker SIGKILLed mid-task: another worker executes the task again; nothing is lost."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import settings_from, wait_for_status
from tests.utils.processes import RedisServer, Service, celery_worker, courier_env


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, Service]]]:
    with contextlib.ExitStack() as processes:
        server = processes.enter_context(RedisServer(tmp_path / "redis"))
        env = {"COURIER_REDIS_URL": server.url, "COURIER_BROKER_VISIBILITY_TIMEOUT": "3"}
        workers = {
            name: processes.enter_context(
                celery_worker(courier_env(env), tmp_path / f"{name}.log", name, concurrency=1)
            )
            for name in ("alpha", "beta")
        }
        api = processes.enter_context(TestClient(create_app(settings_from(env))))
        yield api, workers


def test_task_of_a_killed_worker_is_executed_by_another(
    cluster: tuple[TestClient, dict[str, Service]],
) -> None:
    api, workers = cluster
    # Both workers must be consuming before the task is sent.
    for _ in range(4):
        warm = api.post("/v1/tasks/noop", json={})
        wait_for_status(api, warm.json()["id"], timeout=60)

    task_id = api.post("/v1/tasks/noop", json={"echo": "survivor", "sleep_seconds": 1.5}).json()[
        "id"
    ]
    running = wait_for_status(api, task_id, {"started"}, timeout=20)
    victim = running["worker"].split("@")[0]
    workers[victim].kill()

    done = wait_for_status(api, task_id, timeout=30)
    assert done["status"] == "succeeded"
    assert done["result"] == "survivor"
    assert done["worker"].split("@")[0] != victim
