"""Inventory's reservation rule on the real database: atomic, priced, never oversold."""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal

from tests.integration.conftest import ServiceUnderTest, add_product, event
from tests.unit.samples import order_created

created = order_created


async def stock(inventory: ServiceUnderTest, pid: str) -> tuple[int, int, int]:
    row = (
        await inventory.rows("SELECT available, reserved, sold FROM products WHERE product_id = :p", p=pid)
    )[0]
    return row.available, row.reserved, row.sold


async def test_reserves_and_prices_every_line(inventory: ServiceUnderTest) -> None:
    a, b = await add_product(inventory, 5, "2.50"), await add_product(inventory, 3, "10.00")
    oid = uuid.uuid4()
    assert await inventory.deliver(event(created({a: 2, b: 1}), oid)) == "handled"
    [reply] = await inventory.emitted(oid)
    assert reply.event_type == "InventoryReserved"
    assert reply.payload.total == Decimal("15.00")  # type: ignore[attr-defined]
    assert await stock(inventory, a) == (3, 2, 0)
    assert await stock(inventory, b) == (2, 1, 0)


async def test_an_order_whose_second_line_is_short_holds_nothing(
    inventory: ServiceUnderTest,
) -> None:
    a, b = await add_product(inventory, 5), await add_product(inventory, 1)
    oid = uuid.uuid4()
    await inventory.deliver(event(created({a: 2, b: 2}), oid))
    [reply] = await inventory.emitted(oid)
    assert reply.event_type == "InventoryReservationFailed"
    assert reply.payload.reason == "insufficient_stock"  # type: ignore[attr-defined]
    assert reply.payload.product_ids == (b,)  # type: ignore[attr-defined]
    assert await stock(inventory, a) == (5, 0, 0)
    assert await stock(inventory, b) == (1, 0, 0)
    assert await inventory.scalar("SELECT COUNT(*) FROM reservations WHERE order_id = :o", o=oid) == 0


async def test_an_unknown_product_is_rejected(inventory: ServiceUnderTest) -> None:
    a = await add_product(inventory, 5)
    oid = uuid.uuid4()
    await inventory.deliver(event(created({a: 1, "no-such-product": 1}), oid))
    [reply] = await inventory.emitted(oid)
    assert reply.event_type == "InventoryReservationFailed"
    assert reply.payload.reason == "unknown_product"  # type: ignore[attr-defined]
    assert await stock(inventory, a) == (5, 0, 0)


async def test_many_concurrent_orders_for_the_last_units_never_oversell(
    inventory: ServiceUnderTest,
) -> None:
    """30 orders race for 5 units, each in its own transaction on its own connection."""
    pid = await add_product(inventory, 5)
    orders = [uuid.uuid4() for _ in range(30)]
    outcomes = await asyncio.gather(*(inventory.deliver(event(created({pid: 1}), o)) for o in orders))
    assert set(outcomes) == {"handled"}
    replies = [(await inventory.emitted(o))[0].event_type for o in orders]
    assert replies.count("InventoryReserved") == 5
    assert replies.count("InventoryReservationFailed") == 25
    assert await stock(inventory, pid) == (0, 5, 0)


async def test_a_version_1_order_created_is_upcast_and_reserved(inventory: ServiceUnderTest) -> None:
    """Schema evolution end to end through the consumer: v1 bytes in, a reservation out."""
    from tests.unit.test_upcasting import order_created_v1

    pid = await add_product(inventory, 5)
    raw = order_created_v1(items=[{"product_id": pid, "quantity": 2}])
    outcome = await inventory.deliver_bytes(json.dumps(raw).encode(), "orders.events")
    assert outcome.value == "handled"
    assert await stock(inventory, pid) == (3, 2, 0)
    emitted = await inventory.emitted(uuid.UUID(str(raw["order_id"])))
    assert [e.event_type for e in emitted] == ["InventoryReserved"]
    assert emitted[0].causation_id == uuid.UUID(str(raw["event_id"]))
