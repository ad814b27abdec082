"""One active outbox relay per database, and a frozen one does not hold the others back
(``saga_kit.outbox``: the relay lock and its lease). A frozen process keeps its session
and its advisory lock: an attack trial stopped one instance with SIGSTOP, and its
service's events waited over 1,000 s while the standby said all was well. Here the
"frozen" relay is one that took the lock and then did nothing more."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from aiokafka import AIOKafkaProducer
from sqlalchemy import text

from saga_kit.outbox import OutboxRelay
from tests.integration.conftest import ServiceUnderTest
from tests.polling import until


@pytest_asyncio.fixture
async def frozen(inventory: ServiceUnderTest) -> AsyncIterator[OutboxRelay]:
    """A relay that holds the lock and then does nothing (its producer never started:
    nothing is sent here)."""
    relay = OutboxRelay(inventory.db.engine, AIOKafkaProducer(bootstrap_servers="127.0.0.1:9"))
    assert await relay._lead()
    yield relay
    await relay._release()


async def test_a_standby_ends_the_session_of_a_relay_idle_past_its_lease_and_takes_over(
    inventory: ServiceUnderTest, frozen: OutboxRelay
) -> None:
    standby = OutboxRelay(
        inventory.db.engine, AIOKafkaProducer(bootstrap_servers="127.0.0.1:9"), lease_seconds=0.3
    )
    try:
        await until(standby._lead, "the standby took the relay over from the frozen one")
        assert standby.active
        assert frozen._lock_conn is not None
        try:  # the frozen relay's session was ended: woken, it finds it gone
            await frozen._lock_conn.execute(text("SELECT 1"))
            ended = False
        except Exception:
            ended = True
        assert ended
    finally:
        await standby._release()


async def test_a_relay_within_its_lease_keeps_the_lock(
    inventory: ServiceUnderTest, frozen: OutboxRelay
) -> None:
    standby = OutboxRelay(inventory.db.engine, AIOKafkaProducer(bootstrap_servers="127.0.0.1:9"))
    assert not await standby._lead()  # the default lease (120 s) has not passed
    assert frozen._lock_conn is not None
    assert await frozen._lock_conn.scalar(text("SELECT 1")) == 1
