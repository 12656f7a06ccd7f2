"""A pytest plugin: at the end of the session, kill every test process still running, and
report the sockets still open that only the last garbage collection finds.

Fixtures stop what they start (``contextlib.ExitStack``, ``try``/``finally``); this is the net
under them, for a set-up that raised before its clean-up was armed. What it had to kill is
reported, so the fixture that forgot can be fixed rather than its processes left behind.

Sockets: a ResourceWarning raised inside a test fails that test (warnings are errors). One
found only by the collection at the very end of the session belongs to no test and carries no
trace of where it was opened; seen once in four full runs (one client socket to a test Redis),
it failed a run whose every test had passed. It is collected here and reported in red instead.
The garbage collector is paused from the last test's teardown to that collection: an automatic
collection in between (when one runs depends on how many objects were made, so loading a plugin
such as pytest-xdist was enough to bring one there every time) handed such a socket to pytest's
unraisable-exception hook, which fails the run at its very end.
"""

from __future__ import annotations

import gc
import warnings

import pytest

from tests.utils.processes import RUNNING

_PAUSED_GC = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    result = yield  # after every teardown, pytest's collection of unraisable exceptions too
    if nextitem is None and gc.isenabled():
        gc.disable()  # until pytest_sessionfinish's own collection, below
        item.session.stash[_PAUSED_GC] = True
    return result


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
    if session.stash.get(_PAUSED_GC, False):
        gc.enable()
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    if unclosed and reporter is not None:
        reporter.write_line(
            "left unclosed, found only at the session's end: " + "; ".join(unclosed), red=True
        )
