"""What the workers really ran, written outside Redis: loaded by a chaos worker with ``INCLUDE``.

A failover can roll Redis back, and with it the task records that count executions; the chaos
suite needs a witness the fault cannot touch. Every pool process appends one line when a task
starts and one when its body returned (``task_prerun``, ``task_success``) to a file of its own
under ``$CHAOS_LEDGER_DIR``: ``start|done <task id> <unix time>``. Never imported by the
API or by production workers.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from celery.signals import task_prerun, task_success

# The worker option that loads this module, and where it writes.
INCLUDE = "--include=tests.reliability.chaos_ledger"
LEDGER_DIR = "CHAOS_LEDGER_DIR"


def _append(event: str, task_id: str) -> None:
    directory = os.environ.get(LEDGER_DIR)
    if not directory or not task_id:
        return
    # One file per process and one write per line: no interleaving, nothing to lock.
    with (Path(directory) / f"ledger-{os.getpid()}.log").open("a") as ledger:
        ledger.write(f"{event} {task_id} {time.time():.3f}\n")


@task_prerun.connect(weak=False)
def _started(task_id: str | None = None, **_: Any) -> None:
    _append("start", task_id or "")


@task_success.connect(weak=False)
def _done(sender: Any = None, **_: Any) -> None:
    request = getattr(sender, "request", None)
    _append("done", getattr(request, "id", None) or "")


def read_ledger(directory: Path) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Every start and every completion seen so far, by task id (times in unix seconds)."""
    starts: dict[str, list[float]] = {}
    done: dict[str, list[float]] = {}
    for path in sorted(directory.glob("ledger-*.log")):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) != 3:
                continue  # a line being written right now
            event, task_id, at = parts
            (starts if event == "start" else done).setdefault(task_id, []).append(float(at))
    return starts, done
