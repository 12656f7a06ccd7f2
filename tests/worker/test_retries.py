"""The runner's retry rule, against a real worker: TransientError is always retried; and what a
failure with an exception Courier does not raise leaves in the metrics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import enqueue, wait_for_status
from tests.utils.prom import label_values, total
from tests.worker.extra_tasks import (
    ALWAYS_TRANSIENT_RETRIES,
    ALWAYS_TRANSIENT_TASK,
    INCLUDE,
    RAISES_VALUE_ERROR_TASK,
)
from tests.worker.stack import WorkerStack, worker_stack

FAILURES = "courier_task_failures_total"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerStack]:
    with worker_stack(tmp_path_factory.mktemp("retries"), "retrier", extra_args=(INCLUDE,)) as s:
        yield s


def test_transient_error_is_retried_without_retry_on_then_fails(stack: WorkerStack) -> None:
    # The producer's own path (record + message), as for any task the API knows.
    task_id = enqueue(stack.api, ALWAYS_TRANSIENT_TASK, {})
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
    assert total(samples, FAILURES, name=ALWAYS_TRANSIENT_TASK) == 1


def test_a_failure_with_a_new_exception_counts_on_a_series_that_existed_at_zero(
    stack: WorkerStack,
) -> None:
    """celery_task_failed_total{exception="ValueError"} is born at its first increment (as in
    celery-exporter), which rate() cannot see; courier_task_failures_total, the failure ratio's
    source, was there at 0 before it."""
    before = stack.metrics()
    labels = {"name": RAISES_VALUE_ERROR_TASK}
    existing = [v for (n, ls), v in before.items() if n == FAILURES and ls >= labels.items()]
    assert existing == [0]
    assert "ValueError" not in label_values(before, "celery_task_failed_total", "exception")
    task_id = enqueue(stack.api, RAISES_VALUE_ERROR_TASK, {})
    done = wait_for_status(stack.api, task_id, timeout=30)
    assert done["error"] == {"type": "ValueError", "message": "a bug in the handler"}
    after = stack.metrics()
    assert total(after, FAILURES, **labels) == 1
    assert total(after, "celery_task_failed_total", exception="ValueError", **labels) == 1
