"""A unit of work sends ``COMMIT`` in the round trip of its last flush (saga_kit.db): what
it wrote is there afterwards, a failure at ``COMMIT`` itself raises and leaves nothing,
and the connection goes back to the pool usable."""

from __future__ import annotations

import random

import psycopg
import pytest
from psycopg import pq
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from tests.integration.conftest import ServiceUnderTest, commit_states

_TABLE = (
    "CREATE TABLE IF NOT EXISTS uow_probe"
    " (id int CONSTRAINT uow_probe_once UNIQUE DEFERRABLE INITIALLY DEFERRED, note text)"
)


async def _table(svc: ServiceUnderTest) -> int:
    async with svc.db.engine.begin() as conn:
        await conn.execute(text(_TABLE))
    return random.randrange(1, 2**31)


def _insert(note: str) -> str:
    return f"INSERT INTO uow_probe VALUES (%(id)s, '{note}')"


async def test_a_unit_commits_with_its_last_flush(inventory: ServiceUnderTest) -> None:
    key = await _table(inventory)
    with commit_states() as found:
        async with inventory.db.unit_of_work() as uow:
            uow.write(_insert("one"), {"id": key})
    assert found == [pq.TransactionStatus.IDLE]  # committed already: the connection's commit sends nothing
    assert await inventory.scalar("SELECT note FROM uow_probe WHERE id = :id", id=key) == "one"


async def test_a_failure_at_commit_raises_and_leaves_nothing(inventory: ServiceUnderTest) -> None:
    key = await _table(inventory)
    with pytest.raises((psycopg.errors.UniqueViolation, IntegrityError)):
        async with inventory.db.unit_of_work() as uow:
            # a deferred constraint is checked at COMMIT: both inserts succeed until then
            uow.write(_insert("first"), {"id": key})
            uow.write(_insert("second"), {"id": key})
    assert await inventory.scalar("SELECT count(*) FROM uow_probe WHERE id = :id", id=key) == 0
    for _ in range(3):  # every pooled connection still works (none is left in a transaction)
        async with inventory.db.unit_of_work() as uow:
            uow.write("DELETE FROM uow_probe WHERE id = %(id)s", {"id": key})
            uow.write(_insert("again"), {"id": key})
    assert await inventory.scalar("SELECT note FROM uow_probe WHERE id = :id", id=key) == "again"
