"""Redis's MONITOR as a test's witness: which commands a client sent, and which a script ran.

Commands inside a script (``client_type == "lua"``) or a MULTI/EXEC are applied as one step;
a test that wants "atomic" can check that nothing it cares about was sent on its own.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import redis


@contextmanager
def monitored(url: str) -> Iterator[list[dict[str, Any]]]:
    """Collect every command Redis runs inside the ``with`` block (filled when it exits)."""
    commands: list[dict[str, Any]] = []
    ready = threading.Event()
    marker = f"monitor-end-{uuid.uuid4()}"
    client = redis.Redis.from_url(url, socket_timeout=30)

    def collect() -> None:
        with cast(Any, client).monitor() as monitor:
            ready.set()
            while True:
                command = monitor.next_command()
                if marker in command["command"]:
                    return
                commands.append(command)

    thread = threading.Thread(target=collect, daemon=True)
    thread.start()
    try:
        assert ready.wait(10), "MONITOR did not start"  # set once Redis answered MONITOR
        yield commands
    finally:
        client.echo(marker)
        thread.join(30)
        client.close()
    assert not thread.is_alive(), "MONITOR did not end"
