"""Two order-service instances given the same idempotency keys in opposite orders (a client
retrying a burst against both) insert them in one order, the keys' own: each waits for the
other instead of PostgreSQL aborting one as a deadlock, whose whole group of requests was
then answered 503 (a review). Over the real database, many times, many keys."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from events.order import OrderLine
from order_svc.placing import Placed, Placement, place_orders
from tests.integration.conftest import ServiceUnderTest


async def test_the_same_keys_in_opposite_orders_from_two_transactions_never_deadlock(
    order: ServiceUnderTest,
) -> None:
    lines = (OrderLine(product_id="p", quantity=1),)
    for _ in range(10):
        keys = [f"burst-{uuid.uuid4().hex[:12]}" for _ in range(200)]
        commands = [Placement("kim", lines, key, timedelta(minutes=5)) for key in keys]
        first, second = await asyncio.gather(
            place_orders(order.db, commands), place_orders(order.db, commands[::-1])
        )
        assert all(isinstance(r, Placed) for r in [*first, *second])
        assert [r.order_id for r in first] == [r.order_id for r in second[::-1]]  # one order per key
