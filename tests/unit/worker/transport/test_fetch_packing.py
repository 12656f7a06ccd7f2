"""``worker.transport.channel.FetchPacking``: the fetch packed once says what redis-py would say.

The channel sends ``FETCH`` as bytes it packed itself (its constant part once), so the bytes
must be those redis-py's own packer writes for the same arguments, whatever the limit, the time
and the acknowledgements carried; and a fetch for other lists or settings is packed anew.
"""

from __future__ import annotations

from time import time
from typing import Any

import pytest
from redis.connection import Connection

from worker.transport import scripts
from worker.transport.channel import FetchPacking
from worker.transport.stamp import StartStamp

KEYS = [
    "unacked",
    "unacked_index",
    "courier",
    "courier\x06\x163",
    "courier\x06\x166",
    "courier\x06\x169",
]
STAMP = StartStamp(hostname="w1@hôte", pid=41, ttl=86_400, tasks=["noop", "générer"]).argument


def _redis_py(*args: Any) -> bytes:
    connection: Any = Connection  # redis-py's constructor is untyped
    return b"".join(connection()._command_packer.pack(*args))


@pytest.mark.parametrize(
    ("limit", "now", "acks", "constants"),
    [
        (1, time(), [], ["+courier", "+courier", "+courier", "+courier", STAMP]),
        (32, 1.5, ["a1b2", "tâche-é"], ["+courier", "-courier", "+courier", "-x", ""]),
        (7, 1765000000.123456, ["t"] * 40, ["+q"] * 4 + [STAMP]),
    ],
    # Fixed ids: a parameter read from the clock differs between xdist's processes, which then
    # refuse to run the suite ("Different tests were collected").
    ids=["now", "mixed-flags", "many-acks"],
)
def test_a_packed_fetch_is_byte_for_byte_what_redis_py_sends(
    limit: int, now: float, acks: list[str], constants: list[str]
) -> None:
    packed = FetchPacking(KEYS, constants).command(limit, now, acks)
    expected = _redis_py(
        "EVALSHA", scripts.FETCH_SHA, len(KEYS), *KEYS, limit, now, *constants, 0, *acks
    )
    assert packed == expected


def test_carried_states_are_packed_between_the_constants_and_the_acks() -> None:
    carried: list[str | bytes | int] = [
        2,
        "celery-task-meta-a",
        b'{"status": "SUCCESS"}',
        300,
        "",
        "k",
        "v\xe9",
        0,
        "t",
    ]
    packed = FetchPacking(KEYS, ["+q"] * 4 + [STAMP]).command(3, 2.5, ["t"], carried)
    expected = _redis_py(
        "EVALSHA", scripts.FETCH_SHA, 6, *KEYS, 3, 2.5, *["+q"] * 4, STAMP, *carried, "t"
    )
    assert packed == expected


def test_one_packing_serves_every_fetch_of_its_lists() -> None:
    packing = FetchPacking(KEYS, ["+courier"] * 4 + [STAMP])
    first, second = packing.command(1, 10.0, ["x"]), packing.command(2, 11.0, [])
    assert first != second
    assert second == _redis_py(
        "EVALSHA", scripts.FETCH_SHA, 6, *KEYS, 2, 11.0, *["+courier"] * 4, STAMP, 0
    )
