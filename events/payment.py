"""Events owned by the payment service (topic ``payment.events``)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from events.envelope import EventPayload
from events.order import Cancellation
from events.values import ExternalId, Instant, Money, SafeText

PRODUCER = "payment_svc"


class PaymentCompleted(EventPayload):
    """Step 3: the customer was charged ``amount`` for the order."""

    event_type: ClassVar[str] = "PaymentCompleted"
    producer: ClassVar[str] = PRODUCER

    customer_id: ExternalId
    amount: Money


#: Why a card was declined, as the payment provider said (its ``decline_code``); a code
#: the project does not know is reported as ``card_declined``.
DeclineReason = Literal["insufficient_funds", "unknown_account", "card_declined"]


class PaymentFailed(EventPayload):
    """Step 3, rejected: the payment provider declined the charge (a business answer, not
    an error); nothing was charged; inventory releases, order rejects."""

    event_type: ClassVar[str] = "PaymentFailed"
    producer: ClassVar[str] = PRODUCER

    customer_id: ExternalId
    amount: Money
    reason: DeclineReason


class PaymentPending(EventPayload):
    """Step 3, waiting: the payment provider could not be reached or did not answer (a
    timeout, a 5xx, an outage, the circuit breaker open) and payment keeps trying with the
    same idempotency key — until it answers, or until the order's deadline cancels the
    saga. Emitted when the charge first has to wait, and when a refund first has to (its
    ``reason`` then starts with ``refund:``, its causation the cancellation): at most twice
    per order. It decides nothing."""

    event_type: ClassVar[str] = "PaymentPending"
    producer: ClassVar[str] = PRODUCER

    customer_id: ExternalId
    amount: Money
    #: when payment first failed to reach the provider for this charge or refund
    since: Instant
    #: what went wrong, for people (e.g. ``provider timed out after 2.0 s``)
    reason: Annotated[SafeText, Field(max_length=500)]


class PaymentRefunded(EventPayload):
    """c6: a charge for a cancelled order was returned to the customer."""

    event_type: ClassVar[str] = "PaymentRefunded"
    producer: ClassVar[str] = PRODUCER

    customer_id: ExternalId
    amount: Money


class PaymentVoided(Cancellation):
    """c6: the order was cancelled before payment charged it; payment will never charge it
    (a charge decided later is refused). Nothing was taken, so nothing is refunded — this
    event only makes payment's part of the compensation visible.

    Versions 2 and 3: the cancellation's ``reason`` may be ``cancelled_by_operator``, then
    ``unknown_order``, as in ``OrderCancelled``; each is written as the oldest version
    that has its reason."""

    event_type: ClassVar[str] = "PaymentVoided"
    producer: ClassVar[str] = PRODUCER
