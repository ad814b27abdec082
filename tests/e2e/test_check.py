"""``python -m sagastack check`` beside a running stack: it finds the stack through its
run directory, waits for it to settle, and says whether every invariant holds — or
which does not, or what is still in flight."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

from sagastack.client import SagaClient
from sagastack.invariants import plain_url
from sagastack.system import System
from tests.e2e.conftest import UniqueIds, sagastack, seed

pytestmark = pytest.mark.broker_independent  # it reads the databases, not the broker


@contextmanager
def changed(url: str, do: str, undo: str, params: tuple[object, ...]) -> Iterator[None]:
    """A row changed behind the services' backs while the block runs (the system is
    shared with other tests: it is put back)."""
    with psycopg.connect(plain_url(url), autocommit=True) as conn:
        conn.execute(do, params)
        try:
            yield
        finally:
            conn.execute(undo, params)


def test_check_says_every_invariant_holds_or_which_does_not(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    products, customers = seed(client, uid, {"kettle": ("4.00", 3)}, {"ann": "100.00"})
    order_id = client.place_order(customers["ann"], {products["kettle"]: 2})
    client.wait_for_events(order_id, {"InventoryCommitted"})

    done = sagastack("check", "--run-dir", str(system.run_dir), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "against the provider simulator's ledger" in done.stdout
    assert done.stdout.endswith("every invariant checked holds\n")

    pid = products["kettle"]
    with changed(
        system.database_urls["inventory_svc"],
        "UPDATE products SET sold = sold + 1 WHERE product_id = %s",
        "UPDATE products SET sold = sold - 1 WHERE product_id = %s",
        (pid,),
    ):
        done = sagastack("check", "--run-dir", str(system.run_dir), timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"invariant violated: product {pid}: sold 3 but committed reservations say 2" in done.stdout


def unsettled_check(system: System, service: str, table: str, insert: str) -> tuple[str, str]:
    """``check --wait 1`` while a row of ``table`` that never settles, inserted behind
    the services' backs by ``insert`` (its order id the one parameter), is there; it exits
    3 (not settled). Returns the row's order id and what check printed."""
    oid = str(uuid.uuid4())
    delete = f"DELETE FROM {table} WHERE order_id = %s"
    with changed(system.database_urls[service], insert, delete, (oid,)):
        done = sagastack("check", "--run-dir", str(system.run_dir), "--wait", "1", timeout=120)
    assert done.returncode == 3, done.stdout + done.stderr
    return oid, done.stdout


def test_check_waits_for_a_stack_to_settle_and_says_what_is_in_flight(system: System) -> None:
    oid, said = unsettled_check(  # an order whose deadline is an hour away, stuck PENDING
        system,
        "order_svc",
        "orders",
        "INSERT INTO orders (order_id, customer_id, status, total, deadline_at)"
        " VALUES (%s, 'nobody', 'PENDING', 1, now() + interval '1 hour')",
    )
    assert "not settled after 1 s: 1 order PENDING, 0 reservations held" in said
    assert f"the oldest PENDING: {oid} (placed " in said
    assert "Nothing moved while it waited: these look stuck, not in flight" in said


def test_check_names_the_provider_when_only_payments_wait_on_it(system: System) -> None:
    """A refund waiting through a provider outage was reported as "a saga whose event was
    lost, or a service that is down" (a trial): the payment service knows the provider's
    last answer, and check says it."""
    _, said = unsettled_check(  # a refund the provider keeps refusing, due again in an hour
        system,
        "payment_svc",
        "payments",
        "INSERT INTO payments (order_id, customer_id, amount, status, attempts, waiting_since,"
        " last_error, next_attempt_at) VALUES (%s, 'nobody', 1, 'REFUND_PENDING', 1, now(),"
        " 'the provider answered 503 unavailable after 1 ms', now() + interval '1 hour')",
    )
    assert "0 orders PENDING, 0 reservations held, 1 payment waiting on the provider" in said
    assert "the provider's last answers: the provider answered 503 unavailable after 1 ms" in said
    assert "the payments wait on the provider" in said and "look stuck" not in said
