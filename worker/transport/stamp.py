"""The start stamp at fetch: a task's start recorded by the script that takes its message.

Courier's worker stamps the start of every attempt (the record's ``started_at`` and attempt
count, Celery's STARTED state; ``worker/core/records.py``) and reads, in the same step, whether
the task was revoked while queued or already finished (a redelivered duplicate). Done by the
pool child in ``task_prerun``, that is one Redis round trip per task besides its result. When
the worker hands a message to a pool child as soon as it takes it, the fetch that takes it can
do the same work in the same script (``scripts.FETCH``); the check rides back with the message
and the channel puts it in the ``START_CHECK_HEADER`` header, which Celery copies into the
task's request (``self.request.courier_start_check``), so the child skips its round trip.

When the worker hands a message over at once: with ``worker_prefetch_multiplier`` 1 (the QoS
credit is the number of pool processes, so a message is only taken for an idle one) and a task
to run now. Otherwise the pool child stamps it as before, at its real start: a prefetched task
would read as started while it waits, and a countdown, ETA or expiring task is held or checked
by Celery in the worker first (``eta``, ``expires``), as is a stamped canvas (``stamped_headers``,
which Celery copies into the state it stores).

Whatever a producer puts in that header is removed by the channel before delivery: only a
fetch's own check reaches the task.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from celery import states

from worker.core.names import CELERY_RESULT_KEY, START_CHECK_HEADER, TASK_RECORD_KEY

__all__ = ["FINISHED", "REVOKED", "STARTED", "START_CHECK_HEADER", "StampSource", "StartStamp"]

# The start checks a fetch returns: the task may run, it was revoked while queued, it had
# already finished (a duplicate).
STARTED, REVOKED, FINISHED = "started", "revoked", "finished"


@dataclass(frozen=True)
class StartStamp:
    """What the fetch needs to stamp as the worker's pool child would.

    ``hostname``: the worker's node name (Celery's ``request.hostname``); ``pid``: the process
    named in STARTED's result (the worker's main process: the child is not chosen yet);
    ``ttl``: records' and results' (``result_expires``); ``tasks``: the names stamped at fetch.
    """

    hostname: str
    pid: int
    ttl: int
    tasks: Collection[str]
    argument: str = field(init=False, repr=False)  # ARGV of scripts.FETCH, built once

    def __post_init__(self) -> None:
        # The fields Celery's backend stores first for STARTED, in its order (``result_extended``
        # adds the request's: the script appends them per message). args and kwargs stay null:
        # they are inside the base64 body, which the script does not decode.
        meta: dict[str, object] = {
            "status": states.STARTED,
            "result": {"pid": self.pid, "hostname": self.hostname},
            "traceback": None,
            "children": [],
            "date_done": None,
        }
        prefix = json.dumps(meta)[:-1]  # without its closing brace
        settings = {
            "prefix": prefix,
            "worker": json.dumps(self.hostname),
            "ttl": self.ttl,
            "tasks": sorted(self.tasks),
            "record": TASK_RECORD_KEY.format(task_id=""),
            "result": CELERY_RESULT_KEY.format(task_id=""),
        }
        object.__setattr__(self, "argument", json.dumps(settings))


# The transport option ``start_stamp``: a callable returning the stamp, or None (no stamping at
# fetch: the child stamps), asked at each fetch; or its dotted path.
StampSource = Callable[[], StartStamp | None]
