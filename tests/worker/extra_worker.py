"""Imported by a worker started with ``extra_tasks.INCLUDE`` (never by the test process:
importing ``worker.celery_app`` builds an app and patches kombu for the whole process)."""

from __future__ import annotations

from tests.worker.extra_tasks import bind_extra_tasks
from worker.celery_app import celery_app
from worker.core.settings import get_settings

bind_extra_tasks(celery_app, get_settings())
