"""Payment reactions: charge on InventoryReserved (step 3)."""

from __future__ import annotations

from sqlalchemy import text

from events import InventoryReserved, PaymentCompleted, PaymentFailed
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


HANDLERS: dict[str, Handler] = {
    "InventoryReserved": on_inventory_reserved,
}
