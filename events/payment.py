"""Events owned by the payment service (topic ``payment.events``)."""

from __future__ import annotations

from typing import ClassVar, Literal

from events.envelope import EventPayload
from events.order import CancelReason
from events.values import ExternalId, Money

PRODUCER = "payment_svc"


class PaymentCompleted(EventPayload):
    """Step 3: the customer was charged ``amount`` for the order."""

    event_type: ClassVar[str] = "PaymentCompleted"
    producer: ClassVar[str] = PRODUCER

    customer_id: ExternalId
    amount: Money


class PaymentFailed(EventPayload):
    """Step 3, rejected: nothing was charged; inventory releases, order rejects."""

    event_type: ClassVar[str] = "PaymentFailed"
    producer: ClassVar[str] = PRODUCER

    customer_id: ExternalId
    amount: Money
    reason: Literal["insufficient_funds", "unknown_account"]


class PaymentRefunded(EventPayload):
    """c6: a charge for a cancelled order was returned to the customer."""

    event_type: ClassVar[str] = "PaymentRefunded"
    producer: ClassVar[str] = PRODUCER

    customer_id: ExternalId
    amount: Money


class PaymentVoided(EventPayload):
    """c6: the order was cancelled before payment charged it; payment will never charge it
    (a charge decided later is refused). Nothing was taken, so nothing is refunded — this
    event only makes payment's part of the compensation visible."""

    event_type: ClassVar[str] = "PaymentVoided"
    producer: ClassVar[str] = PRODUCER

    customer_id: ExternalId
    reason: CancelReason
