"""The invariant checker itself: it must see each kind of violation, or a green chaos run
would prove nothing. Three fresh databases with the real schemas, rows written by hand."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import psycopg
import pytest_asyncio

from saga_kit.db import create_engine
from saga_kit.migrations import PLUMBING, migrate
from saga_kit.settings import ServiceSettings
from sagastack import invariants
from sagastack.embedded import Postgres
from tests.integration.conftest import SPECS


@pytest_asyncio.fixture
async def urls(postgres: Postgres) -> AsyncIterator[dict[str, str]]:
    suffix = uuid.uuid4().hex[:8]
    out = {}
    for name, spec in SPECS.items():
        db = f"inv_{name}_{suffix}"
        with psycopg.connect(postgres.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db}"')
        out[name] = postgres.url(db)
        engine = create_engine(ServiceSettings._async_driver(out[name]))
        await migrate(engine, PLUMBING + spec.migrations)
        await engine.dispose()
    yield out


def run(url: str, *statements: tuple[str, tuple[object, ...]]) -> None:
    with psycopg.connect(url) as conn:
        for sql, params in statements:
            conn.execute(sql, params)


def order(urls: dict[str, str], status: str, total: str | None = "10.00") -> str:
    oid = str(uuid.uuid4())
    run(
        urls["order_svc"],
        (
            "INSERT INTO orders (order_id, customer_id, status, total, deadline_at)"
            " VALUES (%s, 'c', %s, %s, now())",
            (oid, status, total),
        ),
    )
    return oid


def test_a_consistent_state_has_no_violations(urls: dict[str, str]) -> None:
    oid = order(urls, "APPROVED")
    run(
        urls["inventory_svc"],
        ("INSERT INTO products (product_id, name, price, available, sold) VALUES ('p', 'p', 5, 8, 2)", ()),
        ("INSERT INTO reservations VALUES (%s, 'p', 2, 5, 'COMMITTED')", (oid,)),
    )
    run(
        urls["payment_svc"],
        ("INSERT INTO accounts (customer_id, balance) VALUES ('c', 90)", ()),
        (
            "INSERT INTO payments (order_id, customer_id, amount, status) VALUES (%s, 'c', 10, 'CHARGED')",
            (oid,),
        ),
    )
    assert invariants.check(urls, {"p": 10}, {"c": Decimal("100.00")}) == []


def test_every_kind_of_violation_is_reported(urls: dict[str, str]) -> None:
    pending = order(urls, "PENDING")
    cancelled = order(urls, "CANCELLED")
    approved_unpaid = order(urls, "APPROVED")
    rejected_charged = order(urls, "REJECTED")
    run(
        urls["inventory_svc"],
        (
            "INSERT INTO products (product_id, name, price, available, reserved) VALUES ('p', 'p', 5, 5, 3)",
            (),
        ),
        ("INSERT INTO reservations VALUES (%s, 'p', 3, 5, 'RESERVED')", (cancelled,)),
    )
    run(
        urls["payment_svc"],
        ("INSERT INTO accounts (customer_id, balance) VALUES ('c', 80)", ()),
        (
            "INSERT INTO payments (order_id, customer_id, amount, status) VALUES (%s, 'c', 10, 'CHARGED')",
            (rejected_charged,),
        ),
    )
    run(
        urls["order_svc"],
        *[
            (
                "INSERT INTO saga_events (event_id, order_id, event_type, producer, occurred_at, payload)"
                " VALUES (%s, %s, 'PaymentCompleted', 'payment_svc', now(), '{}')",
                (str(uuid.uuid4()), approved_unpaid),
            )
            for _ in range(2)
        ],
    )
    found = "\n".join(invariants.check(urls, {"p": 10}, {"c": Decimal("100.00")}))
    assert f"order {pending} is still PENDING" in found
    assert "available 5 + reserved 3 + sold 0 != initial 10" in found
    assert f"order {cancelled} (CANCELLED) still holds 3 x p" in found
    assert f"order {rejected_charged} (REJECTED) is charged 10" in found
    assert f"order {approved_unpaid} is APPROVED but was never charged" in found
    assert "customer c: balance 80.00 + charges 10.00 != initial 100.00" in found
    assert f"order {approved_unpaid}: PaymentCompleted happened 2 times" in found
