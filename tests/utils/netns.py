"""A network link that a test can cut: a network namespace joined to the host by a veth pair.

A process started with ``exec_prefix`` (``ip netns exec <ns> ...``) reaches the host only over
the link, at ``host_address``; ``cut()`` takes the host's end down, so packets either way are
dropped (no refusal, no reset: TCP keeps retrying, as across a real partition) until ``heal()``.
Names and addresses are unique per instance; everything is removed on exit, whatever happened.
Needs root (``ip netns`` works as root on this machine).
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import uuid
from types import TracebackType
from typing import Self


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class NetworkLink:
    def __init__(self) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.namespace = f"courier-{suffix}"
        self.host_link, self.inner_link = f"cv{suffix}h", f"cv{suffix}n"  # at most 15 characters
        # A /30 of its own, well away from the host's networks.
        base = 4 * random.randrange(64)
        subnet = f"10.{random.randrange(200, 250)}.{random.randrange(256)}"
        self.host_address, self.inner_address = f"{subnet}.{base + 1}", f"{subnet}.{base + 2}"
        self._created: list[list[str]] = []  # how to undo each step, in order of creation

    @property
    def exec_prefix(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.namespace)

    def __enter__(self) -> Self:
        try:
            ip("netns", "add", self.namespace)
            self._created.append(["netns", "del", self.namespace])
            ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.inner_link)
            self._created.append(["link", "del", self.host_link])  # takes its peer with it
            ip("link", "set", self.inner_link, "netns", self.namespace)
            ip("addr", "add", f"{self.host_address}/30", "dev", self.host_link)
            ip("link", "set", self.host_link, "up")
            inside = ["netns", "exec", self.namespace, "ip"]
            ip(*inside, "addr", "add", f"{self.inner_address}/30", "dev", self.inner_link)
            ip(*inside, "link", "set", self.inner_link, "up")
            ip(*inside, "link", "set", "lo", "up")
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._remove()

    def cut(self) -> None:
        ip("link", "set", self.host_link, "down")

    def heal(self) -> None:
        ip("link", "set", self.host_link, "up")

    def _remove(self) -> None:
        for undo in reversed(self._created):
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                ip(*undo)
        self._created.clear()
