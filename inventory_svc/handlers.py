"""Inventory reactions: reserve on OrderCreated (2), commit on OrderApproved (5),
release on PaymentFailed (c2)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from events import (
    InventoryCommitted,
    InventoryReleased,
    InventoryReservationFailed,
    InventoryReserved,
    OrderApproved,
    OrderCreated,
    PaymentFailed,
    StockLine,
)
from events.envelope import Envelope
from inventory_svc.reservation import (
    Refuse,
    StockLevel,
    plan_reservation,
    requested_quantities,
)
from saga_kit.consumer import Handler
from saga_kit.db import UnitOfWork


async def on_order_created(uow: UnitOfWork, envelope: Envelope[OrderCreated]) -> None:
    """Reserve every line or none. Rows are locked in product-id order, so concurrent
    reservations never deadlock, and the CHECK (available >= 0) backs the rule."""
    order = envelope.payload
    wanted = requested_quantities(order.items)
    rows = await uow.conn.execute(
        text(
            "SELECT product_id, available, price FROM products"
            " WHERE product_id = ANY(:ids) ORDER BY product_id FOR UPDATE"
        ),
        {"ids": list(wanted)},
    )
    stock = {r.product_id: StockLevel(available=r.available, price=r.price) for r in rows}
    decision = plan_reservation(wanted, stock)
    if isinstance(decision, Refuse):
        await uow.reply(
            InventoryReservationFailed(
                customer_id=order.customer_id,
                reason=decision.reason,
                product_ids=decision.product_ids,
            ),
            to=envelope,
        )
        return
    for line in decision.lines:
        await uow.conn.execute(
            text(
                "UPDATE products SET available = available - :q, reserved = reserved + :q,"
                " updated_at = clock_timestamp() WHERE product_id = :p"
            ),
            {"q": line.quantity, "p": line.product_id},
        )
        await uow.conn.execute(
            text(
                "INSERT INTO reservations (order_id, product_id, quantity, unit_price, status)"
                " VALUES (:o, :p, :q, :price, 'RESERVED')"
            ),
            {
                "o": envelope.order_id,
                "p": line.product_id,
                "q": line.quantity,
                "price": line.unit_price,
            },
        )
    await uow.reply(
        InventoryReserved(customer_id=order.customer_id, lines=decision.lines, total=decision.total),
        to=envelope,
    )


async def _settle(uow: UnitOfWork, envelope: Envelope[Any], *, to: str) -> tuple[StockLine, ...]:
    """Move this order's RESERVED lines to ``to`` (COMMITTED or RELEASED) and adjust the
    product buckets; lines already settled are left alone, which makes it idempotent."""
    moved = await uow.conn.execute(
        text(
            "UPDATE reservations SET status = :to, updated_at = clock_timestamp()"
            " WHERE order_id = :o AND status = 'RESERVED'"
            " RETURNING product_id, quantity"
        ),
        {"to": to, "o": envelope.order_id},
    )
    lines = tuple(
        sorted(
            (StockLine(product_id=r.product_id, quantity=r.quantity) for r in moved),
            key=lambda line: line.product_id,
        )
    )
    bucket = "sold" if to == "COMMITTED" else "available"
    for line in lines:
        await uow.conn.execute(
            text(
                f"UPDATE products SET reserved = reserved - :q, {bucket} = {bucket} + :q,"
                " updated_at = clock_timestamp() WHERE product_id = :p"
            ),
            {"q": line.quantity, "p": line.product_id},
        )
    return lines


async def on_order_approved(uow: UnitOfWork, envelope: Envelope[OrderApproved]) -> None:
    lines = await _settle(uow, envelope, to="COMMITTED")
    if lines:
        await uow.reply(InventoryCommitted(lines=lines), to=envelope)


async def on_payment_failed(uow: UnitOfWork, envelope: Envelope[PaymentFailed]) -> None:
    lines = await _settle(uow, envelope, to="RELEASED")
    if lines:
        await uow.reply(InventoryReleased(lines=lines), to=envelope)


HANDLERS: dict[str, Handler] = {
    "OrderCreated": on_order_created,
    "OrderApproved": on_order_approved,
    "PaymentFailed": on_payment_failed,
}
