"""The outbox and the broker it publishes to (``saga_kit.outbox.on_broker``): the first
broker is noted; the same one again changes nothing; another one — the embedded Tansu
started again with an empty log, or a new cluster — gets every domain event still kept
published again, oldest first, and no dead letter's copy. Over the real database."""

from __future__ import annotations

import uuid

from saga_kit.outbox import on_broker
from tests.integration.conftest import ServiceUnderTest


async def _rows(svc: ServiceUnderTest, marker: str) -> list[tuple[str, bool]]:
    rows = await svc.rows(
        "SELECT topic, sent_at IS NOT NULL AS sent FROM outbox WHERE key = :k ORDER BY id", k=marker.encode()
    )
    return [(r.topic, r.sent) for r in rows]


async def test_a_new_broker_gets_what_was_sent_again_and_the_same_one_nothing(
    inventory: ServiceUnderTest,
) -> None:
    engine = inventory.db.engine
    async with engine.begin() as conn:  # this test's cluster ids are its own
        await conn.exec_driver_sql("DELETE FROM outbox_broker")
    first, second = f"cluster-{uuid.uuid4()}", f"cluster-{uuid.uuid4()}"
    assert await on_broker(engine, first) == 0  # the first: noted, nothing to do
    marker = f"k-{uuid.uuid4()}"
    async with engine.begin() as conn:
        await conn.exec_driver_sql(
            "INSERT INTO outbox (event_id, topic, key, value, sent_at) VALUES"
            " (gen_random_uuid(), 'inventory.events', %(k)s, 'a', now()),"
            " (gen_random_uuid(), 'inventory_svc.deadletter', %(k)s, 'b', now()),"
            " (gen_random_uuid(), 'inventory.events', %(k)s, 'c', NULL)",
            {"k": marker.encode()},
        )
    assert await on_broker(engine, first) == 0  # the same broker: nothing again
    assert await _rows(inventory, marker) == [
        ("inventory.events", True),
        ("inventory_svc.deadletter", True),
        ("inventory.events", False),
    ]
    again = await on_broker(engine, second)
    assert again >= 1  # this test's row, and any other test's sent domain events
    assert await _rows(inventory, marker) == [
        ("inventory.events", False),  # published again, before the one not yet sent
        ("inventory_svc.deadletter", True),  # its record is the dead_letters table
        ("inventory.events", False),
    ]
    assert await on_broker(engine, second) == 0  # noted: a restart does not do it twice
