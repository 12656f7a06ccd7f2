"""``python -m benchmarks.submit_cpu N``: N submits through Courier's ASGI app, in this process.

No server and no client: the app is called directly (``POST /v1/tasks/noop``, 16 in flight),
so what a profiler or callgrind counts is the handler, its middleware and the instrumentation,
against a real Redis (``COURIER_REDIS_URL``). Configuration comes from the environment, as in
production; tracing is flushed at the end so span export is counted too. ``WARMUP`` submits
run first (default 200); running with N=0 measures start-up and warm-up alone.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from typing import Any

BODY = b'{"echo": {"n": 1}, "sleep_seconds": 0}'
IN_FLIGHT = 16


def _scope() -> dict[str, Any]:
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(BODY)).encode()),
        (b"user-agent", b"wrk"),
    ]
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/tasks/noop", "raw_path": b"/v1/tasks/noop",
        "query_string": b"", "root_path": "", "headers": headers, "state": {},
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
    }  # fmt: skip


async def _submit(app: Any) -> None:
    received = False
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        nonlocal received
        if received:
            await asyncio.Event().wait()  # no disconnect while the handler runs
        received = True
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(_scope(), receive, send)
    if status != [202]:
        raise RuntimeError(f"submit answered {status}")


async def _run(app: Any, count: int) -> None:
    for start in range(0, count, IN_FLIGHT):
        await asyncio.gather(*(_submit(app) for _ in range(min(IN_FLIGHT, count - start))))


def main() -> None:
    count = int(sys.argv[1])
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="submit-cpu-"))
    from app.main import create_app
    from worker.core.telemetry import flush_tracing

    app = create_app()
    # One event loop: the app's asyncio Redis client belongs to it.
    asyncio.run(_run(app, int(os.environ.get("WARMUP", "200")) + count))
    flush_tracing()


if __name__ == "__main__":
    main()
