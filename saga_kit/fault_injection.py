"""Fault injection for tests and chaos runs (``SAGA_FAULT``, ``ServiceSettings.fault``):
named points in the plumbing where a process can be made to die like a crashed one. Never
set it in production."""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

#: The points a process can be made to die at (``crash_at``).
CRASH_POINTS = (
    "consumer.crash_before_commit",
    "relay.before_publish",
    "relay.after_publish",
    "payment.crash_after_claim",
    "payment.crash_after_call",
)
#: Every fault ``SAGA_FAULT`` may name: the crash points, a consumer pipeline that raises
#: on every batch (saga_kit.consumer), a consumer that loses the first record it takes
#: (saga_kit.faust_app), and the two that take an argument: the first record with a key
#: lost, and each relay batch held back a random time up to that many seconds
#: (saga_kit.outbox; chaos runs).
POINTS = (
    *CRASH_POINTS,
    "consumer.pipeline_error",
    "consumer.drop_first_record",
    "consumer.drop_first_record=<key>",
    "relay.delay=<seconds>",
)


def known(fault: str) -> bool:
    """Does ``fault`` name one of ``POINTS``, with a key or a number of seconds (finite,
    not negative) where it takes one?"""
    name, given, argument = fault.partition("=")
    if not given:
        return fault in POINTS and "<" not in fault
    if name == "consumer.drop_first_record":
        return bool(argument)
    if name == "relay.delay":
        try:
            return 0 <= float(argument) < float("inf")
        except ValueError:
            return False
    return False


def crash_at(fault: str | None, point: str) -> None:
    """SIGKILL this process if ``fault`` names ``point`` (e.g. ``relay.before_publish``,
    ``consumer.crash_before_commit``, ``payment.crash_after_call``): no clean-up runs, as
    in a real crash."""
    assert point in CRASH_POINTS, point
    if fault == point:
        log.error("fault injection: SIGKILL at %s", point)
        os.kill(os.getpid(), signal.SIGKILL)
