"""The order's life cycle, as pure rules.

    PENDING ──PaymentCompleted──────────▶ APPROVED
    PENDING ──PaymentFailed─────────────▶ REJECTED
    PENDING ──InventoryReservationFailed▶ REJECTED
    PENDING ──DeadlinePassed────────────▶ CANCELLED (reason: timeout)
    PENDING ──CancelRequested───────────▶ CANCELLED (reason: cancelled_by_customer,
                                                      or cancelled_by_operator)
    APPROVED ─CancelRequested───────────▶ CANCELLED (refunded and restocked)

Triggers are either the event types the order service consumes or the two commands it
receives itself (``DeadlinePassed`` from its deadline sweeper, ``CancelRequested`` from
the API). A REJECTED or CANCELLED order never changes again: an event that arrives for
it late (or twice) is recorded in the timeline and has no effect.

A deadline is a promise: once ``deadline_at`` has passed, a participant's reply that
finds the order still PENDING does what the sweeper would have done — CANCELLED with
reason ``timeout`` — whenever the sweeper happens to run. So a payment that completes
after the deadline never approves the order; it is refunded like any other charge of a
cancelled order.
"""

from __future__ import annotations

import enum

DEADLINE_PASSED = "DeadlinePassed"
CANCEL_REQUESTED = "CancelRequested"


#: The start of an order id that finds it (``GET /orders?order_id_prefix=``, sagactl's
#: shortened ids): 8 to 36 characters of its text form, as tables show 8.
ORDER_ID_PREFIX = r"[0-9a-fA-F-]{8,36}"


class OrderStatus(enum.StrEnum):
    PENDING = "PENDING"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        """The saga is over: nothing more will happen unless a customer cancels."""
        return self is not OrderStatus.PENDING


_TRANSITIONS: dict[tuple[OrderStatus, str], OrderStatus] = {
    (OrderStatus.PENDING, "PaymentCompleted"): OrderStatus.APPROVED,
    (OrderStatus.PENDING, "PaymentFailed"): OrderStatus.REJECTED,
    (OrderStatus.PENDING, "InventoryReservationFailed"): OrderStatus.REJECTED,
    (OrderStatus.PENDING, DEADLINE_PASSED): OrderStatus.CANCELLED,
    (OrderStatus.PENDING, CANCEL_REQUESTED): OrderStatus.CANCELLED,
    (OrderStatus.APPROVED, CANCEL_REQUESTED): OrderStatus.CANCELLED,
}


#: The participants' replies that settle a PENDING order.
REPLIES = frozenset({"PaymentCompleted", "PaymentFailed", "InventoryReservationFailed"})


def transition(current: OrderStatus, trigger: str, *, overdue: bool = False) -> OrderStatus | None:
    """The status ``trigger`` moves an order in ``current`` to, or None for no change.
    ``overdue``: the order's deadline has passed (a reply then counts as the deadline)."""
    if overdue and trigger in REPLIES:
        trigger = DEADLINE_PASSED
    return _TRANSITIONS.get((current, trigger))
