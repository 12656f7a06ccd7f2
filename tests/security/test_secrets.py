"""No secret ever shows: not in logs, metrics, traces, error bodies or the OpenAPI document.

A real stack (password-protected Redis, API keys, tracing on) runs a few requests, good and bad;
then every output is searched for the secrets.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.utils.live_stack import live_stack
from tests.utils.processes import wait_until

REDIS_PASSWORD = "redis-pw-Secret-7341"
API_KEY = "api-key-Secret-9052"
SMTP_PASSWORD = "smtp-pw-Secret-1187"
SECRETS = (REDIS_PASSWORD, API_KEY, SMTP_PASSWORD)


def test_secrets_never_leak(tmp_path: Path) -> None:
    env = {
        "COURIER_API_KEYS": API_KEY,
        "COURIER_SMTP_PASSWORD": SMTP_PASSWORD,
        "COURIER_SMTP_USER": "courier",
        "COURIER_LOG_LEVEL": "DEBUG",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    auth = {"Authorization": f"Bearer {API_KEY}"}
    outputs: list[str] = []
    with live_stack(
        tmp_path,
        env,
        tracing=True,
        worker="secretive",
        redis_args=("--requirepass", REDIS_PASSWORD),
        redis_url=lambda server: f"redis://:{REDIS_PASSWORD}@127.0.0.1:{server.port}/0",
    ) as stack:
        url = stack.url
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
            httpx.get(f"{stack.metrics_url}/metrics"),
        ):
            outputs.append(response.text)
        stack.redis.stop()  # errors while Redis is away must not echo the URL either
        outputs.append(httpx.get(f"{url}/v1/tasks/{task_id}", headers=auth).text)
        outputs.append(httpx.get(f"{url}/readyz").text)
        stack.redis.start()
        wait_until(lambda: bool(stack.receiver.spans), 30, "spans")
    # Read after the stack stopped: the shutdown's log lines are searched too.
    outputs += [stack.api.output(), stack.worker.output()]
    outputs += [repr(span) for span in stack.receiver.spans]
    for secret in SECRETS:
        for text in outputs:
            assert secret not in text, f"secret found in: {text[:200]}"
    assert any("apply_async/noop" in text for text in outputs), "spans were inspected"
