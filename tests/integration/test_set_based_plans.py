"""A batch finds its rows by index, however big the table (``saga_kit.sql``).

Each service runs a batch of real work — the order desk's placing, each consumer's
batch, the deadline sweeper, the payment worker's claim, call and record — against a
database of its own whose tables hold thousands of rows, many of them PENDING orders and
payments waiting for later. Every statement the services send is captured as psycopg
sends it and then ``EXPLAIN``-ed with its own parameters (a ``SELECT`` is run too, in a
transaction rolled back, for its row counts). The test fails on a filled table read

* by a sequential scan: PostgreSQL estimates a ``json_*`` set-returning function at 100
  rows, which against a table of this size plans a sequential scan and a hash join on
  every batch — the statements as they were before ``sql.UUIDS`` and ``sql.recordset``
  did exactly that (the payment service's load read every payment to find one);
* or by an index scan that throws most of what it reads away: ``deadline_at <=
  clock_timestamp()`` cannot bound the scan (the function is volatile), so the sweeper
  read every PENDING order to find the overdue ones, and the payment worker's claim
  every waiting payment (``now()`` can).

A scrape of a service's own /metrics figures is held to the same rule: the order service
counted its orders by status, and timed every ended saga, over the whole table at each
scrape, and the payment service its payments by status. So is the dashboard's count of
orders by status."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import pytest_asyncio

from events import (
    InventoryReservationFailed,
    InventoryReserved,
    OrderApproved,
    OrderCancelled,
    OrderLine,
    PaymentCompleted,
    PaymentFailed,
)
from events.commands import CancelOrder, PlaceOrder, encode_command
from events.topics import COMMANDS
from order_svc import dashboard_api
from order_svc.admission import BACKLOG_SQL
from order_svc.api import get_command, list_orders
from order_svc.cancelling import cancel_overdue
from order_svc.placing import Placed, Placement, place_orders
from payment_svc import runtime as payment_runtime
from saga_kit import auth
from saga_kit.consumer import Outcome
from saga_kit.db import Database, create_engine
from saga_kit.migrations import PLUMBING, migrate
from saga_kit.settings import ServiceSettings
from sagastack.embedded import Postgres
from tests.integration.conftest import SPECS, ServiceUnderTest, add_product, event, record_of
from tests.unit.samples import order_created, reserved_payload

#: rows in each filled table: far past the size (a few hundred) from which a sequential
#: scan costs more than a handful of index probes
ROWS = 5000

#: statements that fill each service's big tables (and make the planner see them)
FILL = {
    "order_svc": (
        "INSERT INTO orders (order_id, customer_id, status, total, deadline_at)"
        " SELECT gen_random_uuid(), 'c' || mod(n, 97),"
        " CASE WHEN n %% 2 = 0 THEN 'APPROVED' ELSE 'PENDING' END, 5, now() + interval '1 hour'"
        " FROM generate_series(1, %(n)s) n",
        "INSERT INTO order_items (order_id, line_no, product_id, quantity, unit_price)"
        " SELECT order_id, 1, 'p', 1, 5 FROM orders",
        # each order's timeline: the command that placed it, and what it caused
        "INSERT INTO saga_events (event_id, order_id, event_type, producer, occurred_at, payload)"
        " SELECT gen_random_uuid(), order_id, 'PlaceOrder', 'client', now(),"
        " jsonb_build_object('command_id', gen_random_uuid()) FROM orders",
        "INSERT INTO saga_events"
        " (event_id, order_id, event_type, producer, occurred_at, causation_id, payload)"
        " SELECT gen_random_uuid(), order_id, 'OrderCreated', 'order_svc', now(), event_id, '{}'"
        " FROM saga_events",
    ),
    "inventory_svc": (
        "INSERT INTO products (product_id, name, price, available) VALUES ('filler', 'x', 1, 0)",
        "INSERT INTO reservations (order_id, product_id, quantity, unit_price, status)"
        " SELECT gen_random_uuid(), 'filler', 1, 1, 'COMMITTED' FROM generate_series(1, %(n)s)",
        "INSERT INTO order_decisions (order_id, decision) SELECT order_id, 'RESERVED' FROM reservations",
    ),
    "payment_svc": (
        "INSERT INTO payments (order_id, customer_id, amount, status, next_attempt_at)"
        " SELECT gen_random_uuid(), 'c' || mod(n, 97), 5,"
        " CASE WHEN n %% 2 = 0 THEN 'DECLINED' ELSE 'PENDING' END, now() + interval '1 hour'"
        " FROM generate_series(1, %(n)s) n",
    ),
}
#: plumbing every service has, filled too
PLUMBING_FILL = (
    "INSERT INTO inbox (consumer, event_id, event_type, order_id)"
    " SELECT 'filler', gen_random_uuid(), 'OrderCreated', gen_random_uuid() FROM generate_series(1, %(n)s)",
)
FILLED = {
    "order_svc": {"orders", "order_items", "saga_events", "inbox"},
    "inventory_svc": {"reservations", "order_decisions", "inbox"},
    "payment_svc": {"payments", "inbox"},
}


@pytest_asyncio.fixture
async def big(
    postgres: Postgres, services: dict[str, ServiceUnderTest], sent: dict[str, set[tuple[str, str]]]
) -> AsyncIterator[Any]:
    """``big(name)``: the service ``name`` over a database of its own, its tables filled;
    what it sent to get there (migrations, the fill) is not kept in ``sent``."""
    made: list[tuple[str, Database]] = []

    async def make(name: str) -> ServiceUnderTest:
        database = f"plans_{name}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(postgres.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        url = postgres.url(database)
        engine = create_engine(ServiceSettings._async_driver(url), pool_size=4)
        spec = SPECS[name]
        db = Database(engine, name, emit_hooks=spec.emit_hooks)
        made.append((database, db))  # dropped at the end, even if what follows fails
        await migrate(engine, PLUMBING + spec.migrations)
        with psycopg.connect(url, autocommit=True) as conn:
            for statement in (*FILL[name], *PLUMBING_FILL):
                conn.execute(statement, {"n": ROWS})
            conn.execute("ANALYZE")
        sent.pop(database, None)
        return ServiceUnderTest(spec, db, services["payment_svc"].provider if name == "payment_svc" else None)

    yield make
    for database, db in made:
        await db.engine.dispose()
        with psycopg.connect(postgres.url("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{database}" WITH (FORCE)')


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, set[tuple[str, str]]]]:
    """Every statement sent through psycopg, with its parameters (as JSON), by database."""
    by_database: dict[str, set[tuple[str, str]]] = {}

    def keep(dbname: str, query: Any, params: Any) -> None:
        if isinstance(query, str) and query.lstrip().split(None, 1)[0].upper() in _PLANNED:
            by_database.setdefault(dbname, set()).add((query, json.dumps(params, default=str)))

    connection_execute = psycopg.AsyncConnection.execute
    cursor_execute = psycopg.AsyncCursor.execute

    async def on_connection(self: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
        keep(self.info.dbname, query, params)
        return await connection_execute(self, query, params, **kwargs)

    async def on_cursor(self: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
        keep(self.connection.info.dbname, query, params)
        return await cursor_execute(self, query, params, **kwargs)

    monkeypatch.setattr(psycopg.AsyncConnection, "execute", on_connection)
    monkeypatch.setattr(psycopg.AsyncCursor, "execute", on_cursor)
    yield by_database


_PLANNED = {"SELECT", "INSERT", "UPDATE", "DELETE", "WITH"}


#: an index scan may throw away this many of the rows it read (e.g. a status filter)
DISCARDED = ROWS // 50


def _wasteful_scans(plan: dict[str, Any], tables: set[str], max_read: int | None = None) -> Iterator[str]:
    """How each node of ``plan`` that reads one of ``tables`` reads too much, if it does
    (with ``max_read``: more rows than that, even by index)."""
    table = plan.get("Relation Name")
    if table in tables:
        if plan["Node Type"] == "Seq Scan":
            yield f"{table}: sequential scan"
        elif "clock_timestamp()" in plan.get("Filter", ""):
            yield f"{table}: filtered by clock_timestamp(), which cannot bound the scan"
        elif plan.get("Rows Removed by Filter", 0) > DISCARDED:
            yield f"{table}: {plan['Rows Removed by Filter']} rows read and thrown away"
        elif max_read is not None and plan.get("Actual Rows", 0) * plan.get("Actual Loops", 1) > max_read:
            yield f"{table}: {plan['Actual Rows']:.0f} rows read, more than {max_read}"
    for child in plan.get("Plans", ()):
        yield from _wasteful_scans(child, tables, max_read)


def assert_found_by_index(
    svc: ServiceUnderTest,
    sent: dict[str, set[tuple[str, str]]],
    at_least: int = 5,
    max_read: int | None = None,
) -> None:
    """EXPLAIN every statement ``svc`` sent (``at_least`` of them), with its parameters:
    none scans a filled table (nor, with ``max_read``, reads more rows of one than that)."""
    database = svc.db.engine.url.database
    assert database is not None
    statements = sent.get(database, set())
    assert len(statements) >= at_least, statements  # the capture saw the work
    url = svc.db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    scans = []
    with psycopg.connect(url) as conn:
        for query, params in sorted(statements):
            run = "ANALYZE, " if query.lstrip().upper().startswith("SELECT") else ""
            ((plan,),) = conn.execute(f"EXPLAIN ({run}FORMAT JSON) {query}", json.loads(params)).fetchall()
            wasteful = _wasteful_scans(plan[0]["Plan"], FILLED[svc.spec.name], max_read)
            scans += [f"{why}, by: {query}" for why in wasteful]
            conn.rollback()
    assert not scans, "\n".join(scans)


def reserved() -> InventoryReserved:
    return reserved_payload("c1", "p", price="5.00")


async def test_the_order_service_finds_a_batch_by_index(big: Any, sent: Any) -> None:
    order = await big("order_svc")
    line = OrderLine(product_id="p", quantity=1)
    placed = await place_orders(
        order.db, [Placement("c1", (line,), f"k{i}", timedelta(minutes=5)) for i in range(3)]
    )
    first, second, third = (p.order_id for p in placed if isinstance(p, Placed))
    batch = [
        event(reserved(), first),
        event(PaymentCompleted(customer_id="c1", amount=Decimal("5.00")), first),
        event(reserved(), second),
        event(PaymentFailed(customer_id="c1", amount=Decimal("5.00"), reason="insufficient_funds"), second),
        event(
            InventoryReservationFailed(customer_id="c1", reason="unknown_product", product_ids=("p",)), third
        ),
    ]
    assert await order.pipeline.process_batch([record_of(e) for e in batch]) == [Outcome.HANDLED] * 5
    assert await cancel_overdue(order.db) == 0  # thousands PENDING, none overdue
    assert_found_by_index(order, sent)


async def test_what_became_of_a_command_is_found_by_index(big: Any, sent: Any) -> None:
    """``GET /commands/{id}`` (which ``sagactl`` polls until a command is answered) finds
    the command and its answer through ``saga_events_by_command``: it read the whole
    timeline, which is never pruned, twice per call — the index is partial (``payload ?
    'command_id'``) and its queries did not say so, so the planner could not use it."""
    order = await big("order_svc")
    placed = PlaceOrder(
        command_id=uuid.uuid4(), customer_id="c1", items=(OrderLine(product_id="p", quantity=1),)
    )
    refused = CancelOrder(command_id=uuid.uuid4(), order_id=uuid.uuid4())  # no such order
    for command in (placed, refused):
        assert await order.deliver_bytes(encode_command(command), COMMANDS) is Outcome.HANDLED
    # taking commands finds the orders and the PlaceOrders that used their ids the same
    # way (an OR of two columns read every order). Admission's backlog is left out: its
    # median walks half the PENDING orders by design (``admission.BACKLOG_SQL``), as the
    # HTTP door's reads do at each refresh
    database = str(order.db.engine.url.database)
    sent[database] = {(query, params) for query, params in sent.get(database, ()) if query != BACKLOG_SQL}
    assert_found_by_index(order, sent)
    sent.clear()
    assert (await get_command(placed.command_id, order.db, auth.UNAUTHENTICATED)).outcome == "placed"
    assert (await get_command(refused.command_id, order.db, auth.UNAUTHENTICATED)).outcome == "rejected"
    customer = auth.Principal("c1", frozenset({auth.Role.CUSTOMER}))
    assert (await get_command(placed.command_id, order.db, customer)).outcome == "placed"
    assert_found_by_index(order, sent, at_least=3)


async def test_an_order_found_by_the_start_of_its_id_is_found_by_index(big: Any, sent: Any) -> None:
    """``GET /orders?order_id_prefix=`` (how sagactl finds a shortened id, ``limit=2``)
    compared each order's id as text with ``LIKE``: no index can bound that, so it read
    orders newest first to the very end of the table looking for a second match."""
    order = await big("order_svc")
    wanted = await order.scalar("SELECT order_id FROM orders ORDER BY order_id OFFSET 1234 LIMIT 1")
    sent.clear()
    for prefix in (str(wanted)[:8], str(wanted)[:14].upper(), str(wanted)):
        found = await list_orders(order.db, auth.UNAUTHENTICATED, order_id_prefix=prefix, limit=2)
        assert [o.order_id for o in found] == [wanted], prefix
    assert await list_orders(order.db, auth.UNAUTHENTICATED, order_id_prefix="0000-000", limit=2) == []
    assert_found_by_index(order, sent, at_least=3, max_read=DISCARDED)


async def test_the_inventory_service_finds_a_batch_by_index(big: Any, sent: Any) -> None:
    inventory = await big("inventory_svc")
    pid = await add_product(inventory, 10)
    first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    batch = [
        event(order_created({pid: 1}), first),
        event(order_created({pid: 2}), second),
        event(order_created({pid: 3}), third),
        event(OrderApproved(customer_id="c1"), first),
        event(OrderCancelled(customer_id="c1", reason="cancelled_by_customer"), second),
    ]
    assert await inventory.pipeline.process_batch([record_of(e) for e in batch]) == [Outcome.HANDLED] * 5
    assert_found_by_index(inventory, sent)


async def test_the_payment_service_finds_a_batch_by_index(big: Any, sent: Any) -> None:
    payment = await big("payment_svc")
    charged = uuid.uuid4()
    async with payment.db.unit_of_work() as uow:
        uow.write(
            "INSERT INTO payments (order_id, customer_id, amount, status, charge_id)"
            " VALUES (%(o)s, 'c1', 5, 'CHARGED', 'ch_unknown')",
            {"o": charged},
        )
    first, second = uuid.uuid4(), uuid.uuid4()
    batch = [
        event(reserved(), first),
        event(reserved(), second),
        event(OrderCancelled(customer_id="c1", reason="cancelled_by_customer"), second),
        event(OrderCancelled(customer_id="c1", reason="cancelled_by_customer"), charged),
    ]
    assert await payment.pipeline.process_batch([record_of(e) for e in batch]) == [Outcome.HANDLED] * 4
    await payment.work()  # claim, call (a charge, and a refund of a charge the provider never made), record
    assert await payment.scalar("SELECT attempts FROM payments WHERE order_id = :o", o=first) == 1
    assert_found_by_index(payment, sent)


@pytest.mark.parametrize("name", ["order_svc", "payment_svc"])
async def test_a_scrape_reads_no_table_whole(
    big: Any, sent: Any, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service's own /metrics figures cost the same at any table size: the order
    service's read every order twice per scrape (by status, and each saga's duration), the
    payment service's every payment (by status)."""
    svc = await big(name)
    if svc.provider is not None:
        monkeypatch.setitem(payment_runtime._state, "provider", svc.provider)
    assert svc.spec.metrics is not None
    async with svc.db.engine.connect() as conn:
        assert await svc.spec.metrics(conn, name)
    assert_found_by_index(svc, sent, at_least=1)


async def test_the_dashboards_counts_read_no_table_whole(big: Any, sent: Any) -> None:
    """The dashboard's orders by status (refreshed every 5 s while it is open) counted
    the whole table, by status, at each read: 0.3 s at a million orders. Read by index
    whole (the orders_status index holds every order), it would cost no less."""
    svc = await big("order_svc")
    half = ROWS // 2
    assert await dashboard_api.summary(svc.db) == {
        "PENDING": half,
        "APPROVED": half,
        "REJECTED": 0,
        "CANCELLED": 0,
    }
    assert_found_by_index(svc, sent, at_least=1, max_read=DISCARDED)
