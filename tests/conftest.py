"""Session fixtures: a real redis-server, a real SMTP server, a real Celery worker, the API.

The API runs in-process (TestClient) for API tests; tests about serving start gunicorn. Nothing
is faked: tasks go through Redis to a worker process and back.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from app.main import create_app
from app.queue import EnqueueOptions
from tests.utils.processes import RedisServer, Service, celery_worker, courier_env, wait_until
from tests.utils.smtp import SmtpServer
from worker.core.names import DEFAULT_QUEUE
from worker.core.settings import Settings

pytest_plugins = ["tests.utils.reaper"]

# Files whose tests time failovers, freezes and partitions against the machine's clock: marked
# ``timing``, which `make test` runs after the rest, on their own in one process (as every run
# before pytest-xdist did), since a heavy test beside them on a 2-core machine stretches the
# windows they measure (a Sentinel failover's redelivery, seen once per few runs when they
# shared the machine with the other xdist process). Run with -n 2 anyway, they share one group.
TIMING_SENSITIVE = {
    # Whether the Sentinels fail a restarted primary over or keep it depends on how fast they
    # see it down and back: beside the other xdist process it kept its role once (a CI run).
    "tests/deploy/test_chart_sentinel.py",
    "tests/reliability/test_chaos.py",
    "tests/reliability/test_chaos_sentinel.py",
    "tests/reliability/test_partition.py",
    "tests/reliability/test_redis_freeze.py",
    "tests/reliability/test_sentinel.py",
    "tests/reliability/test_sentinel_clients.py",
}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each file is one xdist group (its module fixtures start once, as with --dist loadfile),
    except the timing-sensitive files, which share one and are marked ``timing``."""
    for item in items:
        path = item.path.relative_to(config.rootpath).as_posix()
        timing = path in TIMING_SENSITIVE
        item.add_marker(pytest.mark.xdist_group("timing" if timing else path))
        if timing:
            item.add_marker(pytest.mark.timing)


TERMINAL = {"succeeded", "failed", "revoked"}


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("courier")


@pytest.fixture(scope="session")
def redis_server(session_dir: Path) -> Iterator[RedisServer]:
    with RedisServer(session_dir / "redis") as server:
        yield server


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server for one test, which it may stop, break or restart."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture(scope="session")
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def courier_vars(redis_server: RedisServer, smtp_server: SmtpServer) -> dict[str, str]:
    """The environment shared by the in-process API and the worker processes."""
    return {
        "COURIER_REDIS_URL": redis_server.url,
        "COURIER_EMAIL_BACKEND": "smtp",
        "COURIER_SMTP_HOST": "127.0.0.1",
        "COURIER_SMTP_PORT": str(smtp_server.port),
        "COURIER_RETRY_BACKOFF_SECONDS": "0.1",
        "COURIER_BROKER_VISIBILITY_TIMEOUT": "60",
        "COURIER_MAX_PAYLOAD_BYTES": "4096",
        "COURIER_MAX_RESULT_BYTES": "2048",
        "COURIER_MAX_UPLOAD_BYTES": str(256 * 1024),
        "COURIER_QUEUES": f"{DEFAULT_QUEUE},reports",
    }


def settings_from(env: dict[str, str]) -> Settings:
    fields = {key.removeprefix("COURIER_").lower(): value for key, value in env.items()}
    return Settings.model_validate(fields)


@pytest.fixture(scope="session")
def worker(courier_vars: dict[str, str], session_dir: Path) -> Iterator[Service]:
    with celery_worker(courier_env(courier_vars), session_dir / "worker.log", "session") as service:
        yield service


@pytest.fixture(scope="session")
def api(courier_vars: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(create_app(settings_from(courier_vars))) as client:
        yield client


@pytest.fixture(scope="session")
def live_api(api: TestClient, worker: Service) -> TestClient:
    """The API with a worker behind it, proven by one task making the round trip."""
    response = api.post("/v1/tasks/noop", json={"echo": "warm-up"})
    assert response.status_code == 202, response.text
    wait_for_status(api, response.json()["id"], timeout=60)
    return api


def app_state(client: TestClient) -> Any:
    """The state of the FastAPI app a test client serves (its queue, settings, stores)."""
    app: Any = client.app  # typed as any ASGI callable; here always create_app's FastAPI
    return app.state


def enqueue(
    client: TestClient,
    name: str,
    payload: dict[str, Any],
    options: EnqueueOptions | None = None,
) -> str:
    """The producer's own path (``TaskQueue.enqueue``) past the API's validation, run on the
    event loop of the app ``client`` serves (its asyncio Redis client belongs to that loop)."""
    portal = client.portal
    assert portal is not None, "enter the TestClient first: its event loop serves the app"
    queue = app_state(client).queue
    task_id: str = portal.call(queue.enqueue, name, payload, options or EnqueueOptions())
    return task_id


def wait_for_status(
    client: TestClient, task_id: str, statuses: set[str] = TERMINAL, timeout: float = 20
) -> dict[str, Any]:
    def current() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/v1/tasks/{task_id}").json()
        return body if body.get("status") in statuses else None

    return wait_until(current, timeout, f"task {task_id} to reach {statuses}")


@pytest.fixture
def unique() -> Callable[[str], str]:
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def submit(live_api: TestClient) -> Callable[..., str]:
    def _submit(name: str, payload: Any, **params: Any) -> str:
        response = live_api.post(f"/v1/tasks/{name}", json=payload, params=params)
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    return _submit
