"""The heartbeat between the inline supervisor (``worker/supervisor.py``) and each of its
children: two small files per child.

- The beat, a JSON file a thread of the child rewrites every second: its state (starting,
  consuming or not, for the pod's ``/readyz``) and, by its age, whether the process runs Python
  at all. A task in C code that holds the GIL stops every thread of its process, the inline
  pool's timekeeper included, so the pool cannot stop it; the beat stops too, and that is what
  the supervisor sees from outside.
- The task slot, a fixed-size file the child maps into memory and writes at each task's start
  and end (a memory write, no system call: it costs a task about a microsecond): the task
  running, and when the pool itself would have ended it. A task holding the GIL a while within
  its time limit is left alone, and the one past it is named when its child is killed.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

# The child's beat file, set by the supervisor in each child's environment (the task slot is
# beside it): its presence also tells the child it is supervised (no port of its own, no wipe
# of the shared metrics directory, which its siblings are writing).
HEARTBEAT_ENV = "COURIER_SUPERVISOR_HEARTBEAT"
# Seconds between two beats.
BEAT_INTERVAL = 1.0

STARTING, READY, RECONNECTING, STOPPED = "starting", "ready", "reconnecting", "stopped"

# give_up_at (NaN: no hard limit), then the task id (empty: no task).
_SLOT = struct.Struct("<d64s")


@dataclass(frozen=True)
class Beat:
    """One heartbeat. ``at`` is ``time.monotonic()``: system-wide on Linux, so comparable
    between the child and the supervisor, and immune to clock steps."""

    pid: int
    at: float
    # STARTING until the worker is ready; READY while it consumes; RECONNECTING while its
    # consumer has no broker connection; STOPPED once its blueprint stopped running.
    state: str


@dataclass(frozen=True)
class RunningTask:
    task_id: str
    # When the pool ends the task at the latest (monotonic); None: it has no hard limit.
    give_up_at: float | None


def supervised() -> bool:
    return bool(os.environ.get(HEARTBEAT_ENV))


def slot_path(beat_path: Path) -> Path:
    return beat_path.with_name(f"{beat_path.stem}.task")


def write_beat(path: Path, beat: Beat) -> None:
    """Replace the file in one step: the supervisor never reads half a beat."""
    partial = path.with_name(f"{path.name}.partial")
    partial.write_text(json.dumps(asdict(beat)))
    os.replace(partial, path)


def read_beat(path: Path) -> Beat | None:
    """The last beat, or None when there is none yet (or it cannot be read)."""
    with contextlib.suppress(OSError, ValueError, TypeError):
        return Beat(**json.loads(path.read_text()))
    return None


class TaskSlot:
    """The child's side of the task slot, mapped once."""

    def __init__(self, path: Path) -> None:
        with path.open("w+b") as file:
            file.truncate(_SLOT.size)
            self._map = mmap.mmap(file.fileno(), _SLOT.size)
        self.clear()

    def set(self, task: RunningTask) -> None:
        deadline = math.nan if task.give_up_at is None else task.give_up_at
        self._map[:] = _SLOT.pack(deadline, task.task_id.encode()[:64])

    def clear(self) -> None:
        self._map[:] = _SLOT.pack(math.nan, b"")


def read_slot(path: Path) -> RunningTask | None:
    """The task the child runs, or None (idle, or no slot)."""
    with contextlib.suppress(OSError, struct.error, UnicodeDecodeError):
        deadline, raw = _SLOT.unpack(path.read_bytes()[: _SLOT.size])
        task_id = raw.rstrip(b"\0").decode()
        if task_id:
            return RunningTask(task_id, None if math.isnan(deadline) else deadline)
    return None
