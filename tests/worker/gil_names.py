"""Names of the GIL-holding test task, apart from ``gil_worker``: importing that module imports
``worker.celery_app``, which puts the pytest process itself in prometheus-client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``); a test module must only name the task."""

HOLDS_GIL_TASK = "test_holds_gil"
GIL_INCLUDE = "--include=tests.worker.gil_worker"
