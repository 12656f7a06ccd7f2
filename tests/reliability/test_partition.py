"""A worker cut off from Redis by a network partition loses no accepted task (issue 16).

kombu's BRPOP lost the first task submitted after the cut: Redis answered the worker's pending
BRPOP into the dead link, so the message was in no list and not in ``unacked``. Courier's
transport only peeks while it waits, and takes a message in the same step that records it.
"""

from __future__ import annotations

import os

import pytest

from tests.reliability import chaos


@pytest.mark.timeout(300)
@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_a_partitioned_worker_loses_no_accepted_task() -> None:
    figures = chaos.partition(cut_seconds=12.0)
    assert figures.accepted >= 3, figures
    assert (figures.lost, figures.succeeded) == (0, figures.accepted), figures
