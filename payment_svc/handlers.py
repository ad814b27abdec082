"""Payment reactions: charge on InventoryReserved (step 3), refund on OrderCancelled (c6).

The ``payments`` row of an order is the one decision record, whatever arrives first:
CHARGED or DECLINED when the charge was decided, REFUNDED when a charged order was
cancelled, VOIDED when the cancellation arrived before anything was charged — then a
late InventoryReserved finds the row and charges nothing."""

from __future__ import annotations

from sqlalchemy import text

from events import InventoryReserved, OrderCancelled, PaymentCompleted, PaymentFailed, PaymentRefunded
from events.envelope import Envelope
from payment_svc.charging import Decline, decide_charge
from saga_kit.consumer import Handler
from saga_kit.db import UnitOfWork


async def on_inventory_reserved(uow: UnitOfWork, envelope: Envelope[InventoryReserved]) -> None:
    """Charge the customer for the order's total, once: a payment row per order is the
    decision record, so a second InventoryReserved for the same order changes nothing."""
    reserved = envelope.payload
    already = await uow.conn.scalar(
        text("SELECT 1 FROM payments WHERE order_id = :o"), {"o": envelope.order_id}
    )
    if already:
        return
    balance = await uow.conn.scalar(
        text("SELECT balance FROM accounts WHERE customer_id = :c FOR UPDATE"),
        {"c": reserved.customer_id},
    )
    decision = decide_charge(balance, reserved.total)
    if isinstance(decision, Decline):
        await uow.conn.execute(
            text(
                "INSERT INTO payments (order_id, customer_id, amount, status, reason)"
                " VALUES (:o, :c, :a, 'DECLINED', :r)"
            ),
            {
                "o": envelope.order_id,
                "c": reserved.customer_id,
                "a": reserved.total,
                "r": decision.reason,
            },
        )
        await uow.reply(
            PaymentFailed(customer_id=reserved.customer_id, amount=reserved.total, reason=decision.reason),
            to=envelope,
        )
        return
    await uow.conn.execute(
        text("UPDATE accounts SET balance = :b, updated_at = clock_timestamp() WHERE customer_id = :c"),
        {"b": decision.new_balance, "c": reserved.customer_id},
    )
    await uow.conn.execute(
        text("INSERT INTO payments (order_id, customer_id, amount, status) VALUES (:o, :c, :a, 'CHARGED')"),
        {"o": envelope.order_id, "c": reserved.customer_id, "a": decision.amount},
    )
    await uow.reply(PaymentCompleted(customer_id=reserved.customer_id, amount=decision.amount), to=envelope)


async def on_order_cancelled(uow: UnitOfWork, envelope: Envelope[OrderCancelled]) -> None:
    """c6: refund what this order was charged; if nothing was decided yet, void it so it is
    never charged later."""
    cancelled = envelope.payload
    row = (
        await uow.conn.execute(
            text("SELECT status, amount, customer_id FROM payments WHERE order_id = :o FOR UPDATE"),
            {"o": envelope.order_id},
        )
    ).first()
    if row is None:
        await uow.conn.execute(
            text(
                "INSERT INTO payments (order_id, customer_id, amount, status, reason)"
                " VALUES (:o, :c, 0, 'VOIDED', :r)"
            ),
            {"o": envelope.order_id, "c": cancelled.customer_id, "r": cancelled.reason},
        )
        return
    if row.status != "CHARGED":  # declined, refunded or voided already: nothing to give back
        return
    await uow.conn.execute(
        text(
            "UPDATE accounts SET balance = balance + :a, updated_at = clock_timestamp()"
            " WHERE customer_id = :c"
        ),
        {"a": row.amount, "c": row.customer_id},
    )
    await uow.conn.execute(
        text(
            "UPDATE payments SET status = 'REFUNDED', reason = :r, updated_at = clock_timestamp()"
            " WHERE order_id = :o"
        ),
        {"r": cancelled.reason, "o": envelope.order_id},
    )
    await uow.reply(PaymentRefunded(customer_id=row.customer_id, amount=row.amount), to=envelope)


HANDLERS: dict[str, Handler] = {
    "InventoryReserved": on_inventory_reserved,
    "OrderCancelled": on_order_cancelled,
}
