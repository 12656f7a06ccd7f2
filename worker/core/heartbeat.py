"""The heartbeat between the inline supervisor (``worker/supervisor.py``) and each of its
children: two small files per child.

- The beat, a JSON file a thread of the child rewrites every second: its state (starting,
  consuming or not, for the pod's ``/readyz``), the task running then, and, by its age, whether
  the process runs Python at all. A task in C code that holds the GIL stops every thread of its
  process, the inline pool's timekeeper included, so the pool cannot stop it; the beat stops
  too, and that is what the supervisor sees from outside.
- The task slot, a fixed-size file the child maps into memory and overwrites as each task
  starts (one pack and one memory write, no system call): the last task started, when, and
  when the pool itself would have ended it. Such a task started after the last beat, or named
  by it, is the one running: a task holding the GIL a while within its time limit is left
  alone, and the one past it is named when its child is killed. Nothing is written when a task
  ends (the beat tells the rest), which keeps the cost to one signal receiver per task.
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

# started, give_up_at (NaN: no hard limit), the task id (empty: none yet).
_SLOT = struct.Struct("<dd64s")
_PACK = _SLOT.pack


@dataclass(frozen=True)
class Beat:
    """One heartbeat. Times are ``time.monotonic()``: system-wide on Linux, so comparable
    between the child and the supervisor, and immune to clock steps."""

    pid: int
    at: float
    # STARTING until the worker is ready; READY while it consumes; RECONNECTING while its
    # consumer has no broker connection; STOPPED once its blueprint stopped running.
    state: str
    # The task running at the beat, if any.
    task_id: str | None = None


@dataclass(frozen=True)
class StartedTask:
    """The last task a child started."""

    task_id: str
    started: float
    # When the pool ends the task at the latest; None: it has no hard limit.
    give_up_at: float | None

    def running_at(self, beat: Beat) -> bool:
        """Still running, as far as the last beat can tell: named by it, or started after it
        (a task holding the GIL from its start lets no beat through)."""
        return self.task_id == beat.task_id or self.started > beat.at


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
    """The child's side of the task slot, mapped once; written on every task's path, so it is
    a pack and a slice assignment, nothing more."""

    def __init__(self, path: Path) -> None:
        with path.open("w+b") as file:
            file.truncate(_SLOT.size)
            self._map = mmap.mmap(file.fileno(), _SLOT.size)

    def set(self, task_id: str, started: float, give_up_at: float) -> None:
        """``give_up_at``: NaN for a task without a hard limit."""
        self._map[:] = _PACK(started, give_up_at, task_id.encode())


def read_slot(path: Path) -> StartedTask | None:
    """The last task the child started, or None (none yet, or no slot)."""
    with contextlib.suppress(OSError, struct.error, UnicodeDecodeError):
        started, deadline, raw = _SLOT.unpack(path.read_bytes()[: _SLOT.size])
        task_id = raw.partition(b"\0")[0].decode()
        if task_id:
            return StartedTask(task_id, started, None if math.isnan(deadline) else deadline)
    return None
