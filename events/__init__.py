"""The shared contract of the saga: event payloads, the envelope, topics and the codec.

Every service imports its events from here and nowhere else; ``schemas/`` is generated
from these models (``make schemas``) and a test fails when it is stale.
"""

from events.codec import InvalidEvent, decode, encode
from events.envelope import Envelope, EventPayload, new_envelope
from events.inventory import (
    InventoryCommitted,
    InventoryReleased,
    InventoryReservationFailed,
    InventoryReserved,
    PricedLine,
    StockLine,
)
from events.order import (
    CommandRejected,
    OrderApproved,
    OrderCancelled,
    OrderCreated,
    OrderLine,
    OrderRejected,
)
from events.payment import PaymentCompleted, PaymentFailed, PaymentPending, PaymentRefunded, PaymentVoided
from events.registry import EVENT_TYPES, payload_class

__all__ = [
    "EVENT_TYPES",
    "CommandRejected",
    "Envelope",
    "EventPayload",
    "InvalidEvent",
    "InventoryCommitted",
    "InventoryReleased",
    "InventoryReservationFailed",
    "InventoryReserved",
    "OrderApproved",
    "OrderCancelled",
    "OrderCreated",
    "OrderLine",
    "OrderRejected",
    "PaymentCompleted",
    "PaymentFailed",
    "PaymentPending",
    "PaymentRefunded",
    "PaymentVoided",
    "PricedLine",
    "StockLine",
    "decode",
    "encode",
    "new_envelope",
    "payload_class",
]
