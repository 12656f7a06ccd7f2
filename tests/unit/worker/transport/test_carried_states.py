"""What a channel does with carried states a failed call could not write: stored again through
the backend's retried path, until one runs out of retries (Redis away for minutes), after which
the rest are given up at once instead of blocking the event loop for minutes each."""

from __future__ import annotations

import redis

from worker.core.result_carry import CarriedState
from worker.transport.carry import CarriedStates

IDENTITY = ("tcp", "127.0.0.1", 6379, 0, None, None)


def state(tag: str, calls: list[str], fails: bool) -> CarriedState:
    def store_again() -> None:
        calls.append(tag)
        if fails:
            raise redis.ConnectionError("Redis away through the backend's retries")

    return CarriedState(
        key=f"celery-task-meta-{tag}",
        value="{}",
        ttl=60,
        delivery_tag=tag,
        where_delivered=False,
        identity=IDENTITY,
        store_again=store_again,
    )


def test_states_after_one_that_ran_out_of_retries_are_given_up_without_retrying() -> None:
    calls: list[str] = []
    states = [state("a", calls, False), state("b", calls, True), state("c", calls, False)]
    lost = CarriedStates(IDENTITY).store_again(states)
    assert calls == ["a", "b"]  # "c" would have waited out the same outage
    assert lost == {"b", "c"}


def test_states_stored_again_are_not_lost() -> None:
    calls: list[str] = []
    lost = CarriedStates(IDENTITY).store_again([state("a", calls, False), state("b", calls, False)])
    assert (calls, lost) == (["a", "b"], set())
