"""The HTTP load generator: ``wrk`` (Debian package) with a fixed number of connections.

wrk is C and uses little CPU per request, which matters when generator, servers and Redis share
two cores: a Python generator would measure itself. ``make bench`` installs it when missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

POST_NOOP_LUA = """
wrk.method = "POST"
wrk.body = '{"echo": {"n": 1}, "sleep_seconds": 0}'
wrk.headers["Content-Type"] = "application/json"
"""

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclass
class Load:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise RuntimeError("wrk not found: `make bench` installs it (apt-get install wrk)")
    return path


def run_wrk(url: str, seconds: float, connections: int = 32, post: bool = False) -> Load:
    """``connections`` in flight on 2 wrk threads for ``seconds``; wrk stops by itself."""
    args = [
        require_wrk(), "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s",
        "--timeout", "5s", "--latency",
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        if post:
            script = Path(tmp) / "post.lua"
            script.write_text(POST_NOOP_LUA)
            args += ["-s", str(script)]
        out = subprocess.run(
            [*args, url], capture_output=True, text=True, check=True, timeout=seconds + 30
        ).stdout
    return parse_wrk(out)


def parse_wrk(out: str) -> Load:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    errors = 0
    for pattern in (r"Non-2xx or 3xx responses:\s+(\d+)", r"Socket errors:.*?timeout (\d+)"):
        match = re.search(pattern, out)
        errors += int(match.group(1)) if match else 0
    return Load(float(rps.group(1)), _latency(out, "50%"), _latency(out, "99%"), errors)


def _latency(out: str, label: str) -> float:
    match = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    return float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")
