"""A pytest plugin: at the end of the session, kill every test process still running.

Fixtures stop what they start (``contextlib.ExitStack``, ``try``/``finally``); this is the net
under them, for a set-up that raised before its clean-up was armed. What it had to kill is
reported, so the fixture that forgot can be fixed rather than its processes left behind.
"""

from __future__ import annotations

import pytest

from tests.utils.processes import RUNNING


def pytest_sessionfinish(session: pytest.Session) -> None:
    leaked = list(RUNNING.items())
    for _, process in leaked:
        process.kill()
    if leaked:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"killed {len(leaked)} test process(es) no fixture stopped: " + ", ".join(
            f"{type(p).__name__} pid {pid}" for pid, p in leaked
        )
        if reporter is not None:
            reporter.write_line(message, red=True)
