"""What every peer script shares: the Redis URL, the completion counter, the CLI shape."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

DONE_KEY = "bench:done"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def main(enqueue: Callable[[int], None]) -> None:
    """``python <script> enqueue N``: the worker side is started by the framework's own CLI."""
    if len(sys.argv) != 3 or sys.argv[1] != "enqueue":
        raise SystemExit(f"usage: {sys.argv[0]} enqueue N")
    enqueue(int(sys.argv[2]))
