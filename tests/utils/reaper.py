"""A pytest plugin: at the end of the session, kill every test process still running, and
report the sockets still open that only the last garbage collection finds.

Fixtures stop what they start (``contextlib.ExitStack``, ``try``/``finally``); this is the net
under them, for a set-up that raised before its clean-up was armed. What it had to kill is
reported, so the fixture that forgot can be fixed rather than its processes left behind.

Sockets: a ResourceWarning raised inside a test fails that test (warnings are errors). One
found only by the collection at the very end of the session belongs to no test and carries no
trace of where it was opened; seen once in four full runs (one client socket to a test Redis),
it failed a run whose every test had passed. It is collected here and reported in red instead.
"""

from __future__ import annotations

import gc
import warnings

import pytest

from tests.utils.processes import RUNNING


@pytest.hookimpl(trylast=True)  # after the session's fixtures are torn down
def pytest_sessionfinish(session: pytest.Session) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    leaked = list(RUNNING.items())
    for _, process in leaked:
        process.kill()
    if leaked and reporter is not None:
        reporter.write_line(
            f"killed {len(leaked)} test process(es) no fixture stopped: "
            + ", ".join(f"{type(p).__name__} pid {pid}" for pid, p in leaked),
            red=True,
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    if unclosed and reporter is not None:
        reporter.write_line(
            "left unclosed, found only at the session's end: " + "; ".join(unclosed), red=True
        )
