"""Every consumed event type, delivered twice, has exactly one effect.

For each (service, event type) pair the service handles, the event is delivered, the
service's observable state is snapshotted, the same event is delivered again, and the
state must be unchanged with the second delivery reported as a duplicate.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from events import (
    InventoryReservationFailed,
    OrderApproved,
    OrderCancelled,
    OrderLine,
    PaymentCompleted,
    PaymentFailed,
)
from events.envelope import Envelope
from order_svc.placing import place_order
from tests.integration.conftest import ServiceUnderTest, add_account, add_product, balance_of, event
from tests.unit.samples import order_created, reserved_payload


@dataclass
class Case:
    service: ServiceUnderTest
    event: Envelope[Any]
    snapshot: Callable[[], Awaitable[Any]]


async def inventory_snapshot(svc: ServiceUnderTest, pid: str, oid: uuid.UUID) -> Any:
    return (
        await svc.rows("SELECT available, reserved, sold FROM products WHERE product_id = :p", p=pid),
        await svc.rows("SELECT status FROM reservations WHERE order_id = :o", o=oid),
        [e.event_type for e in await svc.emitted(oid)],
    )


async def inventory_case(svc: ServiceUnderTest, event_type: str) -> Case:
    pid, oid = await add_product(svc, 4), uuid.uuid4()
    placed = event(order_created({pid: 2}, customer="c"), oid)
    if event_type == "OrderCreated":
        ev = placed
    else:
        await svc.deliver(placed)
        ev = event(
            {
                "OrderApproved": OrderApproved(customer_id="c"),
                "OrderCancelled": OrderCancelled(customer_id="c", reason="cancelled_by_customer"),
                "PaymentFailed": PaymentFailed(
                    customer_id="c", amount=Decimal("5.00"), reason="insufficient_funds"
                ),
            }[event_type],
            oid,
        )
    return Case(svc, ev, lambda: inventory_snapshot(svc, pid, oid))


async def payment_case(svc: ServiceUnderTest, event_type: str) -> Case:
    cid, oid = await add_account(svc, "10.00"), uuid.uuid4()
    reserved = event(reserved_payload(cid, "p", qty=2), oid)
    if event_type == "OrderCancelled":  # cancelling a charged order refunds it, once
        await svc.deliver(reserved)
        reserved = event(OrderCancelled(customer_id=cid, reason="timeout"), oid)

    async def snapshot() -> Any:
        return (
            await balance_of(svc, cid),
            await svc.rows("SELECT status, amount FROM payments WHERE order_id = :o", o=oid),
            [e.event_type for e in await svc.emitted(oid)],
        )

    return Case(svc, reserved, snapshot)


async def order_case(svc: ServiceUnderTest, event_type: str) -> Case:
    oid, *_ = await place_order(
        svc.db, "c", [OrderLine(product_id="p", quantity=1)], None, timedelta(minutes=10)
    )
    payloads = {
        "InventoryReserved": reserved_payload("c", "p"),
        "InventoryReservationFailed": InventoryReservationFailed(
            customer_id="c", reason="insufficient_stock", product_ids=("p",)
        ),
        "PaymentCompleted": PaymentCompleted(customer_id="c", amount=Decimal("2.50")),
        "PaymentFailed": PaymentFailed(customer_id="c", amount=Decimal("2.50"), reason="insufficient_funds"),
    }

    async def snapshot() -> Any:
        return (
            await svc.rows("SELECT status, reason, total FROM orders WHERE order_id = :o", o=oid),
            await svc.rows("SELECT unit_price FROM order_items WHERE order_id = :o", o=oid),
            [e.event_type for e in await svc.emitted(oid)],
            await svc.scalar("SELECT COUNT(*) FROM saga_events WHERE order_id = :o", o=oid),
        )

    return Case(svc, event(payloads[event_type], oid), snapshot)


CASES = [
    ("inventory_svc", "OrderCreated", inventory_case),
    ("inventory_svc", "OrderApproved", inventory_case),
    ("inventory_svc", "PaymentFailed", inventory_case),
    ("inventory_svc", "OrderCancelled", inventory_case),
    ("payment_svc", "InventoryReserved", payment_case),
    ("payment_svc", "OrderCancelled", payment_case),
    ("order_svc", "InventoryReserved", order_case),
    ("order_svc", "InventoryReservationFailed", order_case),
    ("order_svc", "PaymentCompleted", order_case),
    ("order_svc", "PaymentFailed", order_case),
]


def test_cases_cover_every_handler() -> None:
    from tests.integration.conftest import SPECS

    handled = {(n, t) for n, spec in SPECS.items() for t in spec.subscription.reactions.event_types}
    commands = {("order_svc", t) for t in ("PlaceOrder", "CancelOrder", "RefusedCommand")}  # test_commands.py
    assert handled - commands == {(n, t) for n, t, _ in CASES}


@pytest.mark.parametrize(("service", "event_type", "make"), CASES, ids=[f"{s}-{t}" for s, t, _ in CASES])
async def test_delivered_twice_one_effect(
    services: dict[str, ServiceUnderTest], service: str, event_type: str, make: Any
) -> None:
    case: Case = await make(services[service], event_type)
    before = await case.snapshot()
    assert await case.service.deliver(case.event) == "handled"
    after_first = await case.snapshot()
    assert after_first != before, "the first delivery must have an effect"
    assert await case.service.deliver(case.event) == "duplicate"
    assert await case.snapshot() == after_first


async def test_payment_charges_an_order_once_even_for_a_new_event_id(
    payment: ServiceUnderTest,
) -> None:
    """A re-emitted InventoryReserved (new event_id, same order) must not charge again."""
    cid, oid = await add_account(payment, "10.00"), uuid.uuid4()
    for _ in range(2):
        assert await payment.deliver(event(reserved_payload(cid, "p", qty=2), oid)) == "handled"
    assert await balance_of(payment, cid) == Decimal("5.00")
    assert [e.event_type for e in await payment.emitted(oid)] == ["PaymentCompleted"]


async def test_inventory_decides_an_order_once_even_for_a_new_event_id(
    inventory: ServiceUnderTest,
) -> None:
    """A re-emitted OrderCreated (new event_id, same order) neither reserves again nor turns
    an earlier refusal into a reservation once stock has arrived."""
    pid, oid = await add_product(inventory, 4), uuid.uuid4()
    for _ in range(2):
        assert await inventory.deliver(event(order_created({pid: 3}, customer="c"), oid)) == "handled"
    assert await inventory.scalar("SELECT reserved FROM products WHERE product_id = :p", p=pid) == 3

    refused = uuid.uuid4()
    await inventory.deliver(event(order_created({pid: 2}, customer="c"), refused))  # 1 left: refused
    async with inventory.db.unit_of_work() as uow:
        await uow.conn.execute(
            text("UPDATE products SET available = available + 10 WHERE product_id = :p"), {"p": pid}
        )
    await inventory.deliver(event(order_created({pid: 2}, customer="c"), refused))
    assert [e.event_type for e in await inventory.emitted(refused)] == ["InventoryReservationFailed"]
    assert await inventory.scalar("SELECT reserved FROM products WHERE product_id = :p", p=pid) == 3
