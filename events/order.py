"""Events owned by the order service (topic ``orders.events``)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Annotated, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from events.envelope import EventPayload
from events.personal import Sealed
from events.values import MAX_LINE_QUANTITY, MAX_ORDER_LINES, ExternalId, Instant, ReasonCode, SafeText

PRODUCER = "order_svc"

#: Why a saga was cancelled (c4): its deadline passed, the customer asked, or an
#: operator did (``cancelled_by_operator``: version 2 of the events that carry it); or a
#: participant answered about an order the order service never placed, so that whatever
#: it holds for it is given back (``unknown_order``: version 3).
CancelReason = Literal["timeout", "cancelled_by_customer", "cancelled_by_operator", "unknown_order"]


LinesT = TypeVar("LinesT", bound="Sequence[OrderLine]")


class OrderLine(BaseModel):
    """A line as the customer asked for it: no price, inventory owns the catalogue."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    product_id: ExternalId
    quantity: Annotated[int, Field(strict=True, ge=1, le=MAX_LINE_QUANTITY)]


def one_line_per_product(lines: LinesT) -> LinesT:
    """The lines of an order asked for (``POST /orders``' body and ``PlaceOrder``): each
    product on one line. Raises ``ValueError`` naming a product given twice: which line
    was meant is unknown, and the two doors decided it differently (the command placed
    such an order, the body was a 422: an attack trial)."""
    seen: set[str] = set()
    for line in lines:
        if line.product_id in seen:
            raise ValueError(f"product_id {line.product_id!r} appears on more than one line")
        seen.add(line.product_id)
    return lines


class OrderCreated(EventPayload):
    """Step 1: an order was placed and is PENDING; starts the saga.

    Version 2 added ``deadline_at``: the moment the order service cancels the saga if it
    is still PENDING (c4). Version 3 added ``personal_data``: the customer's e-mail and
    shipping address, sealed with the customer's data key (never in the clear; null when
    the order has none). Older versions are upcast on read (``events.upcasting``).
    """

    event_type: ClassVar[str] = "OrderCreated"
    schema_version: ClassVar[int] = 3
    producer: ClassVar[str] = PRODUCER

    customer_id: ExternalId
    items: Annotated[tuple[OrderLine, ...], Field(min_length=1, max_length=MAX_ORDER_LINES)]
    deadline_at: Instant
    personal_data: Sealed | None = None


class OrderApproved(EventPayload):
    """Step 4: payment completed, the order is APPROVED; inventory commits the sale."""

    event_type: ClassVar[str] = "OrderApproved"
    producer: ClassVar[str] = PRODUCER

    customer_id: ExternalId


class OrderRejected(EventPayload):
    """c1/c3: the order is REJECTED with the reason given by the failing participant."""

    event_type: ClassVar[str] = "OrderRejected"
    producer: ClassVar[str] = PRODUCER

    customer_id: ExternalId
    reason: ReasonCode


class Cancellation(EventPayload):
    """What ``OrderCancelled`` and ``PaymentVoided`` carry alike: whose order it was and
    why it was cancelled. Versions 2 and 3 of both only added a reason each
    (``cancelled_by_operator``, then ``unknown_order``), so every event is written as the
    oldest version that has its reason (``EventPayload.wire_version``)."""

    schema_version: ClassVar[int] = 3
    oldest_wire_version: ClassVar[int | None] = 1

    customer_id: ExternalId
    reason: CancelReason

    def wire_version(self) -> int:
        return {"cancelled_by_operator": 2, "unknown_order": 3}.get(self.reason, 1)


class OrderCancelled(Cancellation):
    """c4: the order is CANCELLED (deadline passed, customer or operator request); all compensate.

    Version 2 added the reason ``cancelled_by_operator`` (an operator's cancellation was
    recorded as the customer's), version 3 ``unknown_order`` (a participant answered
    about an order the order service never placed). An older event is a valid newer one
    as it is, and each reason is written as the oldest version that has it
    (``wire_version``); a build that reads an older version only dead-letters the newer
    reasons, to be replayed after its upgrade.
    """

    event_type: ClassVar[str] = "OrderCancelled"
    producer: ClassVar[str] = PRODUCER


class CommandRejected(EventPayload):
    """A command on ``orders.commands`` was refused: nothing was done. ``command_id``
    correlates it with the command; ``order_id`` of its envelope is the order the command
    named (or would have placed)."""

    event_type: ClassVar[str] = "CommandRejected"
    producer: ClassVar[str] = PRODUCER

    command_id: uuid.UUID
    command_type: Annotated[SafeText, Field(max_length=100)]
    reason: ReasonCode
    detail: Annotated[SafeText, Field(max_length=1000)]
