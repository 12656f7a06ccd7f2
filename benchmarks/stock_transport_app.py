"""Courier's worker app with kombu's stock Redis transport instead of ``worker.transport``.

Only for the ``drain`` scenario's one-knob comparison (what Courier's own transport costs or
saves): everything else (records, results, acks late, signals) is Courier's as shipped.
"""

from __future__ import annotations

from worker.celery_app import celery_app as app

app.conf.broker_transport = "redis"

__all__ = ["app"]
