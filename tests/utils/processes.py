"""Real processes for tests: redis-server, Celery workers, beat, gunicorn."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import httpx
import redis

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def http_ok(url: str) -> bool:
    """Does ``url`` answer 200 right now (any connection error is a no)?"""
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class RedisServer:
    """A redis-server of our own on a free port, which a test may stop and start again."""

    def __init__(
        self, workdir: Path, port: int | None = None, extra_args: tuple[str, ...] = ()
    ) -> None:
        self.port = port or free_port()
        self.workdir = workdir
        self.extra_args = extra_args
        args = list(extra_args)
        self.password = args[args.index("--requirepass") + 1] if "--requirepass" in args else None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--maxmemory-policy",
                "noeviction",
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, password=self.password)
        wait_until(lambda: _pings(client), 10, f"redis-server on port {self.port}")
        client.close()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: no chance to fsync or rewrite anything."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (a worker's pool processes), from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def courier_env(overrides: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COURIER_")}
    env.update(overrides)
    env["PYTHONPATH"] = str(ROOT)
    return env


class Service:
    """A subprocess in its own process group, so a test can kill it and its children at once."""

    def __init__(self, args: list[str], env: Mapping[str, str], log: Path) -> None:
        self.log = log
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(
            args,
            cwd=ROOT,
            env=dict(env),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole group: the main process and its pool children die together."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self._log_file.close()

    def stop(self, timeout: float = 15) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self._log_file.close()


def celery_worker(
    env: Mapping[str, str],
    log: Path,
    name: str,
    concurrency: int = 2,
    extra_args: tuple[str, ...] = (),
) -> Service:
    """A prefork worker; its metrics port is a free one unless ``env`` names it."""
    args = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker"]
    args += ["--pool=prefork", f"--concurrency={concurrency}", "--without-gossip"]
    args += ["--without-mingle", f"--hostname={name}@%h", "--loglevel=INFO", *extra_args]
    return Service(args, {"COURIER_WORKER_METRICS_PORT": str(free_port()), **env}, log)


def celery_beat(env: Mapping[str, str], log: Path) -> Service:
    return Service(
        [sys.executable, "-m", "celery", "-A", "worker.celery_app", "beat", "--loglevel=INFO"],
        env,
        log,
    )


def gunicorn(env: Mapping[str, str], log: Path) -> Service:
    """The API under gunicorn. A SIGTERM that reaches a worker still booting is missed and
    gunicorn waits out its graceful timeout, so tests shorten it (a real race, not ours)."""
    return Service(
        [sys.executable, "-m", "gunicorn", "-c", "python:app.gunicorn_conf"],
        {"COURIER_API_GRACEFUL_TIMEOUT": "8", **env},
        log,
    )
