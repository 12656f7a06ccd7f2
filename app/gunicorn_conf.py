"""Gunicorn settings, read from COURIER_* variables: ``gunicorn -c python:app.gunicorn_conf``."""

from __future__ import annotations

from typing import Any

from worker.core.multiproc import ensure_multiproc_dir

# Before prometheus_client is imported anywhere: every worker process writes to one directory.
ensure_multiproc_dir("courier-api-metrics-")

from worker.core.multiproc import mark_process_dead, wipe_multiproc_dir  # noqa: E402
from worker.core.settings import get_settings  # noqa: E402

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


def on_starting(server: Any) -> None:
    wipe_multiproc_dir()


def post_fork(server: Any, worker: Any) -> None:
    # The tracing SDK's exporter thread does not survive fork: start it in each worker.
    from app.main import API_SERVICE_NAME
    from worker.core.tracing.setup import init_tracing

    init_tracing(API_SERVICE_NAME)


def worker_exit(server: Any, worker: Any) -> None:
    from worker.core.tracing.setup import flush_tracing

    flush_tracing()


def child_exit(server: Any, worker: Any) -> None:
    # Live gauges (requests in progress) of a dead worker must stop counting.
    mark_process_dead(worker.pid)
