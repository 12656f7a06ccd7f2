"""Exceptions with intent: the task runner maps each to an outcome in one place."""

from __future__ import annotations


class TransientError(Exception):
    """A failure worth retrying (network, a 4xx SMTP reply): the runner retries it with backoff
    in every task, up to the task's ``max_retries``."""


class PermanentError(Exception):
    """A failure no retry will fix (bad input, a rejected recipient): the task fails at once."""


class InvalidPayload(PermanentError):
    """The message's payload does not match the task's model."""


class MessageLost(PermanentError):
    """The task's message vanished from Redis before any worker started it (a purge, a deleted
    queue list): set by the periodic reconcile, since no worker will ever report on it."""


class DeadLettered(PermanentError):
    """The task's message could not be run as it was (malformed, or naming a task no worker
    here has) and was moved to the dead-letter list: stored as its failure so its status is
    true; requeueing the dead letter clears it."""
