"""Imported by a worker started with ``FEW_STORE_RETRIES`` (never by the test process:
importing ``worker.celery_app`` builds an app for the whole process).

Its result backend gives up storing a state after 2 retries 10 ms apart instead of
``worker/celery_app.py``'s 120 up to a second apart (about a minute), so a test sees in seconds
what a worker does once Redis never took a task's state."""

from __future__ import annotations

from typing import Any

from worker.celery_app import celery_app

MAX_RETRIES = 2

celery_app.conf.update(
    result_backend_max_retries=MAX_RETRIES,
    result_backend_base_sleep_between_retries_ms=10,
    result_backend_max_sleep_between_retries_ms=10,
)
# The backend may exist already (it reads these settings once, when it is made).
_backend: Any = celery_app.backend
_backend.max_retries = MAX_RETRIES
_backend.base_sleep_between_retries_ms = _backend.max_sleep_between_retries_ms = 10
