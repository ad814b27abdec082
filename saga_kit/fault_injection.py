"""Fault injection for tests and chaos runs (``SAGA_FAULT``, ``ServiceSettings.fault``):
named points in the plumbing where a process can be made to die like a crashed one. Never
set it in production."""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)


def crash_at(fault: str | None, point: str) -> None:
    """SIGKILL this process if ``fault`` names ``point`` (e.g. ``relay.before_publish``,
    ``consumer.crash_before_commit``, ``payment.crash_after_call``): no clean-up runs, as
    in a real crash."""
    if fault == point:
        log.error("fault injection: SIGKILL at %s", point)
        os.kill(os.getpid(), signal.SIGKILL)
