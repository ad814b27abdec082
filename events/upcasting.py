"""Schema evolution: older versions of an event are upcast to the current one on read.

A producer writes the oldest ``schema_version`` that can carry the event
(``EventPayload.wire_version``, usually the current one); a consumer may meet older
versions (those, events written before a deploy, replayed dead letters, a lagging producer). The
codec upcasts them step by step — v1 → v2 → … — before validating, so handlers only ever
see the current model. An event newer than this build, or an old version without an
upcaster, is invalid and gets dead-lettered with that reason.

Rules for adding a version (see README, "Changing an event"):

1. Bump ``schema_version`` on the payload class and change its fields.
2. Register an upcaster from the previous version here, working on the raw JSON envelope
   (a plain dict), and returning the envelope of the next version.
3. Add a test that decodes a real previous-version message (tests/unit/test_upcasting.py).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

RawEnvelope = dict[str, Any]
Upcaster = Callable[[RawEnvelope], RawEnvelope]

#: Every version-1 producer placed orders with the then fixed deadline of 30 seconds.
V1_ORDER_DEADLINE = timedelta(seconds=30)


def _order_created_v1_to_v2(envelope: RawEnvelope) -> RawEnvelope:
    """v2 added ``deadline_at``; a v1 order's deadline was ``occurred_at`` + 30 s."""
    occurred_at = datetime.fromisoformat(str(envelope["occurred_at"]))
    payload = dict(envelope["payload"])
    payload.setdefault("deadline_at", (occurred_at + V1_ORDER_DEADLINE).isoformat())
    return {**envelope, "schema_version": 2, "payload": payload}


def _order_created_v2_to_v3(envelope: RawEnvelope) -> RawEnvelope:
    """v3 added ``personal_data`` (sealed); a v2 order had none."""
    payload = dict(envelope["payload"])
    payload.setdefault("personal_data", None)
    return {**envelope, "schema_version": 3, "payload": payload}


def _widened(to_version: int) -> Upcaster:
    """A version that only widened what a field may hold (a new value of a literal): the
    previous version's payload is valid as it is; only the version changes."""

    def step(envelope: RawEnvelope) -> RawEnvelope:
        return {**envelope, "schema_version": to_version}

    return step


#: (event_type, from_version) → the function producing version from_version + 1.
UPCASTERS: dict[tuple[str, int], Upcaster] = {
    ("OrderCreated", 1): _order_created_v1_to_v2,
    ("OrderCreated", 2): _order_created_v2_to_v3,
    # v2 added the cancel reason "cancelled_by_operator", v3 "unknown_order"
    ("OrderCancelled", 1): _widened(2),
    ("PaymentVoided", 1): _widened(2),
    ("OrderCancelled", 2): _widened(3),
    ("PaymentVoided", 2): _widened(3),
}


class NoUpcastPath(Exception):
    def __init__(self, event_type: str, version: int) -> None:
        super().__init__(f"no upcaster from version {version} of {event_type}")


def upcast(envelope: RawEnvelope, target_version: int) -> RawEnvelope:
    """Apply upcasters until ``envelope`` is at ``target_version``."""
    event_type = str(envelope["event_type"])
    version = int(envelope["schema_version"])
    while version < target_version:
        step = UPCASTERS.get((event_type, version))
        if step is None:
            raise NoUpcastPath(event_type, version)
        envelope = step(envelope)
        version = int(envelope["schema_version"])
    return envelope
