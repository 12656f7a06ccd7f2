"""Cancelling through the API: every path counts in celery_task_revoked_total, without errors.

Celery announces a revocation with the task's Context (not a worker Request) when it skips a
queued or delayed message or terminates a running one; each path is taken for real here.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.conftest import wait_for_status
from tests.utils.processes import POOLS, ROOT, courier_env, wait_until
from tests.utils.prom import total
from tests.worker.stack import WorkerStack, worker_stack
from worker.core.names import DEFAULT_QUEUE


@pytest.fixture(scope="module", params=POOLS)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerStack]:
    tmp = tmp_path_factory.mktemp("revocation")
    with worker_stack(tmp, "revoker", pool=request.param) as stack:
        yield stack


def revoked_count(stack: WorkerStack) -> float:
    return total(
        stack.metrics(), "celery_task_revoked_total", name="noop", queue_name=DEFAULT_QUEUE
    )


def hostnames_revoked(stack: WorkerStack) -> set[str]:
    return {
        dict(labels)["hostname"]
        for (name, labels), value in stack.metrics().items()
        if name == "celery_task_revoked_total" and value > 0
    }


def cancel(stack: WorkerStack, task_id: str, terminate: bool = False) -> None:
    response = stack.api.delete(f"/v1/tasks/{task_id}", params={"terminate": terminate})
    assert response.status_code == 202, response.text


def assert_counted_once_more(stack: WorkerStack, before: float) -> None:
    wait_until(lambda: revoked_count(stack) == before + 1, 20, "the revocation to be counted", 0.2)
    assert hostnames_revoked(stack) == {socket.gethostname()}  # the host, as celery-exporter
    assert stack.logged_errors() == []


def test_a_queued_task_revoked_is_counted(stack: WorkerStack) -> None:
    before = revoked_count(stack)
    # One pool process, busy: the next task waits in the queue until the revoke reaches it.
    busy = stack.api.post("/v1/tasks/noop", json={"sleep_seconds": 1.5}).json()["id"]
    wait_for_status(stack.api, busy, {"started"})
    queued = stack.api.post("/v1/tasks/noop", json={"echo": "never"}).json()["id"]
    cancel(stack, queued)
    wait_for_status(stack.api, busy)
    assert_counted_once_more(stack, before)
    assert stack.api.get(f"/v1/tasks/{queued}").json()["status"] == "revoked"


def test_a_countdown_task_revoked_is_counted(stack: WorkerStack) -> None:
    before = revoked_count(stack)
    delayed = stack.api.post("/v1/tasks/noop", json={}, params={"countdown": 1}).json()["id"]
    cancel(stack, delayed)
    assert_counted_once_more(stack, before)
    assert stack.api.get(f"/v1/tasks/{delayed}").json()["status"] == "revoked"


def test_a_running_task_terminated_is_counted(stack: WorkerStack) -> None:
    before = revoked_count(stack)
    running = stack.api.post("/v1/tasks/noop", json={"sleep_seconds": 30}).json()["id"]
    wait_for_status(stack.api, running, {"started"})
    cancel(stack, running, terminate=True)
    assert wait_for_status(stack.api, running)["status"] == "revoked"
    assert_counted_once_more(stack, before)


def test_a_queued_task_revoked_from_celery_cli_is_counted(stack: WorkerStack) -> None:
    """``celery control revoke ID`` while the worker is busy: answered at once (the inline
    pool's listener answers for its busy event loop), and the task is skipped in its turn."""
    before = revoked_count(stack)
    busy = stack.api.post("/v1/tasks/noop", json={"sleep_seconds": 30}).json()["id"]
    wait_for_status(stack.api, busy, {"started"})
    queued = stack.api.post("/v1/tasks/noop", json={"echo": "never"}).json()["id"]
    command = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "control", "revoke"]
    env = courier_env({"COURIER_REDIS_URL": stack.redis_url})
    done = subprocess.run([*command, queued], env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "flagged as revoked" in done.stdout and queued in done.stdout
    cancel(stack, busy, terminate=True)
    assert wait_for_status(stack.api, queued)["status"] == "revoked"
    wait_until(lambda: revoked_count(stack) == before + 2, 20, "both revocations counted", 0.2)
