"""Imported by a worker started with ``--include=tests.worker.long_listener_worker`` (never by
the test process: importing ``worker.celery_app`` builds an app for the whole process).

The inline pool's revoke listener waits a minute for each broadcast instead of a second, so a
stop that waited out that wait, as it once did, takes a minute rather than up to a second: the
test tells "woken" from "waited out" by a margin no loaded machine closes."""

from __future__ import annotations

from worker.pool import revoke_listener

revoke_listener.POLL_SECONDS = 60.0
