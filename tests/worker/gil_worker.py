"""Imported by a worker started with ``GIL_INCLUDE``: a task that holds the GIL in C code.

``ctypes.PyDLL`` calls a C function without releasing the GIL (unlike ``CDLL``), so libc's
``sleep`` blocks every thread of the process: the inline pool's timekeeper cannot send its
interrupt, and the supervised child's heartbeat stops, as with a C extension that loops
without releasing the GIL.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from pydantic import BaseModel

from tests.worker.gil_names import HOLDS_GIL_TASK
from worker.celery_app import celery_app
from worker.core.settings import get_settings
from worker.registry import TaskContext, TaskSpec
from worker.runner import WorkerResources, bind_task


class Seconds(BaseModel):
    seconds: int


def holds_gil(payload: Seconds, ctx: TaskContext) -> int:
    libc = ctypes.PyDLL(ctypes.util.find_library("c"))
    return int(libc.sleep(payload.seconds))


bind_task(
    celery_app,
    TaskSpec(
        name=HOLDS_GIL_TASK,
        func=holds_gil,
        payload=Seconds,
        description="Sleeps in C for the given seconds, holding the GIL.",
    ),
    WorkerResources(get_settings()),
)
