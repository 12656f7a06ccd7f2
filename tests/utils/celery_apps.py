"""Closing a test's own Celery app, result backend included."""

from __future__ import annotations

from typing import Any

from celery import Celery


def close_backend(backend: Any) -> None:
    """Close a Redis result backend's pub/sub and pool, if it opened them.

    Nothing in Celery closes them: they stay open until garbage collection, where their
    sockets raise ResourceWarning (an error in this suite) in whichever test happens to be
    running then, not in the one that opened them."""
    consumer = getattr(backend, "result_consumer", None)
    if consumer is not None and getattr(consumer, "_pubsub", None) is not None:
        consumer.stop()
    client = vars(backend).get("client")  # a cached_property: only what was created
    if client is not None:
        client.connection_pool.disconnect()


def close_app(app: Celery) -> None:
    """``app.close()`` closes the broker's pool only; the result backend this thread used
    (Celery keeps one per thread unless it is thread-safe) is closed too."""
    backend: Any = getattr(app, "_backend", None)  # celery-types lacks it; None if never used
    if backend is not None:
        close_backend(backend)
    app.close()
