"""The worker's Celery app: ``celery -A worker.celery_app worker|beat|flower``.

Built from the environment at import; the settings and their reasons are in ``celery_config``.
"""

from __future__ import annotations

from worker.core.multiproc import ensure_multiproc_dir

# Before anything imports prometheus_client: pool children must share one metrics directory.
ensure_multiproc_dir("courier-worker-metrics-")

from worker.celery_config import create_celery_app  # noqa: E402
from worker.core.settings import get_settings  # noqa: E402
from worker.signals import connect_signals  # noqa: E402
from worker.supervised import connect_supervised  # noqa: E402

celery_app = create_celery_app(get_settings())
# Workers wait out a Redis restart when storing states and results, rather than failing the
# task they run (the API keeps failing fast with 503: its app does not retry).
celery_app.conf.update(
    result_backend_always_retry=True,
    result_backend_max_retries=120,
    result_backend_base_sleep_between_retries_ms=50,
    result_backend_max_sleep_between_retries_ms=1000,
)
connect_signals(celery_app)
# A child of the inline supervisor (worker/supervisor.py) reports its heartbeat to it.
connect_supervised()
