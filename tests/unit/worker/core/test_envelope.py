"""``worker.core.envelope.check`` against Celery's own request code, in-process.

The contract the consumer relies on: any bytes whatever give either a ``Checked`` or an
``Unfit`` naming one of the bounded reasons, never another exception; and whatever passes can be
turned into Celery's ``Request`` and run the way the worker runs it (time limits unpacked, ETA
and expiry parsed, args and kwargs read) without raising. The end-to-end version, with a real
worker that must survive each message, is ``tests/reliability/test_dead_letters.py``; this one
runs thousands of generated messages in seconds. kombu's in-memory transport turns the raw bytes
into the ``Message`` a Redis channel would deliver (same virtual-channel code as Redis's).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from celery import Celery
from celery.worker.request import Request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu import Connection

from tests.utils.messages import MALFORMED, envelope
from worker.core.envelope import REASONS, UNKNOWN_TASK, Checked, Unfit, check

TASKS = ("noop",)


@pytest.fixture(scope="module")
def celery() -> Celery:
    app = Celery("unit", set_as_current=False)

    # shared=False: a shared task would join every Celery app this process finalizes later
    # (test_canvas checks that Courier's tasks stay on Courier's apps).
    @app.task(name="noop", shared=False)
    def noop(*args: Any, **kwargs: Any) -> None:
        return None

    return app


@pytest.fixture(scope="module")
def channel() -> Iterator[Any]:
    with Connection("memory://") as connection:
        yield connection.default_channel


def outcome(raw: bytes) -> Checked | Unfit:
    try:
        return check(raw, TASKS)
    except Unfit as unfit:
        return unfit


def run_as_the_worker_would(celery: Celery, channel: Any, checked: Checked) -> None:
    """What Celery's consumer and pool do with a delivered message before the task runs."""
    message = channel.message_to_python(checked.envelope)
    request = Request(message, app=celery, task=celery.tasks[checked.task])
    assert isinstance(request.args, list)
    assert isinstance(request.kwargs, dict)
    if request.time_limits:  # Request.execute_using_pool unpacks the pair
        soft, hard = request.time_limits
        assert soft is None or soft >= 0
        assert hard is None or hard >= 0
    assert request.eta is None or isinstance(request.eta, datetime)
    assert request.expires is None or isinstance(request.expires, datetime)
    # The trace merges embed into the task's context and builds signatures from these.
    internals: Any = request  # celery-types lacks Request._payload: (args, kwargs, embed)
    _, _, embed = internals._payload
    for name in ("callbacks", "errbacks", "chain"):
        signatures = embed.get(name)
        assert signatures is None or all(isinstance(s, dict) for s in signatures)
    assert request.chord is None or isinstance(request.chord, dict)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=MALFORMED)
def test_any_message_is_checked_or_unfit_for_a_bounded_reason_and_never_raises_else(
    celery: Celery, channel: Any, raw: bytes
) -> None:
    result = outcome(raw)
    if isinstance(result, Unfit):
        assert result.reason in REASONS
        assert result.detail
    else:
        run_as_the_worker_would(celery, channel, result)


TIME = st.datetimes().map(datetime.isoformat)
FITTING_HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "timelimit": st.tuples(st.none() | st.floats(0, 1e6), st.none() | st.floats(0, 1e6)).map(
            list
        ),
        "eta": st.none() | TIME,
        "expires": st.none() | TIME,
        "retries": st.integers(0, 1000),
        "ignore_result": st.booleans(),
        "argsrepr": st.text(max_size=20),
        "root_id": st.none() | st.uuids().map(str),
        "group_index": st.integers(),
    },
)


@settings(max_examples=500, deadline=None)
@given(headers=FITTING_HEADERS, args=st.lists(st.integers(), max_size=3))
def test_every_well_formed_message_passes_and_runs(
    celery: Celery, channel: Any, headers: dict[str, Any], args: list[int]
) -> None:
    body = [args, {"n": 1}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    raw = json.dumps(envelope(body, headers)).encode()
    result = outcome(raw)
    assert isinstance(result, Checked), result
    run_as_the_worker_would(celery, channel, result)


def test_a_task_this_worker_does_not_have_is_unfit_as_unknown() -> None:
    raw = json.dumps(envelope(headers={"task": "not.here"})).encode()
    result = outcome(raw)
    assert isinstance(result, Unfit) and result.reason == UNKNOWN_TASK
