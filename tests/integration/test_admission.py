"""Admission control: an order that cannot finish before its deadline is refused at once."""

from __future__ import annotations

import uuid

from sqlalchemy import text

from order_svc.admission import Admission
from tests.integration.conftest import ServiceUnderTest


async def _pending_orders(order: ServiceUnderTest, n: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(n)]
    async with order.db.unit_of_work() as uow:
        await uow.conn.execute(
            text(
                "INSERT INTO orders (order_id, customer_id, status, deadline_at)"
                " SELECT o, 'c', 'PENDING', clock_timestamp() + interval '1 hour'"
                " FROM unnest(CAST(:o AS UUID[])) o"
            ),
            {"o": ids},
        )
    return ids


async def test_a_backlog_that_cannot_finish_in_time_is_refused_with_retry_after(
    order: ServiceUnderTest,
) -> None:
    admission = Admission(order.db, headroom=0.5, min_pending=50, refresh_seconds=0)
    assert await admission.check(30) is None  # a quiet system never refuses
    ids = await _pending_orders(order, 60)
    try:
        refusal = await admission.check(30)  # 60 in flight, nothing finishing: hopeless
        assert refusal is not None and refusal.retry_after >= 1 and "overloaded" in refusal.detail
        assert await admission.check(100_000) is None  # a patient order is still taken
        assert admission.refused == 1
    finally:
        async with order.db.unit_of_work() as uow:  # leave them finished for the other tests
            await uow.conn.execute(
                text("UPDATE orders SET status = 'CANCELLED', reason = 'timeout' WHERE order_id = ANY(:o)"),
                {"o": ids},
            )
    admission_after = Admission(order.db, headroom=0.5, min_pending=50, refresh_seconds=0)
    assert await admission_after.check(30) is None
