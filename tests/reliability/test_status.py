"""Status is truthful: it never goes backwards, and expired tasks are a clear 404."""

from __future__ import annotations

from collections.abc import Callable

from celery import states
from fastapi.testclient import TestClient
from httpx2 import Response

from app.main import create_app
from tests.conftest import app_state, settings_from, wait_for_status
from tests.utils.processes import Service, wait_until
from worker.core.names import DEFAULT_QUEUE

# worker/lifecycle.py's log line for a delivery of a task that already finished.
SKIPPED = "duplicate delivery of a finished task skipped"


def test_a_finished_state_is_never_overwritten(
    live_api: TestClient, submit: Callable[..., str]
) -> None:
    task_id = submit("noop", {"echo": "done"})
    assert wait_for_status(live_api, task_id)["status"] == "succeeded"
    backend = app_state(live_api).queue._celery.backend  # the API's own Celery app
    backend.store_result(task_id, {"pid": 1, "hostname": "late@host"}, states.STARTED)
    backend.store_result(task_id, None, states.FAILURE)
    body = live_api.get(f"/v1/tasks/{task_id}").json()
    assert (body["status"], body["result"]) == ("succeeded", "done")


def test_a_redelivered_duplicate_of_a_finished_task_is_skipped(
    live_api: TestClient, submit: Callable[..., str], worker: Service
) -> None:
    task_id = submit("noop", {"echo": "once", "sleep_seconds": 0.1})
    first = wait_for_status(live_api, task_id)
    assert first["executions"] == 1
    # What a worker dying before its acknowledgement leaves behind: the same message again.
    app_state(live_api).queue._celery.send_task(
        "noop", kwargs={"echo": "twice"}, task_id=task_id, queue=DEFAULT_QUEUE
    )
    # Until the worker says it skipped it (a fixed 2 s before): the status is read after.
    wait_until(lambda: skipped(worker, task_id), 20, "the duplicate to be skipped")
    again = live_api.get(f"/v1/tasks/{task_id}").json()
    assert (again["status"], again["result"], again["executions"]) == ("succeeded", "once", 1)
    assert again["finished_at"] == first["finished_at"]


def skipped(worker: Service, task_id: str) -> bool:
    """Has ``worker`` logged that it skipped a duplicate delivery of ``task_id``?"""
    return any(SKIPPED in line and task_id in line for line in worker.output().splitlines())


def expired(api: TestClient, task_id: str) -> Response | None:
    """The status answer once it is a 404, else None."""
    answer = api.get(f"/v1/tasks/{task_id}")
    return answer if answer.status_code == 404 else None


def test_an_expired_task_is_404_not_queued(courier_vars: dict[str, str]) -> None:
    settings = settings_from({**courier_vars, "COURIER_RESULT_EXPIRES": "1"})
    with TestClient(create_app(settings)) as api:
        task_id = api.post("/v1/tasks/noop", json={}, params={"countdown": 5}).json()["id"]
        assert api.get(f"/v1/tasks/{task_id}").json()["status"] == "queued"
        # Polled until its record expires (1 s) instead of a fixed 1.5 s.
        gone = wait_until(lambda: expired(api, task_id), 5, "the record to expire")
        assert "expired" in gone.json()["detail"]
