"""Every event type of the system, looked up by its wire name."""

from __future__ import annotations

from events.envelope import EventPayload
from events.inventory import (
    InventoryCommitted,
    InventoryReleased,
    InventoryReservationFailed,
    InventoryReserved,
)
from events.order import CommandRejected, OrderApproved, OrderCancelled, OrderCreated, OrderRejected
from events.payment import PaymentCompleted, PaymentFailed, PaymentPending, PaymentRefunded, PaymentVoided

EVENT_TYPES: dict[str, type[EventPayload]] = {
    cls.event_type: cls
    for cls in (
        OrderCreated,
        OrderApproved,
        OrderRejected,
        OrderCancelled,
        CommandRejected,
        InventoryReserved,
        InventoryReservationFailed,
        InventoryCommitted,
        InventoryReleased,
        PaymentCompleted,
        PaymentFailed,
        PaymentPending,
        PaymentRefunded,
        PaymentVoided,
    )
}


def payload_class(event_type: str) -> type[EventPayload] | None:
    return EVENT_TYPES.get(event_type)
