"""Start and stop the real processes a scenario needs, all on loopback.

One ``Stack`` owns every process it started and stops them all on exit (even on Ctrl-C or an
exception), each in its own session so a SIGTERM reaches gunicorn's or Celery's children too.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

# The suite's own process helpers, one copy for tests and benchmarks.
from tests.utils.processes import child_pids, free_port, http_ok, wait_until

__all__ = [
    "LOOPBACK", "ROOT", "VENV_BIN", "Stack", "child_pids", "free_port", "http_ok", "log",
    "rss_kib", "stack", "wait_until",
]  # fmt: skip

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"


def log(message: str) -> None:
    """Progress goes to stderr so stdout keeps only the results table."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Stack:
    """The processes of one measurement: started in order, stopped in reverse."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.procs: list[subprocess.Popen[bytes]] = []
        self.tmp = Path(tempfile.mkdtemp(prefix=f"courier-bench-{name}-"))

    def spawn(
        self, args: list[str], env: Mapping[str, str] | None = None, cwd: Path = ROOT
    ) -> subprocess.Popen[bytes]:
        logfile = (self.tmp / f"{len(self.procs)}-{Path(args[0]).name}.log").open("wb")
        proc = subprocess.Popen(
            args,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def log_tail(self, proc: subprocess.Popen[bytes], lines: int = 20) -> str:
        index = self.procs.index(proc)
        for path in self.tmp.glob(f"{index}-*.log"):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
        """SIGTERM (warm shutdown for Celery, graceful for gunicorn), then SIGKILL the group."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def close(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        self.procs.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextmanager
def stack(name: str) -> Iterator[Stack]:
    s = Stack(name)
    try:
        yield s
    finally:
        s.close()
