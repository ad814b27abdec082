"""The invariants of docs/design.md §6, checked against all three databases at quiescence.

Used by ``make demo``, the tests and (later) the fault-injection run. Each violation is
a sentence naming what is wrong; an empty list means every invariant holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

import psycopg


def plain_url(url: str) -> str:
    """A service's SQLAlchemy URL (``postgresql+psycopg://``) as psycopg connects to it."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def check(
    database_urls: Mapping[str, str],
    initial_stock: Mapping[str, int],
    initial_balance: Mapping[str, Decimal],
) -> list[str]:
    v: list[str] = []
    with (
        psycopg.connect(plain_url(database_urls["order_svc"])) as orders_db,
        psycopg.connect(plain_url(database_urls["inventory_svc"])) as inventory_db,
        psycopg.connect(plain_url(database_urls["payment_svc"])) as payment_db,
    ):
        orders = {
            str(oid): (status, total)
            for oid, status, total in orders_db.execute("SELECT order_id, status, total FROM orders")
        }
        # 1. every order is terminal
        for oid, (status, _) in orders.items():
            if status == "PENDING":
                v.append(f"order {oid} is still PENDING")

        # 2. stock conserved; no reservation held for a non-APPROVED order
        for pid, available, reserved, sold in inventory_db.execute(
            "SELECT product_id, available, reserved, sold FROM products"
        ):
            if min(available, reserved, sold) < 0:
                v.append(f"product {pid}: negative stock {available}/{reserved}/{sold}")
            if pid in initial_stock and available + reserved + sold != initial_stock[pid]:
                v.append(
                    f"product {pid}: available {available} + reserved {reserved} + sold {sold}"
                    f" != initial {initial_stock[pid]}"
                )
        for oid, pid, qty, status in inventory_db.execute(
            "SELECT order_id, product_id, quantity, status FROM reservations"
        ):
            order_status = orders.get(str(oid), ("MISSING", None))[0]
            if status == "RESERVED":
                v.append(f"order {oid} ({order_status}) still holds {qty} x {pid}")
            if status == "COMMITTED" and order_status != "APPROVED":
                v.append(f"order {oid} ({order_status}) sold {qty} x {pid}")
        for pid, sold, committed in inventory_db.execute(
            "SELECT p.product_id, p.sold, COALESCE(SUM(r.quantity), 0) FROM products p"
            " LEFT JOIN reservations r ON r.product_id = p.product_id AND r.status = 'COMMITTED'"
            " GROUP BY p.product_id, p.sold"
        ):
            if sold != committed:
                v.append(f"product {pid}: sold {sold} but committed reservations say {committed}")

        # 3. money conserved; an APPROVED order is charged its total exactly once
        charged: dict[str, Decimal] = {}
        for oid, customer, amount, status in payment_db.execute(
            "SELECT order_id, customer_id, amount, status FROM payments"
        ):
            order_status, total = orders.get(str(oid), ("MISSING", None))
            if status == "CHARGED":
                charged[customer] = charged.get(customer, Decimal(0)) + amount
                if order_status != "APPROVED":
                    v.append(f"order {oid} ({order_status}) is charged {amount}")
                elif total != amount:
                    v.append(f"order {oid} charged {amount} but its total is {total}")
        charged_orders = {
            str(oid)
            for (oid,) in payment_db.execute("SELECT order_id FROM payments WHERE status = 'CHARGED'")
        }
        for oid, (status, _) in orders.items():
            if status == "APPROVED" and oid not in charged_orders:
                v.append(f"order {oid} is APPROVED but was never charged")
        for customer, balance in payment_db.execute("SELECT customer_id, balance FROM accounts"):
            if balance < 0:
                v.append(f"customer {customer}: negative balance {balance}")
            if customer in initial_balance:
                spent = charged.get(customer, Decimal(0))
                if balance + spent != initial_balance[customer]:
                    v.append(
                        f"customer {customer}: balance {balance} + charges {spent}"
                        f" != initial {initial_balance[customer]}"
                    )

        # 4. no effect applied twice: each saga step happened at most once per order (the
        # commands a client sent, and their refusals, are requests, not steps: a client may
        # send one again)
        for oid, event_type, n in orders_db.execute(
            "SELECT order_id, event_type, COUNT(*) FROM saga_events"
            " WHERE event_type NOT IN ('PlaceOrder', 'CancelOrder', 'CommandRejected')"
            " GROUP BY order_id, event_type HAVING COUNT(*) > 1"
        ):
            v.append(f"order {oid}: {event_type} happened {n} times")
    return v


def _activity(database_urls: Mapping[str, str]) -> tuple[int, int, int]:
    """(unsent outbox rows in all services, PENDING orders, reservations still RESERVED)."""
    unsent = 0
    for url in database_urls.values():
        with psycopg.connect(plain_url(url)) as conn:
            unsent += conn.execute("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0]  # type: ignore[index]
    with psycopg.connect(plain_url(database_urls["order_svc"])) as conn:
        pending = conn.execute("SELECT COUNT(*) FROM orders WHERE status = 'PENDING'").fetchone()[0]  # type: ignore[index]
    with psycopg.connect(plain_url(database_urls["inventory_svc"])) as conn:
        held = conn.execute("SELECT COUNT(*) FROM reservations WHERE status = 'RESERVED'").fetchone()[0]  # type: ignore[index]
    return unsent, pending, held


def wait_for_quiescence(database_urls: Mapping[str, str], timeout: float) -> bool:
    """Wait until nothing is left to publish or settle, seen twice in a row; False on
    timeout (then ``check`` reports what is stuck). Never a substitute for ``check``."""
    import time

    end = time.monotonic() + timeout
    quiet_once = False
    while time.monotonic() < end:
        quiet = _activity(database_urls) == (0, 0, 0)
        if quiet and quiet_once:
            return True
        quiet_once = quiet
        time.sleep(0.25)
    return False
