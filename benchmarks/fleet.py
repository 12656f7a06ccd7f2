"""A "Deployment" of Courier workers on this machine: scale it to N processes, read its metrics.

Scaling up starts worker processes (each with its own metrics port, like a pod); scaling down
SIGTERMs the newest ones and does not wait: Celery's warm shutdown lets running tasks finish and
kombu restores the unacknowledged (late-ack) messages, as in a pod's termination grace period.
"""

from __future__ import annotations

import re
import subprocess
import urllib.request
from dataclasses import dataclass, field

from benchmarks.procs import LOOPBACK, Stack, http_ok
from benchmarks.services import Redis, Worker, start_courier_worker
from worker.core.names import DEFAULT_QUEUE

BACKLOG = re.compile(
    rf'^courier_queue_backlog\{{[^}}]*queue_name="{DEFAULT_QUEUE}"[^}}]*\}}\s+(\S+)$', re.M
)


@dataclass
class Fleet:
    stack: Stack
    redis: Redis
    env: dict[str, str]
    concurrency: int = 2
    live: list[Worker] = field(default_factory=list)
    terminating: list[subprocess.Popen[bytes]] = field(default_factory=list)
    started: int = 0

    def scale(self, replicas: int) -> None:
        while len(self.live) < replicas:
            self.started += 1
            flags = [f"--concurrency={self.concurrency}"]
            worker = start_courier_worker(
                self.stack, self.redis, flags, self.env, name=f"w{self.started}", wait=False
            )
            self.live.append(worker)
        while len(self.live) > replicas:
            worker = self.live.pop()
            worker.proc.terminate()
            self.terminating.append(worker.proc)
        self.terminating = [p for p in self.terminating if p.poll() is None]

    def ready(self) -> int:
        return sum(http_ok(f"http://{LOOPBACK}:{w.metrics_port}/readyz") for w in self.live)

    def backlog_metric(self) -> float | None:
        """``max by (queue_name)(courier_queue_backlog)`` over every worker's /metrics."""
        values = []
        for worker in self.live:
            try:
                url = f"http://{LOOPBACK}:{worker.metrics_port}/metrics"
                with urllib.request.urlopen(url, timeout=1) as response:
                    text = response.read().decode()
            except OSError:
                continue
            values += [float(v) for v in BACKLOG.findall(text)]
        return max(values) if values else None

    def wait_stopped(self, timeout: float = 60) -> None:
        for proc in self.terminating:
            proc.wait(timeout)
        self.terminating.clear()
