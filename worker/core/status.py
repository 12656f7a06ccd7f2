"""Courier's task status, and how Celery's states map onto it."""

from __future__ import annotations

from enum import StrEnum

from celery import states


class TaskStatus(StrEnum):
    QUEUED = "queued"  # issued and stored in the broker; no worker has started it yet
    STARTED = "started"  # a worker is executing it (STARTED, stored by the start stamp)
    RETRYING = "retrying"  # an attempt failed and a retry is scheduled
    SUCCEEDED = "succeeded"  # finished; ``result`` holds the return value
    FAILED = "failed"  # finished with an error after all retries; ``error`` says why
    REVOKED = "revoked"  # cancelled before or while running

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.REVOKED})

_FROM_CELERY = {
    states.PENDING: TaskStatus.QUEUED,
    states.RECEIVED: TaskStatus.QUEUED,
    states.STARTED: TaskStatus.STARTED,
    states.RETRY: TaskStatus.RETRYING,
    states.SUCCESS: TaskStatus.SUCCEEDED,
    states.FAILURE: TaskStatus.FAILED,
    states.REVOKED: TaskStatus.REVOKED,
    states.REJECTED: TaskStatus.FAILED,
}


def from_celery_state(state: str) -> TaskStatus:
    return _FROM_CELERY.get(state, TaskStatus.QUEUED)
