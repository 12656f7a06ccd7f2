"""The runner's retry rule, against a real worker: TransientError is always retried."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.queue import EnqueueOptions
from tests.conftest import wait_for_status
from tests.utils.prom import total
from tests.worker.extra_tasks import ALWAYS_TRANSIENT_RETRIES, ALWAYS_TRANSIENT_TASK, INCLUDE
from tests.worker.stack import WorkerStack, worker_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerStack]:
    with worker_stack(tmp_path_factory.mktemp("retries"), "retrier", extra_args=(INCLUDE,)) as s:
        yield s


def test_transient_error_is_retried_without_retry_on_then_fails(stack: WorkerStack) -> None:
    # The producer's own path (record + message), as for any task the API knows.
    task_id = stack.api.app.state.queue.enqueue(ALWAYS_TRANSIENT_TASK, {}, EnqueueOptions())
    done = wait_for_status(stack.api, task_id, timeout=30)
    assert done["status"] == "failed"
    assert done["error"] == {
        "type": "TransientError",
        "message": f"attempt {ALWAYS_TRANSIENT_RETRIES + 1} failed",
    }
    assert done["retries"] == ALWAYS_TRANSIENT_RETRIES
    assert done["executions"] == ALWAYS_TRANSIENT_RETRIES + 1
    samples = stack.metrics()
    assert total(samples, "celery_task_retried_total", name=ALWAYS_TRANSIENT_TASK) == 2
    assert total(samples, "celery_task_failed_total", name=ALWAYS_TRANSIENT_TASK) == 1
