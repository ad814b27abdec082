"""A unit of work sends ``COMMIT`` in the round trip of its last flush (saga_kit.db): what
it wrote is there afterwards, a failure at ``COMMIT`` itself raises and leaves nothing,
and the connection goes back to the pool usable. Its pipelined reads (``read``) come back
in order, inside its transaction, after the writes queued before them, in one round trip."""

from __future__ import annotations

import random
import tempfile

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


async def test_reads_come_back_in_order_and_see_the_writes_queued_before_them(
    inventory: ServiceUnderTest,
) -> None:
    key = await _table(inventory)
    async with inventory.db.unit_of_work() as uow:
        uow.write(_insert("queued"), {"id": key})
        notes, numbers = await uow.read(
            ("SELECT id, note FROM uow_probe WHERE id = %(id)s", {"id": key}),
            ("SELECT n AS number FROM generate_series(1, %(n)s) AS n ORDER BY n", {"n": 3}),
        )
    assert [(r.id, r.note) for r in notes] == [(key, "queued")]
    assert [r.number for r in numbers] == [1, 2, 3]
    assert await inventory.scalar("SELECT note FROM uow_probe WHERE id = :id", id=key) == "queued"


async def test_a_read_runs_in_the_unit_s_transaction(inventory: ServiceUnderTest) -> None:
    """A unit that starts with a read is one transaction from that read on (psycopg sends
    ``BEGIN`` before it): the read and the statements after it see one start time and one
    transaction id."""
    async with inventory.db.unit_of_work() as uow:
        ((first,),) = await uow.read(("SELECT now() AS started, txid_current() AS xid", {}))
        later = (await uow.conn.execute(text("SELECT now() AS started, txid_current() AS xid"))).one()
    assert (first.started, first.xid) == (later.started, later.xid)


async def test_a_failing_read_rolls_the_unit_back(inventory: ServiceUnderTest) -> None:
    key = await _table(inventory)
    with pytest.raises(psycopg.errors.DivisionByZero):
        async with inventory.db.unit_of_work() as uow:
            uow.write(_insert("undone"), {"id": key})
            await uow.read(("SELECT 1 / 0", {}))
    assert await inventory.scalar("SELECT count(*) FROM uow_probe WHERE id = :id", id=key) == 0
    for _ in range(3):  # every pooled connection still works
        async with inventory.db.unit_of_work() as uow:
            ((row,),) = await uow.read(("SELECT 1 AS one", {}))
            assert row.one == 1


async def test_a_batch_shaped_unit_takes_four_round_trips(inventory: ServiceUnderTest) -> None:
    """The consumer's transaction (saga_kit.consumer): ``BEGIN`` (psycopg syncs after it,
    even in a pipeline), the claims, every query of a service's load together, then the
    writes with ``COMMIT`` — four round trips, counted as the server's ReadyForQuery
    messages in libpq's trace of the connection."""
    key = await _table(inventory)
    with tempfile.TemporaryFile("w+") as trace:
        async with inventory.db.unit_of_work() as uow:
            pgconn = (await uow.conn.get_raw_connection()).driver_connection.pgconn  # type: ignore[union-attr]
            pgconn.trace(trace.fileno())
            pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
            await uow.read(("SELECT 1 AS claimed", {}))
            await uow.read(*[(f"SELECT {n} AS loaded", {}) for n in range(3)])
            uow.write(_insert("written"), {"id": key})
        pgconn.untrace()
        trace.seek(0)
        messages = trace.read()
    assert messages.count("ReadyForQuery") == 4, messages
    assert await inventory.scalar("SELECT note FROM uow_probe WHERE id = :id", id=key) == "written"
