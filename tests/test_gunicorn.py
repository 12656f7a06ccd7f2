"""The API served by real gunicorn + uvicorn workers, over real HTTP."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx

from tests.utils.processes import Service, courier_env, free_port, gunicorn, http_ok, wait_until


def test_gunicorn_serves_a_task_round_trip_and_stops_gracefully(
    courier_vars: dict[str, str], worker: Service, tmp_path: Path
) -> None:
    port = free_port()
    env = courier_env(
        {**courier_vars, "COURIER_API_BIND": f"127.0.0.1:{port}", "COURIER_API_WORKERS": "2"}
    )
    server = gunicorn(env, tmp_path / "gunicorn.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{url}/readyz"), 30, "gunicorn to serve /readyz")
        accepted = httpx.post(f"{url}/v1/tasks/noop", json={"echo": "over http"}, timeout=5)
        assert accepted.status_code == 202
        status_url = accepted.headers["Location"]
        assert status_url.startswith(url)
        done = wait_until(
            lambda: (b := httpx.get(status_url, timeout=5).json())["status"] == "succeeded" and b,
            30,
            "the task to succeed",
        )
        assert done["result"] == "over http"
    finally:
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(30)
        server.stop()
    assert code == 0, server.output()
    assert '"level": "ERROR"' not in server.output()
