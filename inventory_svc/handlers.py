"""Inventory reactions: reserve on OrderCreated (2), commit on OrderApproved (5),
release on PaymentFailed (c2), release or restock on OrderCancelled (c5).

Every handler is correct whatever order the events of one saga arrive in: settling only
moves lines in the state it expects, and the first decision about each order is kept
(``order_decisions``), so a late or repeated OrderCreated never reserves twice and one
that arrives after the cancellation reserves nothing."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from events import (
    InventoryCommitted,
    InventoryReleased,
    InventoryReservationFailed,
    InventoryReserved,
    OrderApproved,
    OrderCancelled,
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


async def _decide(uow: UnitOfWork, envelope: Envelope[Any], decision: str) -> bool:
    """Record the first decision about this order; False if there was one already."""
    inserted = await uow.conn.scalar(
        text(
            "INSERT INTO order_decisions (order_id, decision) VALUES (:o, :d)"
            " ON CONFLICT DO NOTHING RETURNING 1"
        ),
        {"o": envelope.order_id, "d": decision},
    )
    return inserted is not None


async def on_order_created(uow: UnitOfWork, envelope: Envelope[OrderCreated]) -> None:
    """Reserve every line or none. Rows are locked in product-id order, so concurrent
    reservations never deadlock, and the CHECK (available >= 0) backs the rule."""
    order = envelope.payload
    if not await _decide(uow, envelope, "RESERVED"):
        return  # decided before: reserved or refused already, or the cancellation came first
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
        await uow.conn.execute(
            text("UPDATE order_decisions SET decision = 'REFUSED' WHERE order_id = :o"),
            {"o": envelope.order_id},
        )
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


#: (from status, to status) → (product bucket taken from, bucket given to)
_MOVES = {
    ("RESERVED", "COMMITTED"): ("reserved", "sold"),
    ("RESERVED", "RELEASED"): ("reserved", "available"),
    ("COMMITTED", "RESTOCKED"): ("sold", "available"),
}


async def _settle(
    uow: UnitOfWork, envelope: Envelope[Any], *, to: str, frm: str = "RESERVED"
) -> tuple[StockLine, ...]:
    """Move this order's lines in status ``frm`` to ``to`` and adjust the product buckets;
    lines in any other status are left alone, which makes it idempotent."""
    source, target = _MOVES[(frm, to)]
    moved = await uow.conn.execute(
        text(
            "UPDATE reservations SET status = :to, updated_at = clock_timestamp()"
            " WHERE order_id = :o AND status = :frm"
            " RETURNING product_id, quantity"
        ),
        {"to": to, "frm": frm, "o": envelope.order_id},
    )
    lines = tuple(
        sorted(
            (StockLine(product_id=r.product_id, quantity=r.quantity) for r in moved),
            key=lambda line: line.product_id,
        )
    )
    for line in lines:
        await uow.conn.execute(
            text(
                f"UPDATE products SET {source} = {source} - :q, {target} = {target} + :q,"
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


async def on_order_cancelled(uow: UnitOfWork, envelope: Envelope[OrderCancelled]) -> None:
    """c5: give back whatever the order holds — a reservation is released, a sale (the order
    was APPROVED, then cancelled) is restocked — and remember the cancellation."""
    await _decide(uow, envelope, "CANCELLED")
    released = await _settle(uow, envelope, to="RELEASED")
    restocked = await _settle(uow, envelope, frm="COMMITTED", to="RESTOCKED")
    lines = tuple(sorted(released + restocked, key=lambda line: line.product_id))
    if lines:
        await uow.reply(InventoryReleased(lines=lines), to=envelope)


HANDLERS: dict[str, Handler] = {
    "OrderCreated": on_order_created,
    "OrderApproved": on_order_approved,
    "OrderCancelled": on_order_cancelled,
    "PaymentFailed": on_payment_failed,
}
