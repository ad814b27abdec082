"""Payment reactions: charge on InventoryReserved (step 3), refund on OrderCancelled (c6).

A batch at a time (``saga_kit.reactions``): ``load`` locks the batch's orders' payment
rows, then the accounts they touch (in customer-id order); each decide function applies
one event through the charging rule (``payment_svc.charging``); ``save`` writes what
changed.

The ``payments`` row of an order is the one decision record, whatever arrives first:
CHARGED or DECLINED when the charge was decided, REFUNDED when a charged order was
cancelled, VOIDED when the cancellation arrived before anything was charged — then a
late InventoryReserved finds the row and charges nothing."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from events import (
    InventoryReserved,
    OrderCancelled,
    PaymentCompleted,
    PaymentFailed,
    PaymentRefunded,
    PaymentVoided,
)
from events.envelope import Envelope
from payment_svc.charging import Decline, decide_charge
from saga_kit import sql
from saga_kit.db import UnitOfWork
from saga_kit.reactions import Reactions, Replies


@dataclass
class Payment:
    customer_id: str
    amount: Decimal
    status: str
    reason: str | None = None
    new: bool = False
    changed: bool = False


@dataclass
class Ledger:
    """What a batch needs: its orders' payment rows and the accounts they touch (locked)."""

    payments: dict[uuid.UUID, Payment] = field(default_factory=dict)
    #: customer → balance; a customer without an account is absent
    balances: dict[str, Decimal] = field(default_factory=dict)
    changed_accounts: set[str] = field(default_factory=set)

    def credit(self, customer_id: str, amount: Decimal) -> None:
        self.balances[customer_id] += amount
        self.changed_accounts.add(customer_id)


async def load(conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> Ledger:
    ledger = Ledger()
    for row in await conn.execute(
        text(
            "SELECT order_id, customer_id, amount, status, reason FROM payments"
            f" WHERE order_id IN {sql.UUIDS} ORDER BY order_id FOR UPDATE"
        ),
        {"ids": sql.values(sorted({e.order_id for e in events}))},
    ):
        ledger.payments[row.order_id] = Payment(row.customer_id, row.amount, row.status, row.reason)
    customers = {e.payload.customer_id for e in events if isinstance(e.payload, InventoryReserved)}
    customers |= {p.customer_id for p in ledger.payments.values() if p.status == "CHARGED"}
    # row locks in customer-id order: concurrent batches never deadlock
    for row in await conn.execute(
        text(
            f"SELECT customer_id, balance FROM accounts WHERE customer_id IN {sql.TEXTS}"
            " ORDER BY customer_id FOR UPDATE"
        ),
        {"keys": sql.values(sorted(customers))},
    ):
        ledger.balances[row.customer_id] = row.balance
    return ledger


def save(uow: UnitOfWork, ledger: Ledger) -> None:
    new = [
        {"o": oid, "c": p.customer_id, "a": p.amount, "s": p.status, "r": p.reason}
        for oid, p in ledger.payments.items()
        if p.new
    ]
    if new:
        uow.write(
            (
                "INSERT INTO payments (order_id, customer_id, amount, status, reason)"
                " SELECT o, c, a, s, r FROM json_to_recordset(CAST(%(rows)s AS json))"
                " AS v(o uuid, c text, a numeric, s text, r text)"
            ),
            {"rows": sql.rows(new)},
        )
    changed = [
        {"o": oid, "s": p.status, "r": p.reason}
        for oid, p in ledger.payments.items()
        if p.changed and not p.new
    ]
    if changed:
        uow.write(
            (
                "UPDATE payments p SET status = v.s, reason = v.r, updated_at = clock_timestamp()"
                " FROM json_to_recordset(CAST(%(rows)s AS json)) AS v(o uuid, s text, r text)"
                " WHERE p.order_id = v.o"
            ),
            {"rows": sql.rows(changed)},
        )
    if ledger.changed_accounts:
        uow.write(
            (
                "UPDATE accounts a SET balance = v.b, updated_at = clock_timestamp()"
                " FROM json_to_recordset(CAST(%(rows)s AS json)) AS v(c text, b numeric)"
                " WHERE a.customer_id = v.c"
            ),
            {"rows": sql.rows({"c": c, "b": ledger.balances[c]} for c in sorted(ledger.changed_accounts))},
        )


reactions: Reactions[Ledger] = Reactions(load, save)


@reactions.on(InventoryReserved)
def on_inventory_reserved(ledger: Ledger, event: Envelope[InventoryReserved]) -> Replies:
    """Charge the customer for the order's total, once: a payment row per order is the
    decision record, so a second InventoryReserved for the same order changes nothing."""
    reserved = event.payload
    if event.order_id in ledger.payments:
        return []
    decision = decide_charge(ledger.balances.get(reserved.customer_id), reserved.total)
    if isinstance(decision, Decline):
        ledger.payments[event.order_id] = Payment(
            reserved.customer_id, reserved.total, "DECLINED", decision.reason, new=True
        )
        return [
            PaymentFailed(customer_id=reserved.customer_id, amount=reserved.total, reason=decision.reason)
        ]
    ledger.balances[reserved.customer_id] = decision.new_balance
    ledger.changed_accounts.add(reserved.customer_id)
    ledger.payments[event.order_id] = Payment(reserved.customer_id, decision.amount, "CHARGED", new=True)
    return [PaymentCompleted(customer_id=reserved.customer_id, amount=decision.amount)]


@reactions.on(OrderCancelled)
def on_order_cancelled(ledger: Ledger, event: Envelope[OrderCancelled]) -> Replies:
    """c6: refund what this order was charged; if nothing was decided yet, void it so it is
    never charged later."""
    cancelled = event.payload
    payment = ledger.payments.get(event.order_id)
    if payment is None:
        ledger.payments[event.order_id] = Payment(
            cancelled.customer_id, Decimal("0"), "VOIDED", cancelled.reason, new=True
        )
        return [PaymentVoided(customer_id=cancelled.customer_id, reason=cancelled.reason)]
    if payment.status != "CHARGED":  # declined, refunded or voided already: nothing to give back
        return []
    # to whoever was charged, whatever customer the cancellation names: a refund that is
    # owed is never refused nor redirected
    ledger.credit(payment.customer_id, payment.amount)
    payment.status, payment.reason, payment.changed = "REFUNDED", cancelled.reason, True
    return [PaymentRefunded(customer_id=payment.customer_id, amount=payment.amount)]
