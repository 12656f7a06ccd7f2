"""Exceptions with intent: the task runner maps each to an outcome in one place."""

from __future__ import annotations


class TransientError(Exception):
    """A failure worth retrying (network, a 4xx SMTP reply): the runner retries with backoff."""


class PermanentError(Exception):
    """A failure no retry will fix (bad input, a rejected recipient): the task fails at once."""


class InvalidPayload(PermanentError):
    """The message's payload does not match the task's model."""
