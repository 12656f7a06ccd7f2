"""Limits: submit rate (429 + Retry-After), payload depth, result size."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

import pytest
import redis.asyncio
from fastapi.testclient import TestClient

from app.api.security import RateLimited, RateLimiter
from app.main import create_app
from tests.conftest import settings_from, wait_for_status
from tests.utils.processes import RedisServer


def test_submissions_over_the_rate_get_429_with_retry_after(courier_vars: dict[str, str]) -> None:
    settings = settings_from(
        {
            **courier_vars,
            "COURIER_API_KEYS": "limited-key,other-key",
            # A token every 2 s: the burst and the two refusals after it need the five
            # submits within 2 s, which a loaded machine keeps (at 2 per second, a first
            # submit slow by 1 s under load let the fourth through).
            "COURIER_RATE_LIMIT_PER_SECOND": "0.5",
            "COURIER_RATE_LIMIT_BURST": "3",
        }
    )
    with TestClient(create_app(settings)) as client:
        other = {"X-API-Key": "other-key"}
        # Connections and scripts warmed up on another client's bucket first.
        assert client.post("/v1/tasks/noop", json={}, headers=other).status_code == 202
        limited = {"X-API-Key": "limited-key"}
        codes = [client.post("/v1/tasks/noop", json={}, headers=limited).status_code
                 for _ in range(5)]  # fmt: skip
        assert codes[:3] == [202, 202, 202]
        assert codes[3:] == [429, 429]
        refused = client.post("/v1/tasks/noop", json={}, headers=limited)
        assert refused.status_code == 429
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= 2
        assert "rate limit" in refused.json()["detail"]
        # Another client has its own bucket; reads are never limited.
        assert client.post("/v1/tasks/noop", json={}, headers=other).status_code == 202
        assert client.get("/v1/tasks", headers=limited).status_code == 200
        time.sleep(retry_after)  # as a client told to wait does: a token is back
        assert client.post("/v1/tasks/noop", json={}, headers=limited).status_code == 202


def test_a_payload_nested_too_deep_is_422(api: TestClient) -> None:
    echo: object = "bottom"
    for _ in range(40):
        echo = [echo]
    response = api.post("/v1/tasks/noop", json={"echo": echo})
    assert response.status_code == 422
    assert "levels deep" in response.json()["detail"][0]["msg"]
    assert api.post("/v1/tasks/noop", json={"echo": [[["fine"]]]}).status_code == 202


def test_pathologically_deep_json_is_a_4xx_not_a_crash(api: TestClient) -> None:
    body = b'{"echo": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    response = api.post(
        "/v1/tasks/noop", content=body, headers={"Content-Type": "application/json"}
    )
    assert 400 <= response.status_code < 500


def test_an_oversized_result_fails_the_task_and_the_worker_keeps_serving(
    live_api: TestClient, submit: Callable[..., str]
) -> None:
    # The session worker runs with COURIER_MAX_RESULT_BYTES=2048.
    done = wait_for_status(live_api, submit("noop", {"echo": "y" * 3000}))
    assert done["status"] == "failed"
    assert done["error"]["type"] == "PermanentError"
    assert "exceeds COURIER_MAX_RESULT_BYTES" in done["error"]["message"]
    assert wait_for_status(live_api, submit("noop", {"echo": "small"}))["result"] == "small"


def allowed(
    server: RedisServer, per_second: float, burst: int, identity: str, attempts: int = 1
) -> list[bool]:
    """Ask a ``RateLimiter`` ``attempts`` times, as one API process (its own asyncio client)."""

    async def ask() -> list[bool]:
        outcomes = []
        async with redis.asyncio.Redis.from_url(server.url) as client:
            limiter = RateLimiter(client, per_second, burst)
            for _ in range(attempts):
                try:
                    await limiter.check(identity)
                    outcomes.append(True)
                except RateLimited:
                    outcomes.append(False)
        return outcomes

    return asyncio.run(ask())


def test_a_clock_running_ahead_does_not_refill_the_bucket(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, unique: Callable[[str], str]
) -> None:
    # Each call from a "pod" whose clock is another hour ahead: with the caller's time in the
    # script, every call found an hour's worth of tokens.
    identity = unique("ahead")
    real_time, skew = time.time, itertools.count(0, 3600)
    monkeypatch.setattr(time, "time", lambda: real_time() + next(skew))
    outcomes = allowed(redis_server, 0.001, 2, identity, 4)
    monkeypatch.undo()
    assert outcomes == [True, True, False, False]


def test_a_pod_whose_clock_is_behind_still_sees_the_bucket_refill(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, unique: Callable[[str], str]
) -> None:
    # One pod an hour ahead takes the only token; a pod on time asks a moment later. With the
    # callers' clocks the bucket was an hour in the future for it: no refill for an hour.
    identity = unique("behind")
    limit = (20, 1)  # a token every 50 ms
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)
    ahead = allowed(redis_server, *limit, identity)
    monkeypatch.undo()
    time.sleep(0.2)  # at least four tokens' time by any clock; the bucket holds one
    assert ahead + allowed(redis_server, *limit, identity) == [True, True]
