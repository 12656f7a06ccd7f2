"""Gunicorn settings, read from COURIER_* variables: ``gunicorn -c python:app.gunicorn_conf``."""

from __future__ import annotations

from worker.core.settings import get_settings

_settings = get_settings()

wsgi_app = "app.main:create_app()"
bind = _settings.api_bind
workers = _settings.api_workers
worker_class = "uvicorn_worker.UvicornWorker"
# SIGTERM: stop accepting, let in-flight requests finish within this many seconds.
graceful_timeout = _settings.api_graceful_timeout
timeout = 60
keepalive = _settings.api_keepalive
# No control socket: it would live in $HOME (read-only in the image) and be shared by every
# gunicorn on the machine; Kubernetes manages the process by signals.
control_socket_disable = True
accesslog = None
loglevel = _settings.log_level.lower()
# gunicorn's own lines as JSON too, like the app's.
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "worker.core.logging.JsonFormatter"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stderr",
        }
    },
    "root": {"handlers": ["stderr"], "level": loglevel.upper()},
    "loggers": {
        "gunicorn.error": {"handlers": ["stderr"], "level": loglevel.upper(), "propagate": False},
    },
}
