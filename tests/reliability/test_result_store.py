"""A task's state that Redis did not take is stored again, or the task runs again: never
"failed" for a task whose own code did not fail (issue 16's promise, README Guarantees).

Seen in the Sentinel partition scenario (docs/tests.md, serial run): 2 of 133 tasks read
``failed`` without having failed. The worker's write of SUCCESS met a reply redis-py could not
parse (``InvalidResponse``); Celery's result backend retries only connection errors, so the
error reached Celery's tracer, which took it for the task's failure, stored FAILURE on the next
connection and acknowledged the message. A partition cannot be timed onto one write from
outside; a link between the worker and a real redis-server can (``GarblingLink``): it answers
the worker's write of SUCCESS with bytes that are no RESP reply, without passing it to Redis.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import wait_for_status
from tests.utils.processes import (
    POOLS,
    Service,
    wait_until,
)
from tests.utils.redis_link import GarblingLink, linked_stack

# In the value of a SUCCESS the result backend stores (kombu's JSON): no other write has it.
SUCCESS_WRITE = (b'"status": "SUCCESS"',)
# A worker whose backend gives up after 2 retries (its module is imported by the worker only).
FEW_STORE_RETRIES = "--include=tests.reliability.few_store_retries_worker"
STORE_TRIES = 3  # that worker's tries to store one state: the first and its 2 retries


def stack(
    tmp_path: Path, pool: str, extra_args: tuple[str, ...] = ()
) -> contextlib.AbstractContextManager[tuple[TestClient, GarblingLink, Service]]:
    """A worker reaching a real redis-server through a ``GarblingLink``."""
    return linked_stack(tmp_path, GarblingLink, pool, extra_args)


def submit(api: TestClient, payload: dict[str, Any]) -> str:
    answer = api.post("/v1/tasks/noop", json=payload)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


@pytest.mark.parametrize("pool", POOLS)
def test_a_success_whose_reply_is_garbled_is_stored_again_not_failed(
    tmp_path: Path, pool: str
) -> None:
    """Before the fix: ``failed`` (``InvalidResponse``), the task having succeeded."""
    with stack(tmp_path, pool) as (api, link, worker):
        link.garble(SUCCESS_WRITE, times=1)
        task_id = submit(api, {"echo": "ran"})
        status = wait_for_status(api, task_id, timeout=60)
        assert link.garbled == 1, worker.output()[-3000:]
        assert (status["status"], status["result"]) == ("succeeded", "ran"), status
        assert status["executions"] == 1


@pytest.mark.parametrize("pool", POOLS)
def test_a_success_redis_never_takes_sends_the_task_back_not_to_failed(
    tmp_path: Path, pool: str
) -> None:
    """Every try to store SUCCESS garbled (the first and each retry): the message goes back
    to the queue instead of being acknowledged, and the task runs again and is stored then.
    Its status never reads ``failed`` meanwhile. Before the fix: ``failed`` at the first."""
    # The inline pool's SUCCESS first rides in the call carrying its acknowledgement
    # (worker/core/result_carry.py), then the backend's own tries store it again.
    tries = STORE_TRIES + (1 if pool == "inline" else 0)
    with stack(tmp_path, pool, (FEW_STORE_RETRIES,)) as (api, link, worker):
        link.garble(SUCCESS_WRITE, times=tries)
        task_id = submit(api, {"echo": "ran"})
        seen: list[str] = []

        def finished() -> dict[str, Any] | None:
            body: dict[str, Any] = api.get(f"/v1/tasks/{task_id}").json()
            seen.append(str(body["status"]))
            return body if body["status"] in ("succeeded", "failed") else None

        status = wait_until(finished, 60, "the task to finish")
        output = worker.output()
        assert link.garbled == tries, output[-3000:]
        assert "failed" not in seen, output[-3000:]
        assert (status["status"], status["result"]) == ("succeeded", "ran"), status
        assert status["executions"] == 2  # the attempt Redis never heard of, then this one
        assert "not stored, its message goes back to the queue" in output
