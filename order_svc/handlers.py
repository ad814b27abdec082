"""Order service reactions to participants' events (steps 4, c1, c3; c4 when a reply
comes after the order's deadline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from events import (
    InventoryReservationFailed,
    InventoryReserved,
    OrderApproved,
    OrderRejected,
    PaymentCompleted,
    PaymentFailed,
)
from events.envelope import Envelope
from order_svc.cancelling import cancel_in
from order_svc.domain import OrderStatus, transition
from saga_kit.consumer import Handler
from saga_kit.db import UnitOfWork
from saga_kit.errors import InvalidEvent


@dataclass(frozen=True)
class _Order:
    status: OrderStatus
    customer_id: str
    #: Its deadline has passed (by the database's clock, the sweeper's too).
    overdue: bool


async def _lock_order(uow: UnitOfWork, envelope: Envelope[Any]) -> _Order:
    row = (
        await uow.conn.execute(
            text(
                "SELECT status, customer_id, deadline_at <= clock_timestamp() AS overdue"
                " FROM orders WHERE order_id = :o FOR UPDATE"
            ),
            {"o": envelope.order_id},
        )
    ).first()
    if row is None:
        raise InvalidEvent(f"{envelope.event_type} for unknown order {envelope.order_id}")
    return _Order(OrderStatus(row.status), row.customer_id, bool(row.overdue))


async def _move(uow: UnitOfWork, envelope: Envelope[Any], reason: str | None) -> OrderStatus | None:
    """Apply the status transition ``envelope`` causes, if any; return the new status,
    or None when there is none or the reply came after the deadline — then the order is
    cancelled as the sweeper would (``domain``: a deadline is a promise)."""
    order = await _lock_order(uow, envelope)
    new = transition(order.status, envelope.event_type, overdue=order.overdue)
    if new is None:
        return None
    if new is OrderStatus.CANCELLED:
        await cancel_in(uow, envelope.order_id, order.customer_id, "timeout", causation_id=envelope.event_id)
        return None
    await uow.conn.execute(
        text(
            "UPDATE orders SET status = :s, reason = :r, updated_at = clock_timestamp() WHERE order_id = :o"
        ),
        {"s": new.value, "r": reason, "o": envelope.order_id},
    )
    return new


async def on_inventory_reserved(uow: UnitOfWork, envelope: Envelope[InventoryReserved]) -> None:
    """Record the prices inventory quoted, so the order shows its total early."""
    await _lock_order(uow, envelope)
    await uow.conn.execute(
        text("UPDATE orders SET total = :t WHERE order_id = :o"),
        {"t": envelope.payload.total, "o": envelope.order_id},
    )
    for line in envelope.payload.lines:
        await uow.conn.execute(
            text("UPDATE order_items SET unit_price = :p WHERE order_id = :o AND product_id = :pid"),
            {"p": line.unit_price, "o": envelope.order_id, "pid": line.product_id},
        )


async def on_reservation_failed(uow: UnitOfWork, envelope: Envelope[InventoryReservationFailed]) -> None:
    p = envelope.payload
    if await _move(uow, envelope, p.reason) is not None:
        await uow.reply(OrderRejected(customer_id=p.customer_id, reason=p.reason), to=envelope)


async def on_payment_completed(uow: UnitOfWork, envelope: Envelope[PaymentCompleted]) -> None:
    p = envelope.payload
    if await _move(uow, envelope, None) is not None:
        await uow.conn.execute(
            text("UPDATE orders SET total = :t WHERE order_id = :o"),
            {"t": p.amount, "o": envelope.order_id},
        )
        await uow.reply(OrderApproved(customer_id=p.customer_id), to=envelope)


async def on_payment_failed(uow: UnitOfWork, envelope: Envelope[PaymentFailed]) -> None:
    p = envelope.payload
    if await _move(uow, envelope, p.reason) is not None:
        await uow.reply(OrderRejected(customer_id=p.customer_id, reason=p.reason), to=envelope)


HANDLERS: dict[str, Handler] = {
    "InventoryReserved": on_inventory_reserved,
    "InventoryReservationFailed": on_reservation_failed,
    "PaymentCompleted": on_payment_completed,
    "PaymentFailed": on_payment_failed,
}
