"""``app.signal_dispatch.send`` calls the receivers ``Signal.send`` calls, as it calls them."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from typing import Any

import pytest
from celery.utils.dispatch.signal import Signal

from app import signal_dispatch

Calls = list[tuple[str, dict[str, Any]]]


def _receiver(calls: Calls, name: str, raises: bool = False) -> Callable[..., None]:
    def receive(**kwargs: Any) -> None:
        calls.append((name, kwargs))
        if raises:
            raise RuntimeError(f"{name} failed")

    return receive


def _both(signal: Signal, sender: str, **named: Any) -> tuple[Calls, Calls]:
    """The calls ``Signal.send`` makes, then those ``signal_dispatch.send`` makes."""
    theirs: Calls = []
    ours: Calls = []
    for calls, send in ((theirs, _celery_send), (ours, signal_dispatch.send)):
        _RECORD[:] = [calls]
        send(signal, sender, **named)
    return theirs, ours


def _celery_send(signal: Signal, sender: str, **named: Any) -> None:
    signal.send(sender=sender, **named)


_RECORD: list[Calls] = []


def _recorded(name: str, raises: bool = False) -> Callable[..., None]:
    def receive(**kwargs: Any) -> None:
        _RECORD[0].append((name, kwargs))
        if raises:
            raise RuntimeError(f"{name} failed")

    return receive


def test_the_same_receivers_are_called_with_the_same_arguments() -> None:
    signal = Signal(name="test_signal")
    specific = "noop"
    signal.connect(_recorded("any"), weak=False)
    signal.connect(_recorded("noop only"), sender=specific, weak=False)
    signal.connect(_recorded("other only"), sender="other", weak=False)
    for sender in ("noop", "other", "third", "noop"):  # found, then kept
        theirs, ours = _both(signal, sender, body=(1,), headers={"h": 1})
        assert ours == theirs
        assert next(name for name, _ in ours) == "any"


def test_receivers_connected_or_disconnected_later_are_seen() -> None:
    signal = Signal(name="test_signal")
    first = _recorded("first")
    signal.connect(first, weak=False, dispatch_uid="first")
    assert _both(signal, "noop", x=1)[1] == [
        ("first", {"signal": signal, "sender": "noop", "x": 1})
    ]
    signal.connect(_recorded("second"), weak=False, dispatch_uid="second")
    theirs, ours = _both(signal, "noop", x=2)
    assert ours == theirs and [name for name, _ in ours] == ["first", "second"]
    signal.disconnect(first, dispatch_uid="first")
    theirs, ours = _both(signal, "noop", x=3)
    assert ours == theirs and [name for name, _ in ours] == ["second"]


def test_a_failing_receiver_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    signal = Signal(name="test_signal")
    signal.connect(_recorded("fails", raises=True), weak=False)
    signal.connect(_recorded("after"), weak=False)
    with caplog.at_level(logging.ERROR):
        theirs, ours = _both(signal, "noop", x=1)
    assert ours == theirs and [name for name, _ in ours] == ["fails", "after"]
    logged = [r.getMessage() for r in caplog.records if "Signal handler" in r.getMessage()]
    assert len(logged) == 2 and logged[0] == logged[1]


def test_a_weak_receiver_dies_as_with_celery() -> None:
    signal = Signal(name="test_signal")
    calls: Calls = []
    receiver = _receiver(calls, "weak")
    signal.connect(receiver)  # weak by default
    signal_dispatch.send(signal, "noop", x=1)
    assert [name for name, _ in calls] == ["weak"]
    del receiver
    gc.collect()
    signal_dispatch.send(signal, "noop", x=2)
    assert [name for name, _ in calls] == ["weak"]
