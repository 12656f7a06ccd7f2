"""Celery's publish signals sent as ``Signal.send`` sends them, without finding the receivers
anew on every call.

Celery's publish signals do not cache their receivers: each ``send`` takes the signal's lock,
sweeps dead weak receivers and filters every receiver by sender, and a submit sends two of
them. Here the receivers a sender gets are kept per signal and sender while the signal's list
of receivers is unchanged (``connect``, ``disconnect`` and the sweep all change it), and each
is called as ``send`` calls it: the same arguments, in the same order, an exception logged by
Celery's signal logger and not raised. A signal with weak receivers (kept, they would never
die) or a subclass's own ``send`` is sent by Celery as before.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from celery.utils.dispatch.signal import Signal
from celery.utils.dispatch.signal import (  # type: ignore[attr-defined]
    logger as celery_signal_logger,
)

# (signal, sender) -> (the signal's receivers when the live ones were found, the live ones)
_KEPT: dict[tuple[Signal, str], tuple[list[Any], tuple[Callable[..., Any], ...]]] = {}
_KEPT_MAX = 1024  # senders are task names: a few per deployment


def send(signal: Signal, sender: str, **named: Any) -> None:
    """``signal.send(sender=sender, **named)``, its responses dropped."""
    key = (signal, sender)
    kept = _KEPT.get(key)
    if kept is None or kept[0] != signal.receivers:
        kept = _live(signal, sender)
        if kept is None:
            signal.send(sender=sender, **named)
            return
    for receiver in kept[1]:
        try:
            receiver(signal=signal, sender=sender, **named)
        except Exception as exc:
            celery_signal_logger.exception("Signal handler %r raised: %r", receiver, exc)


def _live(signal: Signal, sender: str) -> tuple[list[Any], tuple[Callable[..., Any], ...]] | None:
    receivers = signal.receivers
    if (
        type(signal).send is not Signal.send
        or type(sender) is not str
        or any(isinstance(receiver, weakref.ReferenceType) for _, receiver in receivers)
    ):
        return None
    kept = (list(receivers), tuple(signal._live_receivers(sender)))  # type: ignore[attr-defined]
    if len(_KEPT) < _KEPT_MAX:
        _KEPT[(signal, sender)] = kept
    return kept
