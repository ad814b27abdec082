"""The order's life cycle, as pure rules.

    PENDING ──PaymentCompleted──────────▶ APPROVED
    PENDING ──PaymentFailed─────────────▶ REJECTED
    PENDING ──InventoryReservationFailed▶ REJECTED

A terminal order never changes again: an event that arrives for it late (or twice) is
recorded in the timeline and has no effect.
"""

from __future__ import annotations

import enum


class OrderStatus(enum.StrEnum):
    PENDING = "PENDING"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self is not OrderStatus.PENDING


_TRANSITIONS: dict[tuple[OrderStatus, str], OrderStatus] = {
    (OrderStatus.PENDING, "PaymentCompleted"): OrderStatus.APPROVED,
    (OrderStatus.PENDING, "PaymentFailed"): OrderStatus.REJECTED,
    (OrderStatus.PENDING, "InventoryReservationFailed"): OrderStatus.REJECTED,
}


def transition(current: OrderStatus, event_type: str) -> OrderStatus | None:
    """The status ``event_type`` moves an order in ``current`` to, or None for no change."""
    return _TRANSITIONS.get((current, event_type))
