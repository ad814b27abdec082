"""The invariant checker itself: it must see each kind of violation, or a green chaos run
would prove nothing. Three fresh databases with the real schemas, rows written by hand,
and the payment provider's ledger as its API would list it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import pytest_asyncio

from saga_kit.db import create_engine
from saga_kit.migrations import PLUMBING, migrate
from saga_kit.settings import ServiceSettings
from sagastack import check as check_command
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


def charge(
    oid: str, amount: str = "10.00", status: str = "succeeded", key: str | None = None
) -> dict[str, Any]:
    return {
        "idempotency_key": key or f"charge:{oid}",
        "charge_id": str(uuid.uuid4()),
        "account_id": "c",
        "amount": amount,
        "reference": oid,
        "status": status,
    }


def refund(charge_key: str) -> dict[str, Any]:
    return {"refund_id": str(uuid.uuid4()), "charge_key": charge_key}


def test_a_consistent_state_has_no_violations(urls: dict[str, str]) -> None:
    oid = order(urls, "APPROVED")
    cancelled = order(urls, "CANCELLED")
    run(
        urls["order_svc"],
        ("INSERT INTO order_items (order_id, line_no, product_id, quantity) VALUES (%s, 1, 'p', 2)", (oid,)),
    )
    run(
        urls["inventory_svc"],
        ("INSERT INTO products (product_id, name, price, available, sold) VALUES ('p', 'p', 5, 8, 2)", ()),
        ("INSERT INTO reservations VALUES (%s, 'p', 2, 5, 'COMMITTED')", (oid,)),
    )
    run(
        urls["payment_svc"],
        (
            "INSERT INTO payments (order_id, customer_id, amount, status) VALUES (%s, 'c', 10, 'CHARGED')",
            (oid,),
        ),
        (
            "INSERT INTO payments (order_id, customer_id, amount, status) VALUES (%s, 'c', 10, 'REFUNDED')",
            (cancelled,),
        ),
    )
    ledger = invariants.ProviderLedger(
        [charge(oid), charge(cancelled)], [refund(f"charge:{cancelled}")], {"c": Decimal("90.00")}
    )
    assert invariants.check(urls, {"p": 10}, {"c": Decimal("100.00")}, ledger) == []


def test_the_reconciliation_with_the_provider_sees_every_disagreement() -> None:
    approved, twice, kept, refunded_twice, declined, waiting, phantom = (str(uuid.uuid4()) for _ in range(7))
    orders = {
        approved: ("APPROVED", Decimal("10.00")),
        twice: ("APPROVED", Decimal("10.00")),
        kept: ("CANCELLED", Decimal("10.00")),
        refunded_twice: ("REJECTED", Decimal("10.00")),
        declined: ("REJECTED", Decimal("10.00")),
        waiting: ("CANCELLED", Decimal("10.00")),
    }
    payments = {
        approved: ("c", Decimal("10.00"), "CHARGED"),
        twice: ("c", Decimal("10.00"), "CHARGED"),
        kept: ("c", Decimal("10.00"), "VOIDED"),
        refunded_twice: ("c", Decimal("10.00"), "REFUNDED"),
        declined: ("c", Decimal("10.00"), "DECLINED"),
        waiting: ("c", Decimal("10.00"), "REFUND_PENDING"),
        phantom: ("c", Decimal("10.00"), "CHARGED"),  # an order the order service does not have
    }
    ledger = invariants.ProviderLedger(
        [
            charge(approved, amount="9.00"),
            charge(twice),
            charge(twice, key="another-key"),
            charge(kept),
            charge(refunded_twice),
            charge(declined, status="declined"),
            charge(waiting),
            charge(phantom),
        ],
        [
            refund(f"charge:{refunded_twice}"),
            refund(f"charge:{refunded_twice}"),
            refund(f"charge:{declined}"),
            refund("charge:nothing"),
        ],
        {"c": Decimal("-1.00")},
    )
    found = "\n".join(invariants.reconcile(orders, payments, ledger, {"c": Decimal("100.00")}))
    assert f"order {approved} charged 9.00 but its total is 10.00" in found
    assert f"order {twice} (APPROVED) is charged 2 times at the provider" in found
    assert f"order {kept} (CANCELLED): its charge was refunded 0 times, not once" in found
    assert f"order {kept}: our payment says VOIDED, the provider's ledger does not agree" in found
    assert f"order {refunded_twice} (REJECTED): its charge was refunded 2 times, not once" in found
    assert f"a refund of charge:{declined}, which is no charge" in found
    assert "a refund of charge:nothing, which is no charge" in found
    assert f"order {waiting} (CANCELLED): payment still REFUND_PENDING" in found
    assert "customer c: negative balance -1.00" in found
    assert "customer c: balance -1.00 + charges 29.00 != initial 100.00" in found
    assert f"order {phantom} (MISSING) is charged 10.00" in found
    assert f"order {phantom} (MISSING): its charge was refunded 0 times, not once" in found
    assert f"order {declined}: our payment says" not in found


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
        (
            "INSERT INTO payments (order_id, customer_id, amount, status) VALUES (%s, 'c', 10, 'CHARGED')",
            (rejected_charged,),
        ),
    )
    ledger = invariants.ProviderLedger([charge(rejected_charged)], [], {"c": Decimal("80.00")})
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
        *[  # a wait is said once for the charge and once for a refund: three is one too many
            (
                "INSERT INTO saga_events (event_id, order_id, event_type, producer, occurred_at, payload)"
                " VALUES (%s, %s, 'PaymentPending', 'payment_svc', now(), '{}')",
                (str(uuid.uuid4()), oid),
            )
            for oid in (cancelled, cancelled, approved_unpaid, approved_unpaid, approved_unpaid)
        ],
        *[  # requests, not steps: a client may send one again (a re-sent refused command
            # was "RefusedCommand happened 15 times")
            (
                "INSERT INTO saga_events (event_id, order_id, event_type, producer, occurred_at, payload)"
                " VALUES (%s, %s, %s, 'order_svc', now(), '{}')",
                (str(uuid.uuid4()), approved_unpaid, event_type),
            )
            for event_type in ("RefusedCommand", "CommandRejected") * 2
        ],
        ("INSERT INTO order_status_counts (status, orders) VALUES ('APPROVED', 5)", ()),
    )
    found = "\n".join(invariants.check(urls, {"p": 10}, {"c": Decimal("100.00")}, ledger))
    assert f"order {pending} is still PENDING" in found
    assert "available 5 + reserved 3 + sold 0 != initial 10" in found
    assert f"order {cancelled} (CANCELLED) still holds 3 x p" in found
    assert f"order {rejected_charged} (REJECTED) is charged 10" in found
    assert f"order {approved_unpaid} is APPROVED but was never charged" in found
    assert f"order {rejected_charged} (REJECTED): its charge was refunded 0 times, not once" in found
    assert "customer c: balance 80.00 + charges 0 != initial 100.00" in found
    assert f"order {approved_unpaid}: PaymentCompleted happened 2 times" in found
    assert f"order {approved_unpaid}: PaymentPending happened 3 times" in found
    assert f"order {cancelled}: PaymentPending happened" not in found
    assert "RefusedCommand happened" not in found and "CommandRejected happened" not in found
    kept = "{'APPROVED': 6, 'CANCELLED': 1, 'PENDING': 1, 'REJECTED': 1}"
    assert f"orders by status: kept {kept}, counted {kept.replace('6', '1')}" in found


def test_without_the_providers_ledger_our_payments_are_checked_against_our_orders(
    urls: dict[str, str],
) -> None:
    """A real provider's ledger is not ours to read (``sagastack check`` beside a stack
    that calls one): what our own databases can say is still checked."""
    fine, unpaid, rejected_charged, short, waiting = (
        order(urls, status) for status in ("APPROVED", "APPROVED", "REJECTED", "APPROVED", "CANCELLED")
    )
    run(
        urls["payment_svc"],
        *[
            (
                "INSERT INTO payments (order_id, customer_id, amount, status) VALUES (%s, 'c', %s, %s)",
                (oid, amount, paid),
            )
            for oid, amount, paid in [
                (fine, "10.00", "CHARGED"),
                (unpaid, "10.00", "DECLINED"),
                (rejected_charged, "10.00", "CHARGED"),
                (short, "9.00", "CHARGED"),
                (waiting, "10.00", "REFUND_PENDING"),
            ]
        ],
    )
    found = invariants.check(urls, {}, {}, None)
    assert sorted(found) == sorted(
        [
            f"order {unpaid} is APPROVED but its payment is not CHARGED",
            f"order {rejected_charged} (REJECTED) is charged 10.00",
            f"order {short} charged 9.00 but its total is 10.00",
            f"order {waiting} (CANCELLED): payment still REFUND_PENDING",
        ]
    )


def test_a_check_during_which_a_saga_moved_is_taken_again(
    urls: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three databases have no common snapshot: an order that lands while ``sagastack
    check`` reads them looked like a violation (an operator trial: 12 false alarms in 25
    checks under a trickle of orders). A check during which an outbox was written is
    thrown away and taken again."""
    real_check, calls = invariants.check_counted, []

    def moving_once(*args: Any) -> tuple[list[str], tuple[int, int, int]]:
        calls.append(args)
        if len(calls) == 1:  # a saga step commits in the inventory service mid-check
            run(
                urls["inventory_svc"],
                (
                    "INSERT INTO outbox (event_id, topic, value, sent_at) VALUES (%s, 't', 'x', now())",
                    (str(uuid.uuid4()),),
                ),
            )
            return ["a violation seen while a saga moved"], (1, 0, 0)
        return real_check(*args)

    monkeypatch.setattr(invariants, "check_counted", moving_once)
    assert check_command.settled_check(urls, None, 30) == ([], (0, 0, 0))
    assert len(calls) == 2


def test_a_stack_that_never_stays_still_is_not_settled(
    urls: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def always_moving(*_: Any) -> tuple[list[str], tuple[int, int, int]]:
        run(
            urls["payment_svc"],
            (
                "INSERT INTO outbox (event_id, topic, value, sent_at) VALUES (%s, 't', 'x', now())",
                (str(uuid.uuid4()),),
            ),
        )
        return ["seen while moving"], (1, 0, 0)

    monkeypatch.setattr(invariants, "check_counted", always_moving)
    assert check_command.settled_check(urls, None, 1) is None


def test_an_approved_order_must_have_sold_exactly_its_items(urls: dict[str, str]) -> None:
    """The stock side of an APPROVED order, as the money side is checked: its items sold
    (COMMITTED), every unit of them. An APPROVED order whose units went back on sale
    (released, restocked) or were sold short kept stock conserved and held nothing, and
    every invariant held: the customer paid for goods sold again to someone else."""
    fine, restocked, released, short, unsold = (order(urls, "APPROVED") for _ in range(5))
    run(
        urls["order_svc"],
        *[
            (
                "INSERT INTO order_items (order_id, line_no, product_id, quantity) VALUES (%s, 1, 'p', 2)",
                (oid,),
            )
            for oid in (fine, restocked, released, short, unsold)
        ],
    )
    run(
        urls["inventory_svc"],
        ("INSERT INTO products (product_id, name, price, available, sold) VALUES ('p', 'p', 5, 7, 3)", ()),
        ("INSERT INTO reservations VALUES (%s, 'p', 2, 5, 'COMMITTED')", (fine,)),
        ("INSERT INTO reservations VALUES (%s, 'p', 2, 5, 'RESTOCKED')", (restocked,)),
        ("INSERT INTO reservations VALUES (%s, 'p', 2, 5, 'RELEASED')", (released,)),
        ("INSERT INTO reservations VALUES (%s, 'p', 1, 5, 'COMMITTED')", (short,)),
    )
    found = invariants.check(urls, {"p": 10}, {}, None)
    assert f"order {fine} is APPROVED but sold" not in "\n".join(found)
    for oid, sold in ((restocked, "nothing"), (released, "nothing"), (short, "1 x p"), (unsold, "nothing")):
        assert f"order {oid} is APPROVED but sold {sold}, not its items 2 x p" in found


def test_a_payment_of_another_customer_is_a_violation(urls: dict[str, str]) -> None:
    """An order charged its total, once, but as another customer's payment: with no
    starting balances to conserve (``sagastack check``), nothing said so."""
    oid = order(urls, "APPROVED")
    run(
        urls["payment_svc"],
        (
            "INSERT INTO payments (order_id, customer_id, amount, status) VALUES (%s, 'd', 10, 'CHARGED')",
            (oid,),
        ),
    )
    assert invariants.check(urls, {}, {}, None) == [f"order {oid} is c's, but its payment is d's"]


def test_an_event_not_yet_published_is_a_violation(urls: dict[str, str]) -> None:
    """The demo and the benchmark check whether or not the wait for quiescence timed out:
    an event its service never published (a relay stuck on the saga's last step, say
    inventory's InventoryCommitted, which nothing waits for) left every order terminal and
    nothing held, and every invariant held. The check says what is unsent."""
    run(
        urls["inventory_svc"],
        *[
            (
                "INSERT INTO outbox (event_id, topic, value) VALUES (%s, 'inventory.events', 'x')",
                (str(uuid.uuid4()),),
            )
            for _ in range(2)
        ],
        (
            "INSERT INTO outbox (event_id, topic, value, sent_at) VALUES (%s, 't', 'x', now())",
            (str(uuid.uuid4()),),
        ),
    )
    assert invariants.check(urls, {}, {}, None) == ["inventory_svc: 2 events in its outbox not published"]


def test_pending_dead_letters_are_counted_per_service(urls: dict[str, str]) -> None:
    run(
        urls["order_svc"],
        *[
            (
                "INSERT INTO dead_letters (source_topic, source_partition, source_offset, value,"
                " reason, status) VALUES ('payment.events', 0, %s, 'x', 'bad', %s)",
                (offset, status),
            )
            for offset, status in ((1, "PENDING"), (2, "REPLAYED"), (3, "PENDING"), (4, "DISCARDED"))
        ],
    )
    assert invariants.pending_dead_letters(urls) == {"order_svc": 2}
