"""Order service reactions to participants' events (steps 4, c1, c3; c4 when a reply
comes after the order's deadline).

A batch at a time (``saga_kit.reactions``): ``load`` locks the batch's orders (in
order-id order) with whether each is past its deadline by the database's clock — the
sweeper's clock too; each decide function applies one event through the order's life
cycle (``order_svc.domain``); ``save`` writes what changed. Every participant event also
joins its saga's timeline (the observer, ``order_svc.timeline``)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from events import (
    InventoryReservationFailed,
    InventoryReserved,
    OrderApproved,
    OrderCancelled,
    OrderRejected,
    PaymentCompleted,
    PaymentFailed,
)
from events.envelope import Envelope, EventPayload
from order_svc import timeline
from order_svc.domain import OrderStatus, transition
from saga_kit import sql
from saga_kit.db import UnitOfWork
from saga_kit.errors import InvalidEvent
from saga_kit.reactions import Reactions, Replies


@dataclass
class Order:
    status: OrderStatus
    customer_id: str
    #: Its deadline has passed (by the database's clock, the sweeper's too).
    overdue: bool
    reason: str | None
    total: Decimal | None
    #: product → unit price inventory quoted (set by InventoryReserved)
    prices: dict[str, Decimal] = field(default_factory=dict)
    changed: bool = False


@dataclass
class Orders:
    orders: dict[uuid.UUID, Order] = field(default_factory=dict)

    def get(self, event: Envelope[Any]) -> Order:
        order = self.orders.get(event.order_id)
        if order is None:
            raise InvalidEvent(f"{event.event_type} for unknown order {event.order_id}")
        return order


async def load(conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> Orders:
    state = Orders()
    for row in await conn.execute(
        text(
            "SELECT order_id, status, customer_id, reason, total, deadline_at <= clock_timestamp() AS overdue"
            f" FROM orders WHERE order_id IN {sql.UUIDS} ORDER BY order_id FOR UPDATE"
        ),
        {"ids": sql.values(sorted({e.order_id for e in events}))},
    ):
        state.orders[row.order_id] = Order(
            OrderStatus(row.status), row.customer_id, bool(row.overdue), row.reason, row.total
        )
    return state


def save(uow: UnitOfWork, state: Orders) -> None:
    changed = [
        {"o": oid, "s": o.status.value, "r": o.reason, "t": o.total}
        for oid, o in state.orders.items()
        if o.changed
    ]
    if changed:
        uow.write(
            (
                "UPDATE orders o SET status = v.s, reason = v.r, total = v.t, updated_at = clock_timestamp()"
                " FROM json_to_recordset(CAST(%(rows)s AS json)) AS v(o uuid, s text, r text, t numeric)"
                " WHERE o.order_id = v.o"
            ),
            {"rows": sql.rows(changed)},
        )
    prices = [{"o": oid, "p": pid, "u": u} for oid, o in state.orders.items() for pid, u in o.prices.items()]
    if prices:
        uow.write(
            (
                "UPDATE order_items i SET unit_price = v.u"
                " FROM json_to_recordset(CAST(%(rows)s AS json)) AS v(o uuid, p text, u numeric)"
                " WHERE i.order_id = v.o AND i.product_id = v.p"
            ),
            {"rows": sql.rows(prices)},
        )


reactions: Reactions[Orders] = Reactions(load, save, observe=timeline.observe)


def _move(order: Order, event: Envelope[Any], reason: str | None) -> EventPayload | None:
    """Apply the status transition ``event`` causes, if any; return the event that
    announces it. A reply after the deadline cancels the order as the sweeper would
    (``domain``: a deadline is a promise)."""
    new = transition(order.status, event.event_type, overdue=order.overdue)
    if new is None:
        return None
    order.status, order.changed = new, True
    if new is OrderStatus.CANCELLED:
        order.reason = "timeout"
        return OrderCancelled(customer_id=order.customer_id, reason="timeout")
    order.reason = reason
    if new is OrderStatus.APPROVED:
        return OrderApproved(customer_id=order.customer_id)
    return OrderRejected(customer_id=order.customer_id, reason=reason or "rejected")


@reactions.on(InventoryReserved)
def on_inventory_reserved(state: Orders, event: Envelope[InventoryReserved]) -> Replies:
    """Record the prices inventory quoted, so the order shows its total early."""
    order = state.get(event)
    order.total, order.changed = event.payload.total, True
    order.prices.update({line.product_id: line.unit_price for line in event.payload.lines})
    return []


@reactions.on(InventoryReservationFailed)
def on_reservation_failed(state: Orders, event: Envelope[InventoryReservationFailed]) -> Replies:
    announced = _move(state.get(event), event, event.payload.reason)
    return [announced] if announced else []


@reactions.on(PaymentCompleted)
def on_payment_completed(state: Orders, event: Envelope[PaymentCompleted]) -> Replies:
    order = state.get(event)
    announced = _move(order, event, None)
    if isinstance(announced, OrderApproved):
        order.total = event.payload.amount
    return [announced] if announced else []


@reactions.on(PaymentFailed)
def on_payment_failed(state: Orders, event: Envelope[PaymentFailed]) -> Replies:
    announced = _move(state.get(event), event, event.payload.reason)
    return [announced] if announced else []
