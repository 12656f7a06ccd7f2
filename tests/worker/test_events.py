"""Task events: off by default (like Celery), and turned on remotely the way Flower does it.

Flower's ``--enable_events`` (its default) broadcasts ``enable_events`` to every worker every
few seconds; Courier leaves ``COURIER_TASK_EVENTS`` off, so this broadcast is what must work.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from celery import Celery

from tests.conftest import settings_from
from tests.utils.processes import wait_until
from worker.celery_config import create_celery_app


@pytest.fixture
def control(courier_vars: dict[str, str]) -> Iterator[Celery]:
    app = create_celery_app(settings_from(courier_vars))
    yield app
    app.control.disable_events()  # the session worker goes back to its default
    app.close()


PROBE = "courier-test-probe"  # not a task-* type: never among the events a test looks at
SUBSCRIBE_TIMEOUT = 30.0


def task_events(
    app: Celery, action: Callable[[], str], seconds: float, until_done: bool = False
) -> tuple[str, list[dict[str, object]]]:
    """Run ``action`` (it submits a task and returns its id) while listening on the event
    exchange; returns the id and the task events seen for it within ``seconds`` of the action
    (stops early at its task-succeeded when ``until_done``). Events are pub/sub: only a listener
    already subscribed sees them, hence the listener first, then the action once a probe event of
    our own has come through (the subscription is done in the listener's thread, later on a
    loaded machine than any fixed pause can promise)."""
    seen: list[dict[str, object]] = []
    task_id: list[str] = []
    subscribed = threading.Event()
    deadline = [float("inf")]  # the window opens with the action

    def listen() -> None:
        with app.connection_for_read() as connection:

            def collect(event: dict[str, object]) -> None:
                if event.get("type") == PROBE:
                    subscribed.set()
                elif str(event.get("type", "")).startswith("task-"):
                    seen.append(event)
                    done = event["type"] == "task-succeeded" and event.get("uuid") in task_id
                    receiver.should_stop = receiver.should_stop or (until_done and done)
                # Any event (worker heartbeats too) resets kombu's idle timeout: keep our own.
                if time.monotonic() > deadline[0]:
                    receiver.should_stop = True

            receiver = app.events.Receiver(connection, handlers={"*": collect})
            with contextlib.suppress(TimeoutError):  # socket.timeout: the window closed
                receiver.capture(limit=None, timeout=seconds, wakeup=False)

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    with app.events.default_dispatcher() as dispatcher:

        def probe_received() -> bool:
            dispatcher.send(PROBE)
            return subscribed.wait(0.2)

        wait_until(probe_received, SUBSCRIBE_TIMEOUT, "the event listener to receive a probe")
    deadline[0] = time.monotonic() + seconds
    task_id.append(action())
    listener.join(seconds + 5)
    return task_id[0], [e for e in seen if e.get("uuid") == task_id[0]]


def test_task_events_are_off_until_flower_style_enable_events(
    control: Celery, submit: Callable[..., str]
) -> None:
    _, quiet = task_events(control, lambda: submit("noop", {"echo": "quiet"}), 3)
    assert quiet == [], "events sent although COURIER_TASK_EVENTS is off"

    replies = control.control.enable_events(reply=True, timeout=5)
    assert replies, "no worker answered the enable_events broadcast"
    _, loud = task_events(control, lambda: submit("noop", {"echo": "loud"}), 15, until_done=True)
    assert {"task-received", "task-started", "task-succeeded"} <= {str(e["type"]) for e in loud}
