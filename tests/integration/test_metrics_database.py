"""A scrape of ``/metrics`` while the database holds its reads without refusing them (a
stopped server, a network that drops packets; here a lock on the table it reads): it
answers without the database's figures (``saga_metrics_database_up 0``) once
``DATABASE_READ_SECONDS`` have passed, with the counters this process keeps. It waited
until the answer deadline cut it with a 503, the counters with it (a trial)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import text

from saga_kit import metrics
from saga_kit.consumer import ConsumerStats
from saga_kit.outbox import OutboxRelay
from tests.integration.conftest import ServiceUnderTest


async def test_a_scrape_answers_without_a_database_that_holds_its_read(
    inventory: ServiceUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "DATABASE_READ_SECONDS", 0.2)
    stats = ConsumerStats()
    stats.outcomes[("OrderCreated", "handled")] += 3
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9")  # never started: nothing sent
    relay = OutboxRelay(inventory.db.engine, producer)
    scrape = metrics.Metrics("inventory_svc", stats, relay, inventory.db).render
    up = b'saga_metrics_database_up{service="inventory_svc"} '
    consumed = (
        b'saga_events_consumed_total{event_type="OrderCreated",outcome="handled",service="inventory_svc"}'
    )
    try:
        assert up + b"1.0" in await scrape()
        async with inventory.db.engine.connect() as holder:
            await holder.begin()
            await holder.execute(text("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE"))
            # the lock is let go only after the scrape answered: waiting for it would never end
            async with asyncio.timeout(30):
                held = await scrape()
            await holder.rollback()
        assert up + b"0.0" in held, held
        assert consumed + b" 3.0" in held, held
        assert up + b"1.0" in await scrape()
    finally:
        await producer.stop()
