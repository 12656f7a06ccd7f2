"""The suite's own processes never outlive it: stop escalates to SIGKILL and takes the whole
process group, a server that cannot start is reaped at once, and what a fixture that failed
half-way never stopped is killed at the end of the session (tests/utils/reaper.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.utils.processes import (
    ROOT,
    RUNNING,
    RedisServer,
    Service,
    celery_worker,
    courier_env,
    group_members,
    wait_until,
)


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its parent."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_stop_kills_a_process_that_ignores_sigterm_and_every_child_it_started(
    tmp_path: Path,
) -> None:
    # Like a worker stuck in a task: SIGTERM is ignored, and its children ignore it too.
    service = Service(
        ["bash", "-c", "trap '' TERM; sleep 600 & sleep 600 & wait"], {}, tmp_path / "stuck.log"
    )
    wait_until(lambda: len(group_members(service.pid)) == 3, 30, "the shell and its children")
    members = group_members(service.pid)
    started = time.monotonic()
    service.stop(timeout=1)
    assert time.monotonic() - started < 30
    assert not [pid for pid in members if alive(pid)]
    assert service.pid not in RUNNING


def test_children_that_outlive_a_clean_exit_are_killed_with_the_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child"
    service = Service(
        ["bash", "-c", f"sleep 600 & echo $! > {pid_file}; exit 0"], {}, tmp_path / "log"
    )
    service.process.wait(30)
    child = int(pid_file.read_text())
    assert alive(child)
    service.stop()
    assert not alive(child)


def test_a_redis_server_that_cannot_start_fails_fast_and_leaves_nothing(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "first") as first:
        second = RedisServer(tmp_path / "second", port=first.port)  # the port is taken
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="exited"):
            second.start()
        assert time.monotonic() - started < 20
        assert second.process is None
        assert [pid for pid, p in RUNNING.items() if p is second] == []


INNER_TEST = """
    import os
    from pathlib import Path

    import pytest

    from tests.utils.processes import RedisServer, Service

    PIDS = Path(os.environ["PIDS_FILE"])


    @pytest.fixture(scope="module")
    def half_started(tmp_path_factory):
        tmp = tmp_path_factory.mktemp("half")
        server = RedisServer(tmp / "redis")
        server.start()
        sleeper = Service(["bash", "-c", "sleep 600 & sleep 600"], {}, tmp / "sleeper.log")
        PIDS.write_text(f"{server.process.pid} {sleeper.pid}")
        raise RuntimeError("set-up failed half-way, before any clean-up was armed")


    def test_uses_it(half_started):
        pass
"""


def test_processes_of_a_fixture_that_failed_half_way_are_killed_at_session_end(
    tmp_path: Path,
) -> None:
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER_TEST))
    pids_file = tmp_path / "pids"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PIDS_FILE": str(pids_file)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.utils.reaper", "-p",
         "no:cacheprovider", str(tmp_path / "test_inner.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0, result.stdout
    assert "set-up failed half-way" in result.stdout
    assert "killed 2 test process(es) no fixture stopped" in result.stdout
    redis_pid, sleeper_pid = (int(pid) for pid in pids_file.read_text().split())
    assert not alive(redis_pid)
    assert not group_members(sleeper_pid)


def test_a_killed_worker_leaves_its_temporary_files_in_the_test_directory(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        log = tmp_path / "worker.log"
        worker = celery_worker(courier_env({"COURIER_REDIS_URL": server.url}), log, "tmpdir")
        try:
            metrics_dirs = wait_until(
                lambda: list(log.with_name("worker.log.tmp").glob("courier-worker-metrics-*")),
                60,
                "the worker's metrics directory",
            )
        finally:
            worker.kill()  # no atexit clean-up runs
    assert all(path.is_relative_to(tmp_path) for path in metrics_dirs)


# A socket left open in a reference cycle: only a garbage collection finds it, and none runs
# before the session ends. Warnings are errors, as in the suite's own configuration.
LEAKY_TEST = """
import socket

class Holder:
    def __init__(self):
        self.me = self
        self.sock = socket.socket()

def test_leaves_a_socket_in_a_cycle():
    Holder()
"""


def test_a_socket_found_only_at_session_end_is_reported_and_does_not_fail_the_run(
    tmp_path: Path,
) -> None:
    (tmp_path / "test_leaky.py").write_text(LEAKY_TEST)
    command = [sys.executable, "-m", "pytest", "-q", "-W", "error", "-p", "no:cacheprovider"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(*plugins: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *plugins, str(tmp_path / "test_leaky.py")],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    without = run()
    assert without.returncode != 0 and "unclosed" in without.stdout + without.stderr
    reaped = run("-p", "tests.utils.reaper")
    assert reaped.returncode == 0, reaped.stdout + reaped.stderr
    assert "left unclosed, found only at the session's end: unclosed <socket" in reaped.stdout
