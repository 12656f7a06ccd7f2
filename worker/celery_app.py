"""The worker's Celery app: ``celery -A worker.celery_app worker|beat``.

Built from the environment at import; the settings and their reasons are in ``celery_config``.
"""

from __future__ import annotations

from worker.celery_config import create_celery_app
from worker.core.settings import get_settings
from worker.signals import connect_signals

celery_app = create_celery_app(get_settings())
connect_signals()
