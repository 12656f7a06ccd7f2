"""prometheus-client multiprocess mode for forking servers (gunicorn, Celery prefork).

The directory must be known before the first metric value is created, so entry points call
``ensure_multiproc_dir`` first thing. Each process tree needs its own directory: in a pod
that is the emptyDir mounted at ``PROMETHEUS_MULTIPROC_DIR``; ``make up`` passes one per part
inside its own temp dir (and removes that); elsewhere (tests, several servers on one machine)
a fresh temporary directory, removed at exit.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

from worker.core.heartbeat import supervised

ENV = "PROMETHEUS_MULTIPROC_DIR"


def ensure_multiproc_dir(prefix: str) -> Path:
    if not os.environ.get(ENV):
        path = tempfile.mkdtemp(prefix=prefix)
        os.environ[ENV] = path
        owner = os.getpid()
        # Forked children inherit atexit handlers; only the creator removes the directory.

        def remove() -> None:
            if os.getpid() == owner:
                shutil.rmtree(path, ignore_errors=True)

        atexit.register(remove)
    path_obj = Path(os.environ[ENV])
    path_obj.mkdir(parents=True, exist_ok=True)
    values = sys.modules.get("prometheus_client.values")
    if values is not None:
        # Imported already (Celery's CLI loads Flower's plugin, which imports it): switch the
        # value class now; labelled metrics create their values lazily, with the new class.
        values.ValueClass = values.get_value_class()  # type: ignore[attr-defined]
    return path_obj


def wipe_multiproc_dir() -> None:
    """Drop the files of a previous process tree (a restarted container keeps its emptyDir).
    Not in a child of the inline supervisor: the supervisor wiped the directory before
    starting its children, and a restarted child would drop its siblings' counters."""
    directory = os.environ.get(ENV)
    if directory and not supervised():
        for stale in Path(directory).glob("*.db"):
            stale.unlink(missing_ok=True)


def mark_process_dead(pid: int) -> None:
    if os.environ.get(ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(ENV))
