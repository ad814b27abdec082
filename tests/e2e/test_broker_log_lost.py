"""A broker whose log is gone: the embedded Tansu keeps its log in memory, so a stack
stopped and started again (``make run`` twice, the databases kept) meets an empty one.
An event sent before the stop and not yet taken by its consumer was lost with it, and the
saga waited for it for ever: an attack trial saw a reservation held for good after a
Ctrl-C took ``OrderApproved`` away. Each service now notes the broker's cluster id, and
a new one gets what it sent again (``saga_kit.outbox.on_broker``).

Here ``OrderApproved`` is sent while inventory is paused (SIGSTOP), the stack is
stopped, and started again on the same run directory: the order service publishes its
events again, inventory drops the ones it had and commits the sale."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psycopg
import pytest

from sagastack.system import BrokerKind, System
from tests.e2e.conftest import UniqueIds, seed


def _reservation(system: System, order_id: str) -> str | None:
    with psycopg.connect(system.database_urls["inventory_svc"]) as conn:
        row = conn.execute("SELECT status FROM reservations WHERE order_id = %s", (order_id,)).fetchone()
    return None if row is None else str(row[0])


def _sent(system: System, service: str, order_id: str, event_type: str) -> bool:
    """Has ``service``'s outbox relay sent the order's ``event_type`` to the broker?"""
    with psycopg.connect(system.database_urls[service]) as conn:
        row = conn.execute(
            "SELECT count(*) FROM outbox WHERE key = %s AND sent_at IS NOT NULL"
            " AND convert_from(value, 'UTF8') LIKE %s",
            (order_id.encode(), f'%"{event_type}"%'),
        ).fetchone()
    return bool(row and row[0])


def _until(check: object, what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > end:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.1)


def test_an_event_lost_with_the_brokers_log_is_published_again_and_the_saga_ends(
    run_root: Path, broker_kind: BrokerKind, uid: UniqueIds
) -> None:
    if broker_kind == "kafka":
        pytest.skip("Apache Kafka keeps its log across a restart: nothing is lost to publish again")
    run_dir = run_root / "log-lost"
    with System(run_dir, free_ports=True, fresh=True, broker_kind="tansu") as first:
        client = first.client()
        products, customers = seed(client, uid, {"oak": ("2.00", 5)}, {"ivy": "10.00"})
        first.provider_faults(latency_ms=1500)  # a window between reserving and approving
        order_id = client.place_order(customers["ivy"], {products["oak"]: 1})
        _until(lambda: _reservation(first, order_id) == "RESERVED", "the stock reserved")
        # …and its event on the broker: the relay sends it after the reservation's commit,
        # and a pause in between froze it unsent (payment never heard of the order)
        _until(lambda: _sent(first, "inventory_svc", order_id, "InventoryReserved"), "InventoryReserved sent")
        inventory = first.services["inventory_svc"].proc
        assert inventory is not None
        os.kill(inventory.pid, signal.SIGSTOP)  # it takes nothing more
        _until(lambda: client.order(order_id)["status"] == "APPROVED", "the order approved")
        _until(
            lambda: _sent(first, "order_svc", order_id, "OrderApproved"), "OrderApproved sent to the broker"
        )
        os.kill(inventory.pid, signal.SIGKILL)  # and never will from this broker
        assert _reservation(first, order_id) == "RESERVED"  # the sale not made: it waits
        client.close()

    with System(run_dir, free_ports=True, fresh=False, broker_kind="tansu") as again:
        _until(lambda: _reservation(again, order_id) == "COMMITTED", "the sale made after the restart")
        said = again.log_tail("order_svc", 400, since_start=True)
        assert "is not the one this service published to" in said, said
        client = again.client()
        try:
            assert client.order(order_id)["status"] == "APPROVED"
            assert client.product(products["oak"])["available"] == 4  # sold once, not twice
        finally:
            client.close()
