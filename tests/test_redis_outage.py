"""Redis stopped mid-test: fast 503s with a JSON body, /readyz 503, recovery when it returns."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import settings_from
from tests.utils.processes import RedisServer

# How fast a 503 must come without Redis (the README promises about 1 s).
FAST_503_SECONDS = 2.0


@pytest.fixture
def api_on_own_redis(own_redis: RedisServer) -> Iterator[TestClient]:
    with TestClient(create_app(settings_from({"COURIER_REDIS_URL": own_redis.url}))) as client:
        yield client


def timed(call: object) -> tuple[object, float]:
    start = time.monotonic()
    result = call() if callable(call) else None
    return result, time.monotonic() - start


def fastest(call: object, tries: int = 3) -> tuple[object, float]:
    """The last answer and the shortest of up to ``tries`` timings, stopping at the first
    under the bound: what the code takes, not a pause of the test process on a loaded machine
    (seen under pytest-xdist beside other suites: the API logged its 503 in 20 ms, the test
    measured 2.31 s). Waiting on a timeout instead of failing fast is slow every time."""
    best = float("inf")
    for _ in range(tries):
        response, elapsed = timed(call)
        best = min(best, elapsed)
        if best < FAST_503_SECONDS:
            break
    return response, best


def test_redis_down_gives_fast_503s_and_the_api_recovers(
    api_on_own_redis: TestClient, own_redis: RedisServer
) -> None:
    api = api_on_own_redis
    accepted = api.post("/v1/tasks/noop", json={"echo": 1})
    assert accepted.status_code == 202
    task_id = accepted.json()["id"]

    own_redis.stop()
    requests = {
        "readyz": lambda: api.get("/readyz"),
        "submit": lambda: api.post("/v1/tasks/noop", json={"echo": 2}),
        "status": lambda: api.get(f"/v1/tasks/{task_id}"),
        "cancel": lambda: api.delete(f"/v1/tasks/{task_id}"),
        "seed send-email": lambda: api.post(
            "/send-email", params={"to": "a@example.com", "subject": "s", "body": "b"}
        ),
        "seed status": lambda: api.get(f"/tasks/{task_id}"),
        "register": lambda: api.post(
            "/users/register", params={"username": "zed", "email": "z@example.com"}
        ),
        "upload": lambda: api.post("/v1/artifacts", files={"file": ("a.txt", b"abc")}),
    }
    for name, call in requests.items():
        response, elapsed = fastest(call)
        assert response.status_code == 503, (name, response.text)  # type: ignore[attr-defined]
        assert "detail" in response.json(), name  # type: ignore[attr-defined]
        assert elapsed < FAST_503_SECONDS, f"{name} took {elapsed:.2f}s"
    assert api.get("/healthz").status_code == 200

    own_redis.start()
    assert api.get("/readyz").status_code == 200
    again = api.post("/v1/tasks/noop", json={"echo": 3})
    assert again.status_code == 202, again.text
    assert api.get(f"/v1/tasks/{again.json()['id']}").json()["status"] == "queued"


def test_first_submit_with_redis_down_is_a_fast_503(own_redis: RedisServer) -> None:
    """The first submit also opens the channel Celery's messages are shaped with: without Redis
    that must fail as fast as any other call, not after kombu's retry intervals."""
    own_redis.stop()
    app = create_app(settings_from({"COURIER_REDIS_URL": own_redis.url}))
    with TestClient(app) as api:
        for _ in range(2):
            response, elapsed = timed(lambda: api.post("/v1/tasks/noop", json={"echo": 1}))
            assert response.status_code == 503, response.text  # type: ignore[attr-defined]
            assert elapsed < 1.0, f"took {elapsed:.2f}s"
        own_redis.start()
        accepted = api.post("/v1/tasks/noop", json={"echo": 2})
        assert accepted.status_code == 202, accepted.text
