"""A /readyz watched from a thread, for tests that check when a service said 503 and 200."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class ReadyzWatch:
    """Polls a /readyz every 0.1 s in a thread (``run``): (wall-clock time the request was
    sent, status code; 0 = no answer). Wall-clock, so that moments read from the services' logs
    compare too. The send time, not the answer's: a 200 checked just before a fault can arrive
    after it (a loaded machine delays the reply), and must not read as a 200 during the fault."""

    url: str
    seen: list[tuple[float, int]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=3) as http:
            while not self.stop.is_set():
                sent = time.time()
                try:
                    code = http.get(self.url).status_code
                except httpx.HTTPError:
                    code = 0
                self.seen.append((sent, code))
                time.sleep(0.1)

    def codes_between(self, start: float, end: float = float("inf")) -> list[int]:
        return [code for at, code in self.seen if start <= at <= end]
