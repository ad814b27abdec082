"""The orders' counts by status, kept by the database (``order_svc.statuscounts``): exact
after every kind of write the service makes (the desk's placing, the consumer's batches,
a batch rolled back, cancellations, the sweeper, an order never placed), through folds,
beside a writer whose transaction is open, and from the orders a database held before
the counts existed."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import psycopg
from sqlalchemy import text

from events import PaymentCompleted
from order_svc import dashboard_api, statuscounts
from order_svc.cancelling import cancel_order, cancel_overdue
from order_svc.schema import MIGRATIONS
from saga_kit.consumer import Outcome
from saga_kit.db import create_engine
from saga_kit.migrations import PLUMBING, migrate
from saga_kit.settings import ServiceSettings
from sagastack.embedded import Postgres
from tests.integration.conftest import ServiceUnderTest, event, record_of
from tests.integration.test_saga_metrics import approve_and_reject, placed


async def counted(order: ServiceUnderTest) -> tuple[dict[str, int], dict[str, int]]:
    """(the kept counts, the orders counted whole)."""
    async with order.db.engine.connect() as conn:
        kept = await statuscounts.read(conn)
        rows = await conn.execute(text("SELECT status, count(*) FROM orders GROUP BY status"))
        return kept, {status: n for status, n in rows}


async def assert_exact(order: ServiceUnderTest) -> dict[str, int]:
    kept, whole = await counted(order)
    assert kept == whole
    shown = await dashboard_api.summary(order.db)  # what the dashboard shows: every status
    assert shown == {
        status: whole.get(status, 0) for status in ("PENDING", "APPROVED", "REJECTED", "CANCELLED")
    }
    return kept


async def test_the_counts_follow_every_write(order: ServiceUnderTest) -> None:
    before = await assert_exact(order)
    approved, rejected, cancelled = await placed(order), await placed(order), await placed(order)
    await placed(order, timedelta(0))  # overdue
    assert (await assert_exact(order)).get("PENDING", 0) == before.get("PENDING", 0) + 4

    batch = [
        *approve_and_reject(approved, rejected),
        # an order never placed, recorded CANCELLED
        record_of(event(PaymentCompleted(customer_id="c", amount=Decimal("2.50")), uuid.uuid4())),
    ]
    assert await order.pipeline.process_batch(batch) == [Outcome.HANDLED] * 4
    await assert_exact(order)
    await cancel_order(order.db, cancelled, "c")
    await cancel_order(order.db, approved, "c")  # APPROVED -> CANCELLED
    assert await cancel_overdue(order.db) >= 1
    after = await assert_exact(order)
    assert after.get("CANCELLED", 0) >= before.get("CANCELLED", 0) + 4

    assert await statuscounts.fold(order.db) > 0
    assert await assert_exact(order) == after
    async with order.db.engine.connect() as conn:
        rows = await conn.scalar(text("SELECT count(*) FROM order_status_counts"))
    assert rows == len(after)  # one per status
    assert await statuscounts.fold(order.db) == len(after)  # folding folded rows changes nothing
    assert await assert_exact(order) == after


async def test_a_rolled_back_change_counts_nothing(order: ServiceUnderTest) -> None:
    oid = await placed(order)
    before = await assert_exact(order)
    async with order.db.engine.connect() as conn:
        await conn.execute(text("UPDATE orders SET status = 'APPROVED' WHERE order_id = :o"), {"o": oid})
        await conn.rollback()
    assert await assert_exact(order) == before


async def test_a_fold_beside_an_open_writer_loses_nothing(order: ServiceUnderTest) -> None:
    """A writer's change appended but not committed when the fold runs is not the fold's
    to take: it stays, and counts once its writer commits."""
    oid = await placed(order)
    before = await assert_exact(order)
    async with order.db.engine.connect() as writer:
        await writer.execute(text("UPDATE orders SET status = 'REJECTED' WHERE order_id = :o"), {"o": oid})
        await statuscounts.fold(order.db)  # the writer's transaction is open
        await writer.commit()
    after = await assert_exact(order)
    assert after.get("REJECTED", 0) == before.get("REJECTED", 0) + 1
    assert after.get("PENDING", 0) == before.get("PENDING", 0) - 1


async def test_the_orders_a_database_held_before_are_counted(postgres: Postgres) -> None:
    """The migration counts the orders already there, once."""
    database = f"counts_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres.url("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    engine = create_engine(ServiceSettings._async_driver(postgres.url(database)), pool_size=2)
    try:
        at = next(i for i, m in enumerate(MIGRATIONS) if m.name == "order_status_counts")
        before = MIGRATIONS[:at]
        await migrate(engine, PLUMBING + before)
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO orders (order_id, customer_id, status, deadline_at)"
                    " SELECT gen_random_uuid(), 'c', CASE WHEN n % 3 = 0 THEN 'APPROVED' ELSE 'PENDING' END,"
                    " now() FROM generate_series(1, 30) n"
                )
            )
        await migrate(engine, PLUMBING + MIGRATIONS)
        async with engine.connect() as conn:
            assert await statuscounts.read(conn) == {"APPROVED": 10, "PENDING": 20}
            await conn.execute(text("TRUNCATE orders CASCADE"))
            assert await statuscounts.read(conn) == {}
    finally:
        await engine.dispose()
        with psycopg.connect(postgres.url("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
