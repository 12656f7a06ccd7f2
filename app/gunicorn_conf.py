"""Gunicorn settings, read from COURIER_* variables.

``gunicorn -c app/gunicorn_conf.py 'app.main:create_app()'``
"""

from __future__ import annotations

from worker.core.settings import get_settings

_settings = get_settings()

bind = _settings.api_bind
workers = _settings.api_workers
worker_class = "uvicorn_worker.UvicornWorker"
# SIGTERM: stop accepting, let in-flight requests finish within this many seconds.
graceful_timeout = _settings.api_graceful_timeout
timeout = 60
keepalive = _settings.api_keepalive
accesslog = None
errorlog = "-"
loglevel = _settings.log_level.lower()
