"""``python -m benchmarks.submit_cpu N [TARGET]``: N requests through an ASGI app, in this process.

No server and no client: the app is called directly (``POST /v1/tasks/noop``, 16 in flight),
so what a profiler or callgrind counts is the handler, its middleware and the instrumentation,
against a real Redis (``COURIER_REDIS_URL``). Configuration comes from the environment, as in
production; tracing is flushed at the end so span export is counted too. ``WARMUP`` submits
run first (default 200); running with N=0 measures start-up and warm-up alone.

``TARGET`` prices the same way the two baselines of the submit: ``healthz`` (Courier's
``GET /healthz``, the same middleware and server path without a handler's work) and ``bare``
(``benchmarks.bare_api``'s submit: FastAPI, pydantic and ``send_task``, nothing else).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from typing import Any

BODY = b'{"echo": {"n": 1}, "sleep_seconds": 0}'
IN_FLIGHT = 16


# target -> (method, path, expected status)
TARGETS = {
    "submit": ("POST", "/v1/tasks/noop", 202),
    "healthz": ("GET", "/healthz", 200),
    "bare": ("POST", "/v1/tasks/noop", 202),
}


def _scope(method: str, path: str) -> dict[str, Any]:
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(BODY)).encode()),
        (b"user-agent", b"wrk"),
    ]
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(),
        "query_string": b"", "root_path": "", "headers": headers, "state": {},
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
    }  # fmt: skip


async def _submit(app: Any, target: str) -> None:
    method, path, expected = TARGETS[target]
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

    await app(_scope(method, path), receive, send)
    if status != [expected]:
        raise RuntimeError(f"submit answered {status}")


async def _run(app: Any, count: int, target: str) -> None:
    for start in range(0, count, IN_FLIGHT):
        batch = min(IN_FLIGHT, count - start)
        await asyncio.gather(*(_submit(app, target) for _ in range(batch)))


def main() -> None:
    count = int(sys.argv[1])
    target = sys.argv[2] if len(sys.argv) > 2 else "submit"
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="submit-cpu-"))
    from app.main import create_app
    from worker.core.tracing.setup import flush_tracing

    app: Any
    if target == "bare":
        os.environ["BENCH_REDIS_URL"] = os.environ["COURIER_REDIS_URL"]
        from benchmarks.bare_api import app
    else:
        app = create_app()
    # One event loop: the app's asyncio Redis client belongs to it.
    asyncio.run(_run(app, int(os.environ.get("WARMUP", "200")) + count, target))
    flush_tracing()


if __name__ == "__main__":
    main()
