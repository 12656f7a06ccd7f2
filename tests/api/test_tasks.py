"""/v1/tasks end to end: a real worker executes what the API enqueues."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import Celery, states
from fastapi.testclient import TestClient

from app.api.routes.tasks import json_depth
from tests.conftest import wait_for_status
from tests.utils.processes import POOLS
from tests.worker.stack import worker_stack


def test_registered_tasks_are_listed_with_payload_schemas(api: TestClient) -> None:
    tasks = {t["name"]: t for t in api.get("/v1/tasks").json()}
    assert {"noop", "send_email", "process_image", "generate_report", "reconcile_records"} <= set(
        tasks
    )
    assert tasks["noop"]["payload_schema"]["properties"]["sleep_seconds"]["minimum"] == 0
    assert tasks["send_email"]["max_retries"] == 3


def test_openapi_documents_each_task_payload(api: TestClient) -> None:
    document = api.get("/openapi.json").json()
    assert "/v1/tasks/noop" in document["paths"]
    assert "NoopPayload" in document["components"]["schemas"]


def test_noop_round_trip_reports_result_and_timestamps(live_api: TestClient) -> None:
    response = live_api.post("/v1/tasks/noop", json={"echo": {"n": [1, 2]}, "sleep_seconds": 0.1})
    assert response.status_code == 202
    accepted = response.json()
    assert accepted["status"] == "queued"
    assert response.headers["Location"].endswith(f"/v1/tasks/{accepted['id']}")
    assert accepted["status_url"] == response.headers["Location"]

    done = wait_for_status(live_api, accepted["id"])
    assert done["status"] == "succeeded"
    assert done["result"] == {"n": [1, 2]}
    assert done["name"] == "noop"
    assert done["worker"].startswith("session@")
    enqueued, started, finished = (
        datetime.fromisoformat(done[k]) for k in ("enqueued_at", "started_at", "finished_at")
    )
    assert enqueued <= started <= finished


def test_status_shows_started_while_running(
    live_api: TestClient, submit: Callable[..., str]
) -> None:
    task_id = submit("noop", {"sleep_seconds": 1.5})
    running = wait_for_status(live_api, task_id, {"started"}, timeout=10)
    assert running["started_at"] is not None
    assert running["worker"].startswith("session@")  # STARTED is stored by the start stamp
    assert running["finished_at"] is None
    assert wait_for_status(live_api, task_id)["status"] == "succeeded"


def test_a_stock_celery_client_sees_started_and_gets_the_result(
    live_api: TestClient, submit: Callable[..., str], courier_vars: dict[str, str]
) -> None:
    """A plain Celery app on the same Redis (Celery's own backend, no Courier code): ``.state``
    reads STARTED from the result key, ``.get()`` wakes on the final PUBLISH (STARTED is no
    longer published, and nothing of this waits for it)."""
    stock = Celery("stock", broker=courier_vars["COURIER_REDIS_URL"],
                   backend=courier_vars["COURIER_REDIS_URL"])  # fmt: skip
    task_id = submit("noop", {"echo": "stock", "sleep_seconds": 1.5})
    result = stock.AsyncResult(task_id)
    try:
        wait_for_status(live_api, task_id, {"started"}, timeout=10)
        assert str(result.state) == states.STARTED
        assert result.get(timeout=20) == "stock"
        assert str(result.state) == states.SUCCESS
    finally:
        stock.close()


def test_noop_accepts_an_empty_body(live_api: TestClient) -> None:
    response = live_api.post("/v1/tasks/noop")
    assert response.status_code == 202
    assert wait_for_status(live_api, response.json()["id"])["result"] is None


def test_unknown_task_name_is_404(api: TestClient) -> None:
    response = api.post("/v1/tasks/no_such_task", json={})
    assert response.status_code == 404
    assert "no_such_task" in response.json()["detail"]


def test_unknown_task_id_is_404(api: TestClient) -> None:
    response = api.get("/v1/tasks/3f1e7c2a-0000-4000-8000-000000000000")
    assert response.status_code == 404
    assert "never issued" in response.json()["detail"]


def test_invalid_payload_is_422_listing_the_fields(api: TestClient) -> None:
    response = api.post("/v1/tasks/noop", json={"sleep_seconds": -1, "surprise": True})
    assert response.status_code == 422
    locations = {tuple(error["loc"]) for error in response.json()["detail"]}
    assert ("body", "sleep_seconds") in locations
    assert ("body", "surprise") in locations


def test_malformed_json_is_422(api: TestClient) -> None:
    response = api.post(
        "/v1/tasks/noop", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422


def test_payload_over_the_limit_is_413(api: TestClient) -> None:
    response = api.post("/v1/tasks/noop", json={"echo": "x" * 5000})
    assert response.status_code == 413
    assert "4096" in response.json()["detail"]


def test_chunked_payload_over_the_limit_is_413(api: TestClient) -> None:
    def chunks() -> Any:
        yield b'{"echo": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    response = api.post(
        "/v1/tasks/noop", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413


def test_unknown_queue_is_422(api: TestClient) -> None:
    response = api.post("/v1/tasks/noop", json={}, params={"queue": "nope"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "queue"]


def test_delay_beyond_the_visibility_timeout_is_refused(api: TestClient) -> None:
    response = api.post("/v1/tasks/noop", json={}, params={"countdown": 61})
    assert response.status_code == 422
    assert "visibility timeout" in response.json()["detail"][0]["msg"]
    eta = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    assert api.post("/v1/tasks/noop", json={}, params={"eta": eta}).status_code == 422


def test_task_on_a_configured_queue_with_priority_runs(
    live_api: TestClient, submit: Callable[..., str]
) -> None:
    task_id = submit("noop", {"echo": "q"}, queue="reports", priority=0)
    done = wait_for_status(live_api, task_id)
    assert (done["status"], done["queue"], done["result"]) == ("succeeded", "reports", "q")


def test_countdown_delays_the_start(live_api: TestClient, submit: Callable[..., str]) -> None:
    task_id = submit("noop", {"echo": 1}, countdown=1.5)
    done = wait_for_status(live_api, task_id)
    started = datetime.fromisoformat(done["started_at"])
    enqueued = datetime.fromisoformat(done["enqueued_at"])
    assert started - enqueued >= timedelta(seconds=1.4)


def test_cancelling_a_queued_task_revokes_it_and_it_never_runs(
    live_api: TestClient, submit: Callable[..., str]
) -> None:
    task_id = submit("noop", {"echo": "never"}, countdown=2)
    response = live_api.delete(f"/v1/tasks/{task_id}")
    assert response.status_code == 202
    assert response.json()["status"] == "revoked"
    # Past its countdown, the task is still revoked and never started.
    import time

    time.sleep(3)
    body = live_api.get(f"/v1/tasks/{task_id}").json()
    assert body["status"] == "revoked"
    assert body["result"] is None


@pytest.fixture(scope="module")
def inline_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The API before a worker of the inline pool (the session's worker is prefork)."""
    with worker_stack(tmp_path_factory.mktemp("inline"), "inline", pool="inline") as stack:
        yield stack.api


@pytest.mark.parametrize("pool", POOLS)
def test_cancelling_a_running_task_with_terminate_stops_it(
    pool: str, request: pytest.FixtureRequest
) -> None:
    api: TestClient = request.getfixturevalue("live_api" if pool == "prefork" else "inline_api")
    task_id = api.post("/v1/tasks/noop", json={"sleep_seconds": 30}).json()["id"]
    wait_for_status(api, task_id, {"started"}, timeout=10)
    response = api.delete(f"/v1/tasks/{task_id}", params={"terminate": "true"})
    assert response.status_code == 202
    assert wait_for_status(api, task_id, timeout=10)["status"] == "revoked"


def test_cancelling_a_finished_task_is_409(
    live_api: TestClient, submit: Callable[..., str]
) -> None:
    task_id = submit("noop", {})
    wait_for_status(live_api, task_id)
    response = live_api.delete(f"/v1/tasks/{task_id}")
    assert response.status_code == 409
    assert "succeeded" in response.json()["detail"]


def test_cancelling_an_unknown_task_is_404(api: TestClient) -> None:
    assert api.delete("/v1/tasks/unknown-id").status_code == 404


def test_location_is_the_url_starlette_would_build(api: TestClient) -> None:
    """The submit route builds its Location by hand (url_for is slow); behind a proxy prefix
    (root_path) and on another host it must still be the URL ``url_for`` gives."""
    from starlette.requests import Request

    from app.api.routes.tasks import task_url

    for root_path, host in (("", "testserver"), ("/courier", "tasks.example.com:8443")):
        scope = {
            "type": "http",
            "app": api.app,
            "scheme": "https",
            "server": ("10.0.0.1", 8000),
            "root_path": root_path,
            "path": f"{root_path}/v1/tasks/noop",
            "headers": [(b"host", host.encode())],
            "query_string": b"",
        }
        request = Request(scope)
        assert task_url(request, "abc") == str(request.url_for("get_task", task_id="abc"))


def _reference_depth(value: object) -> int:
    """The depth as first written: every value on a stack with its depth."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


@pytest.mark.parametrize(
    "value",
    [
        0, "x", None, {}, [], {"a": 1}, [[]], {"a": {}}, {"echo": {"n": 1}, "sleep_seconds": 0},
        {"a": [1, {"b": [2, [3, {"c": None}]]}], "d": {}}, [[[[[]]]], 1, {"e": [[]]}],
        {"a": [1] * 50, "b": [{"c": [[[]]]}]},
    ],
)  # fmt: skip
def test_json_depth_counts_nesting_as_before(value: object) -> None:
    assert json_depth(value) == _reference_depth(value)
