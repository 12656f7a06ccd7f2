"""No secret ever shows: not in logs, metrics, traces, error bodies or the OpenAPI document.

A real stack (password-protected Redis, API keys, tracing on) runs a few requests, good and bad;
then every output is searched for the secrets.
"""

from __future__ import annotations

import signal
from pathlib import Path

import httpx

from tests.utils.otlp import OtlpReceiver
from tests.utils.processes import (
    RedisServer,
    celery_worker,
    courier_env,
    free_port,
    gunicorn,
    http_ok,
    wait_until,
)

REDIS_PASSWORD = "redis-pw-Secret-7341"
API_KEY = "api-key-Secret-9052"
SMTP_PASSWORD = "smtp-pw-Secret-1187"
SECRETS = (REDIS_PASSWORD, API_KEY, SMTP_PASSWORD)


def test_secrets_never_leak(tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path / "redis", extra_args=("--requirepass", REDIS_PASSWORD))
    redis_server.start()
    receiver = OtlpReceiver()
    receiver.start()
    api_port, metrics_port = free_port(), free_port()
    env = courier_env(
        {
            "COURIER_REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis_server.port}/0",
            "COURIER_API_KEYS": API_KEY,
            "COURIER_SMTP_PASSWORD": SMTP_PASSWORD,
            "COURIER_SMTP_USER": "courier",
            "COURIER_API_BIND": f"127.0.0.1:{api_port}",
            "COURIER_WORKER_METRICS_PORT": str(metrics_port),
            "COURIER_LOG_LEVEL": "DEBUG",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
    )
    api = gunicorn(env, tmp_path / "api.log")
    worker = celery_worker(env, tmp_path / "worker.log", "secretive")
    url = f"http://127.0.0.1:{api_port}"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    outputs: list[str] = []
    try:
        wait_until(lambda: http_ok(f"{url}/readyz"), 30, "the API")
        wait_until(lambda: http_ok(f"http://127.0.0.1:{metrics_port}/readyz"), 60, "the worker")
        accepted = httpx.post(f"{url}/v1/tasks/noop", json={"echo": 1}, headers=auth)
        task_id = accepted.json()["id"]
        wait_until(
            lambda: (
                httpx.get(f"{url}/v1/tasks/{task_id}", headers=auth).json()["status"] == "succeeded"
            ),
            30,
            "the task",
        )
        for response in (
            httpx.get(f"{url}/v1/tasks"),
            httpx.get(f"{url}/v1/tasks", headers={"Authorization": f"Bearer {API_KEY}x"}),
            httpx.post(f"{url}/v1/tasks/noop", json={"sleep_seconds": -1}, headers=auth),
            httpx.get(f"{url}/v1/tasks/unknown", headers=auth),
            httpx.get(f"{url}/openapi.json"),
            httpx.get(f"{url}/metrics"),
            httpx.get(f"http://127.0.0.1:{metrics_port}/metrics"),
        ):
            outputs.append(response.text)
        redis_server.stop()  # errors while Redis is away must not echo the URL either
        outputs.append(httpx.get(f"{url}/v1/tasks/{task_id}", headers=auth).text)
        outputs.append(httpx.get(f"{url}/readyz").text)
        redis_server.start()
        wait_until(lambda: bool(receiver.spans), 30, "spans")
    finally:
        worker.stop()
        api.process.send_signal(signal.SIGTERM)
        api.process.wait(30)
        api.stop()
        redis_server.stop()
        receiver.stop()
    outputs += [api.output(), worker.output()]
    outputs += [repr(span) for span in receiver.spans]
    for secret in SECRETS:
        for text in outputs:
            assert secret not in text, f"secret found in: {text[:200]}"
    assert any("apply_async/noop" in text for text in outputs), "spans were inspected"
