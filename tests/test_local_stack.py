"""`make up` (deploy/local/up.sh) run for real, as a user at a terminal would.

It gets its own redis-server, free ports and a temp folder of its own (TMPDIR); Ctrl-C is a
SIGINT to its process group, as the terminal sends it. Its parts run in sessions of their own,
so "nothing left" means: no live process in its session or in any session its parts had.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.utils.processes import ROOT, RedisServer, courier_env, free_port, wait_until

UP_SH = ROOT / "deploy" / "local" / "up.sh"
# pytest may itself run with SIGINT ignored (a background job): a terminal's child would not be.
DEFAULT_SIGINT_EXEC = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)
LOGIN_LINE = re.compile(r"^courier:\S+$", re.MULTILINE)
LISTEN = "0A"


def proc_stat(pid: int) -> list[str] | None:
    """Fields after the command name: state, ppid, pgrp, session, ..."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def live_processes() -> dict[int, list[str]]:
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := proc_stat(int(entry.name))) and stat[0] != "Z":
            table[int(entry.name)] = stat
    return table


def descendants(root: int) -> set[int]:
    table = live_processes()
    found, frontier = set(), {root}
    while frontier:
        found |= frontier
        frontier = {pid for pid, stat in table.items() if int(stat[1]) in frontier} - found
    return found


def listening_addresses(pids: set[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state that one of ``pids`` holds."""
    inodes = set()
    for pid in pids:
        with_fds = Path(f"/proc/{pid}/fd")
        try:
            links = [os.readlink(fd) for fd in with_fds.iterdir()]
        except OSError:
            continue  # gone meanwhile
        inodes |= {link[8:-1] for link in links if link.startswith("socket:[")}
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != LISTEN or fields[9] not in inodes:
                continue
            hex_address, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_address)
            # The kernel prints the address as host-order 32-bit words.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add((socket.inet_ntop(family, raw), int(hex_port, 16)))
    return found


class LocalStack:
    """One run of up.sh, in its own process group, output to a file."""

    def __init__(self, workdir: Path, redis_url: str) -> None:
        self.tmpdir = workdir / "tmp"
        self.tmpdir.mkdir()
        self.api_port, self.flower_port, self.metrics_port = free_port(), free_port(), free_port()
        env = courier_env(
            {
                "COURIER_REDIS_URL": redis_url,
                "COURIER_API_PORT": str(self.api_port),
                "FLOWER_PORT": str(self.flower_port),
                "COURIER_WORKER_METRICS_PORT": str(self.metrics_port),
                "TMPDIR": str(self.tmpdir),
                "VENV": str(Path(sys.executable).parents[1]),
            }
        )
        for name in [name for name in env if name.startswith("FLOWER_") and name != "FLOWER_PORT"]:
            del env[name]
        self.log = workdir / "up.log"
        self._log_file = self.log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-c", DEFAULT_SIGINT_EXEC, "bash", str(UP_SH)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.sessions = {self.process.pid}

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float) -> str:
        def shown() -> str | None:
            out = self.output()
            if text in out:
                return out
            if self.process.poll() is not None:
                raise AssertionError(f"up.sh exited ({self.process.returncode}):\n{out}")
            return None

        return wait_until(shown, timeout, f"{text!r} from up.sh", interval=0.02)

    def note_sessions(self) -> set[int]:
        """Every process of the stack now; remembers their sessions for left_behind()."""
        pids = descendants(self.process.pid)
        table = live_processes()
        self.sessions |= {int(table[pid][3]) for pid in pids if pid in table}
        return pids

    def left_behind(self) -> list[int]:
        return [pid for pid, stat in live_processes().items() if int(stat[3]) in self.sessions]

    def interrupt(self) -> None:
        os.killpg(self.process.pid, signal.SIGINT)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def kill(self) -> None:
        """Whatever is still running of this stack, at once (also when a test fails half-way)."""
        self.note_sessions()
        for pid in self.left_behind():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self._log_file.close()


@pytest.fixture
def stack(tmp_path: Path, own_redis: RedisServer) -> Iterator[LocalStack]:
    running = LocalStack(tmp_path, own_redis.url)
    try:
        yield running
    finally:
        running.kill()


def loopback_client() -> httpx.Client:
    return httpx.Client(trust_env=False, timeout=5)


def test_make_up_says_up_when_every_part_answers_and_stops_clean(stack: LocalStack) -> None:
    out = stack.wait_for_output("Courier is up", 90)
    with loopback_client() as client:
        # At once, no retry: "up" means it answers.
        assert client.get(f"http://127.0.0.1:{stack.api_port}/readyz").status_code == 200
        assert client.get(f"http://127.0.0.1:{stack.metrics_port}/readyz").status_code == 200
        logins = LOGIN_LINE.findall(out)
        assert len(logins) == 1, out
        user, password = logins[0].split(":", 1)
        workers = client.get(
            f"http://127.0.0.1:{stack.flower_port}/api/workers", auth=(user, password)
        )
        assert workers.status_code == 200
        # The inline supervisor's children (celery-1@host, ...), as the chart's pods run them.
        assert [name for name in workers.json() if name.startswith("celery-")], workers.text
        assert client.get(f"http://127.0.0.1:{stack.flower_port}/").status_code == 401

    listening = listening_addresses(stack.note_sessions())
    ports = {port for _, port in listening}
    assert {stack.api_port, stack.flower_port, stack.metrics_port} <= ports, listening
    assert {address for address, _ in listening} == {"127.0.0.1"}, listening
    assert "Listening on 127.0.0.1 only" in out

    stack.interrupt()
    stack.wait(60)
    out = stack.output()
    assert "Traceback" not in out and "Exception ignored" not in out, out
    assert "did not stop" not in out, out  # every part stopped on its signal, none was killed
    assert "Courier stopped" in out
    assert list(stack.tmpdir.iterdir()) == []
    wait_until(lambda: not stack.left_behind(), 10, "the stack's processes to be gone")


def test_make_up_names_the_part_that_does_not_come_up_and_stops_the_rest(
    stack: LocalStack,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", stack.api_port))
        taken.listen()
        deadline = time.monotonic() + 90
        while stack.process.poll() is None and time.monotonic() < deadline:
            stack.note_sessions()
            time.sleep(0.1)
        status = stack.wait(5)
    out = stack.output()
    assert status != 0, out
    assert "Courier is up" not in out
    failure = out.index("Courier did not come up: the API (gunicorn)")
    # Its last log lines follow, saying why: gunicorn could not bind the port.
    assert "Connection in use" in out[failure:], out[failure:]
    assert list(stack.tmpdir.iterdir()) == []
    wait_until(lambda: not stack.left_behind(), 10, "the stack's processes to be gone")
