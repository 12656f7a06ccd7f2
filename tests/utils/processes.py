"""Real processes for tests: redis-server, Celery workers, beat, gunicorn.

Every process started here is tracked until it is stopped, and stopping always ends in a
SIGKILL of whatever is left, then a wait: a fixture whose set-up fails half-way, or a test that
times out, leaves nothing running (``tests/utils/reaper.py`` kills what a fixture forgot at the
end of the session). Both classes are context managers, so a fixture that starts several
processes writes them into one ``contextlib.ExitStack`` and they stop in reverse order whatever
happens in between.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self, TypeVar

import httpx
import redis

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
# How long a process gets to exit after SIGTERM before it is killed, and after SIGKILL before
# the test gives up on it; generous, because a loaded machine is slow to schedule anyone.
STOP_TIMEOUT = 15.0
KILL_TIMEOUT = 30.0


class Stoppable(Protocol):
    def kill(self) -> None: ...


# Started and not yet stopped: what the reaper kills at the end of a session.
RUNNING: dict[int, Stoppable] = {}


def _kill_group(pgid: int) -> None:
    """SIGKILL a process group: pool children, gunicorn workers, anything the leader started."""
    with contextlib.suppress(ProcessLookupError, PermissionError):  # nothing left in it
        os.killpg(pgid, signal.SIGKILL)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if int(group) == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


def _wait_killed(process: subprocess.Popen[bytes], group: bool) -> None:
    """SIGKILL (the whole group when it has one of its own) and wait until it is gone."""
    if group:
        _kill_group(process.pid)
    elif process.poll() is None:
        process.kill()
    process.wait(KILL_TIMEOUT)
    if group:
        # A signal is only delivered once its target is scheduled: wait for the orphans too.
        wait_until(lambda: not group_members(process.pid), KILL_TIMEOUT, "the group to die")


def _stop_process(process: subprocess.Popen[bytes], timeout: float, group: bool) -> None:
    """SIGTERM, up to ``timeout`` to exit, then SIGKILL; returns only once it is reaped."""
    try:
        if process.poll() is None:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
    finally:
        # Also after a clean exit: children that outlived their parent go with the group.
        _wait_killed(process, group)


def http_ok(url: str) -> bool:
    """Does ``url`` answer 200 right now (any connection error is a no)?"""
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _port_range() -> range:
    """Where this process picks its servers' ports: below the kernel's ephemeral range, which it
    hands out as the source port of every outgoing connection. A port the kernel gave as free
    (bind to port 0) came from that range, and now and then a connection of another process had
    taken it by the time the server bound it (a Sentinel exited 'Address already in use' in one
    of two suite runs under pytest-xdist). Each xdist process has a slice of its own."""
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    high = int(ephemeral[0])
    low = max(1024, high - 12000)
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    size = (high - low) // count
    return range(low + index * size, low + (index + 1) * size)


PORTS = _port_range()
# Ports handed out lately: a port given to a server that has not bound it yet is still free.
_GIVEN: collections.deque[int] = collections.deque(maxlen=len(PORTS) // 2)


def free_port() -> int:
    """A port on 127.0.0.1 that no one listens on, outside the kernel's ephemeral range."""
    for _ in range(1000):
        port = random.choice(PORTS)
        if port in _GIVEN:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use, or lingering after a close
        _GIVEN.append(port)
        return port
    raise RuntimeError(f"no free port in {PORTS}")


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


class ServerProcess:
    """One server process (not a group) that a test may stop gracefully or SIGKILL."""

    process: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            try:
                _stop_process(process, STOP_TIMEOUT, group=False)
            finally:
                RUNNING.pop(process.pid, None)

    def kill(self) -> None:
        """SIGKILL: no chance to fsync or rewrite anything."""
        process, self.process = self.process, None
        if process is not None:
            try:
                _wait_killed(process, group=False)
            finally:
                RUNNING.pop(process.pid, None)


class RedisServer(ServerProcess):
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

    def __enter__(self) -> Self:
        if self.process is None:
            self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    #: The address it listens on, and what its command line is prefixed with (a subclass runs
    #: it inside a network namespace: ``tests/utils/sentinel.py``).
    host = "127.0.0.1"
    exec_prefix: tuple[str, ...] = ()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # With an exec prefix (``ip netns exec``, which execs redis-server itself) the pid is
        # still the server's (SIGSTOP, SIGKILL).
        process = self.process = subprocess.Popen(
            [
                *self.exec_prefix,
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                self.host,
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
        RUNNING[process.pid] = self
        client = redis.Redis(
            host=self.host, port=self.port, socket_connect_timeout=0.2, password=self.password
        )
        try:
            # Another server may hold the port: only ours answering counts as started.
            wait_until(
                lambda: process.poll() is not None or _answers_as(client, process.pid),
                30,
                f"redis-server on {self.host}:{self.port}",
            )
            if process.poll() is not None:
                raise RuntimeError(
                    f"redis-server on {self.host}:{self.port} exited: {process.returncode}"
                )
        except BaseException:
            self.kill()
            raise
        finally:
            client.close()


def _answers_as(client: redis.Redis, pid: int) -> bool:
    try:
        return int(client.info("server")["process_id"]) == pid
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


# Never inherited from the pytest process: a process that imported ``worker.celery_app`` is in
# prometheus-client's multiprocess mode with a directory of its own, and a service started with
# it would share (and, at a worker's start, wipe) that directory's files.
NOT_INHERITED = ("PROMETHEUS_MULTIPROC_DIR",)


def courier_env(overrides: Mapping[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("COURIER_") and k not in NOT_INHERITED
    }
    env.update(overrides)
    env["PYTHONPATH"] = str(ROOT)
    return env


class Service:
    """A subprocess in its own process group, so a test can kill it and its children at once."""

    def __init__(self, args: list[str], env: Mapping[str, str], log: Path) -> None:
        self.log = log
        self._log_file = log.open("wb")
        env = dict(env)
        if "TMPDIR" not in env:
            # Its temporary files (a worker's metrics directory) beside its log, in the test's
            # own directory: a process killed before its atexit clean-up leaves nothing in /tmp.
            tmp = log.with_name(f"{log.name}.tmp")
            tmp.mkdir(exist_ok=True)
            env["TMPDIR"] = str(tmp)
        self.process = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        RUNNING[self.process.pid] = self

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole group: the main process and its pool children die together."""
        try:
            _wait_killed(self.process, group=True)
        finally:
            self._done()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM to the main process (its own shutdown stops its children), then, after at
        most ``timeout``, SIGKILL to whatever is left of its group."""
        try:
            _stop_process(self.process, timeout, group=True)
        finally:
            self._done()

    def _done(self) -> None:
        RUNNING.pop(self.process.pid, None)
        self._log_file.close()


# COURIER_WORKER_POOL's values: tests of what both pools must do run with each.
POOLS = ("prefork", "inline")


def celery_worker(
    env: Mapping[str, str],
    log: Path,
    name: str,
    concurrency: int = 2,
    extra_args: tuple[str, ...] = (),
    prefix: tuple[str, ...] = (),
    pool: str = "prefork",
) -> Service:
    """A worker with ``pool`` (``COURIER_WORKER_POOL``: prefork, or inline, which runs one task
    at a time whatever ``concurrency`` says); its metrics port is a free one unless ``env``
    names it. ``prefix`` runs it through another command, e.g. ``ip netns exec <namespace>``."""
    args = [*prefix, sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker"]
    args += [f"--concurrency={concurrency}", "--without-gossip"]
    args += ["--without-mingle", f"--hostname={name}@%h", "--loglevel=INFO", *extra_args]
    variables = {"COURIER_WORKER_METRICS_PORT": str(free_port()), **env}
    variables["COURIER_WORKER_POOL"] = pool
    return Service(args, variables, log)


def celery_beat(env: Mapping[str, str], log: Path) -> Service:
    return Service(
        [sys.executable, "-m", "celery", "-A", "worker.celery_app", "beat", "--loglevel=INFO"],
        env,
        log,
    )


def gunicorn(env: Mapping[str, str], log: Path, app: str | None = None) -> Service:
    """The API under gunicorn. A SIGTERM that reaches a worker still booting is missed and
    gunicorn waits out its graceful timeout, so tests shorten it (a real race, not ours).
    ``app``: another application to serve with the same settings (gunicorn's ``APP_MODULE``,
    e.g. ``"tests.utils.fast_path_off:create_app()"``), instead of ``app.gunicorn_conf``'s."""
    return Service(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "python:app.gunicorn_conf",
            *([app] if app else []),
        ],
        {"COURIER_API_GRACEFUL_TIMEOUT": "8", **env},
        log,
    )
