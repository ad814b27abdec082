"""Order service reactions to participants' events (steps 4, c1, c3)."""

from __future__ import annotations

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
from order_svc.domain import OrderStatus, transition
from saga_kit.consumer import Handler
from saga_kit.db import UnitOfWork
from saga_kit.errors import InvalidEvent


async def _lock_order(uow: UnitOfWork, envelope: Envelope[Any]) -> tuple[OrderStatus, str]:
    row = (
        await uow.conn.execute(
            text("SELECT status, customer_id FROM orders WHERE order_id = :o FOR UPDATE"),
            {"o": envelope.order_id},
        )
    ).first()
    if row is None:
        raise InvalidEvent(f"{envelope.event_type} for unknown order {envelope.order_id}")
    return OrderStatus(row.status), row.customer_id


async def _move(uow: UnitOfWork, envelope: Envelope[Any], reason: str | None) -> OrderStatus | None:
    """Apply the status transition ``envelope`` causes, if any; return the new status."""
    current, _ = await _lock_order(uow, envelope)
    new = transition(current, envelope.event_type)
    if new is None:
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
