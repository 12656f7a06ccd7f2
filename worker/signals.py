"""Celery signal handlers: logging set-up for worker and beat processes."""

from __future__ import annotations

from typing import Any

from celery.signals import setup_logging

from worker.core.logging import configure_logging
from worker.core.settings import get_settings


def _setup_logging(**_: Any) -> None:
    # Connecting to setup_logging stops Celery from installing its own plain-text handlers.
    configure_logging(get_settings().log_level)


def connect_signals() -> None:
    setup_logging.connect(_setup_logging, weak=False)
