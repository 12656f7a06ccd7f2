"""The services a scenario starts: redis-server, Courier's API and worker, the bare baselines.

Courier runs exactly as deployed (``gunicorn -c python:app.gunicorn_conf``, ``celery -A
worker.celery_app worker``); the bare apps run under the same server settings so the only
difference measured is the application code.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field

import redis

from benchmarks.procs import LOOPBACK, VENV_BIN, Stack, free_port, http_ok, wait_until
from worker.core.names import DEFAULT_QUEUE

WORKER_FAST_FLAGS = ["--without-gossip", "--without-mingle"]


@dataclass
class Redis:
    port: int

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host=LOOPBACK, port=self.port, db=0)


def start_redis(s: Stack, *extra: str) -> Redis:
    """A private redis-server: no persistence, so a benchmark never waits on a disk save;
    ``extra`` arguments after Courier's (a replica's, min-replicas-to-write...)."""
    port = free_port()
    s.spawn(
        [
            "redis-server",
            "--bind", LOOPBACK,
            "--port", str(port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(s.tmp),
            "--dbfilename", f"dump-{port}.rdb",  # a replica's sync file, one per server
            "--maxmemory-policy", "noeviction",
            *extra,
        ]
    )  # fmt: skip
    server = Redis(port)
    wait_until(lambda: server.client().ping(), 10, "redis-server")
    return server


@dataclass
class Api:
    url: str
    proc: subprocess.Popen[bytes]


def courier_env(r: Redis, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Courier's defaults, tracing explicitly off, quiet logs; ``extra`` overrides."""
    return {
        "COURIER_REDIS_URL": r.url,
        "COURIER_LOG_LEVEL": "WARNING",
        "OTEL_TRACES_EXPORTER": "none",
        **(extra or {}),
    }


def start_courier_api(s: Stack, r: Redis, extra: Mapping[str, str] | None = None) -> Api:
    port = free_port()
    env = courier_env(r, {"COURIER_API_BIND": f"{LOOPBACK}:{port}", "COURIER_API_WORKERS": "2"})
    env.update(extra or {})
    proc = s.spawn([str(VENV_BIN / "gunicorn"), "-c", "python:app.gunicorn_conf"], env)
    url = f"http://{LOOPBACK}:{port}"
    _wait_alive(s, proc, lambda: http_ok(f"{url}/healthz"), "courier api")
    return Api(url, proc)


def start_bare_api(s: Stack, r: Redis) -> Api:
    """The bare FastAPI baseline under Courier's gunicorn settings (2 uvicorn workers)."""
    port = free_port()
    args = [
        str(VENV_BIN / "gunicorn"),
        "benchmarks.bare_api:app",
        "--bind", f"{LOOPBACK}:{port}",
        "--workers", "2",
        "--worker-class", "uvicorn_worker.UvicornWorker",
        "--keep-alive", "5",
        "--timeout", "60",
        "--log-level", "warning",
    ]  # fmt: skip
    proc = s.spawn(args, {"BENCH_REDIS_URL": r.url})
    url = f"http://{LOOPBACK}:{port}"
    _wait_alive(s, proc, lambda: http_ok(f"{url}/healthz"), "bare api")
    return Api(url, proc)


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    metrics_port: int = 0
    queue: str = DEFAULT_QUEUE
    extra: dict[str, str] = field(default_factory=dict)


def start_courier_worker(
    s: Stack,
    r: Redis,
    flags: list[str] | None = None,
    extra: Mapping[str, str] | None = None,
    name: str = "bench",
    metrics: bool = True,
    wait: bool = True,
    app: str = "worker.celery_app",
    loglevel: str = "WARNING",
) -> Worker:
    """Courier's worker as deployed (prefork, concurrency 2); ``flags`` add or override options.

    ``loglevel`` is Celery's ``--loglevel``; the chart ships INFO (and ``COURIER_LOG_LEVEL``
    INFO), which the ``drain`` scenario uses, since log lines per task are part of the cost."""
    port = free_port() if metrics else 0
    env = courier_env(r, {"COURIER_WORKER_METRICS_PORT": str(port)})
    env.update(extra or {})
    args = [
        str(VENV_BIN / "celery"), "-A", app, "worker",
        "--pool=prefork", "--concurrency=2", *WORKER_FAST_FLAGS,
        f"--loglevel={loglevel}", "-n", f"{name}@%h", *(flags or []),
    ]  # fmt: skip
    proc = s.spawn(args, env)
    if wait and metrics:
        _wait_alive(s, proc, lambda: http_ok(f"http://{LOOPBACK}:{port}/readyz"), "worker")
    return Worker(proc, port)


def start_bare_worker(
    s: Stack,
    r: Redis,
    flags: list[str] | None = None,
    ignore_result: bool = False,
    track_started: bool = False,
    loglevel: str = "WARNING",
) -> Worker:
    """Celery out of the box: only concurrency 2 and prefork are set, like Courier's.

    ``track_started`` and ``loglevel="info"`` make it the seed's app as the seed ran it."""
    args = [
        str(VENV_BIN / "celery"), "-A", "benchmarks.bare_celery", "worker",
        "--pool=prefork", "--concurrency=2", f"--loglevel={loglevel}", "-n", "bare@%h",
        *(flags or []),
    ]  # fmt: skip
    env = {
        "BENCH_REDIS_URL": r.url,
        "BENCH_IGNORE_RESULT": "1" if ignore_result else "",
        "BENCH_TRACK_STARTED": "1" if track_started else "",
    }
    return Worker(s.spawn(args, env), queue="celery")


def _wait_alive(s: Stack, proc: subprocess.Popen[bytes], ready: object, what: str) -> None:
    def check() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited:\n{s.log_tail(proc)}")
        return bool(ready() if callable(ready) else False)

    wait_until(check, 60, what)
