"""Courier's own Celery pool for one-process workers (``COURIER_WORKER_POOL=inline``)."""

from worker.pool.inline import STUCK_EXIT_CODE, TaskPool

__all__ = ["STUCK_EXIT_CODE", "TaskPool"]
