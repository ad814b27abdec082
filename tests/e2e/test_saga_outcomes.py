"""The three saga outcomes, over HTTP, Kafka and three databases."""

from __future__ import annotations

import concurrent.futures
from decimal import Decimal

from sagastack import invariants
from sagastack.client import SagaClient
from sagastack.system import System
from tests.e2e.conftest import UniqueIds, seed


def test_approved_rejected_for_stock_and_rejected_for_funds_with_compensation(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    products, customers = seed(
        client,
        uid,
        {"widget": ("12.50", 10), "gadget": ("99.99", 1)},
        {"alice": "500.00", "bob": "20.00"},
    )
    w, g = products["widget"], products["gadget"]
    alice, bob = customers["alice"], customers["bob"]

    approved = client.place_order(alice, {w: 2})
    short = client.place_order(alice, {w: 1, g: 5})
    broke = client.place_order(bob, {g: 1})

    saga = client.wait_for_events(approved, {"OrderApproved", "InventoryCommitted"})
    assert [e["event_type"] for e in saga["events"]] == [
        "OrderCreated",
        "InventoryReserved",
        "PaymentCompleted",
        "OrderApproved",
        "InventoryCommitted",
    ]
    causes = {e["event_id"]: e["event_type"] for e in saga["events"]}
    assert [causes.get(e["causation_id"]) for e in saga["events"]] == [
        None,
        "OrderCreated",
        "InventoryReserved",
        "PaymentCompleted",
        "OrderApproved",
    ]
    order = client.order(approved)
    assert (order["status"], order["total"], order["reason"]) == ("APPROVED", "25.00", None)
    assert order["items"] == [{"product_id": w, "quantity": 2, "unit_price": "12.50"}]

    saga = client.wait_for_events(short, {"OrderRejected"})
    assert [e["event_type"] for e in saga["events"]] == [
        "OrderCreated",
        "InventoryReservationFailed",
        "OrderRejected",
    ]
    assert client.order(short)["reason"] == "insufficient_stock"

    saga = client.wait_for_events(broke, {"OrderRejected", "InventoryReleased"})
    assert {e["event_type"] for e in saga["events"]} == {
        "OrderCreated",
        "InventoryReserved",
        "PaymentFailed",
        "OrderRejected",
        "InventoryReleased",
    }
    assert client.order(broke)["reason"] == "insufficient_funds"

    assert client.product(w) | {"name": None} == {
        "product_id": w,
        "name": None,
        "price": "12.50",
        "available": 8,
        "reserved": 0,
        "sold": 2,
    }
    assert client.product(g)["available"] == 1 and client.product(g)["reserved"] == 0
    assert client.account(alice)["balance"] == "475.00"
    assert client.account(bob)["balance"] == "20.00"
    assert (
        invariants.check(
            system.database_urls,
            {w: 10, g: 1},
            {alice: Decimal("500.00"), bob: Decimal("20.00")},
            system.provider_url,
        )
        == []
    )


def test_concurrent_orders_for_the_last_units_over_http_never_oversell(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    products, customers = seed(client, uid, {"last": ("1.00", 5)}, {"rich": "1000.00"})
    pid, cid = products["last"], customers["rich"]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: client.place_order(cid, {pid: 1}), range(25)))
    statuses = [client.wait_for_events(i, {"OrderCreated"})["status"] for i in ids]
    assert statuses.count("APPROVED") == 5
    assert statuses.count("REJECTED") == 20
    for i in ids:  # quiescence: every approved order's sale is committed
        if client.order(i)["status"] == "APPROVED":
            client.wait_for_events(i, {"InventoryCommitted"})
    assert client.product(pid) | {"name": None} == {
        "product_id": pid,
        "name": None,
        "price": "1.00",
        "available": 0,
        "reserved": 0,
        "sold": 5,
    }
    assert client.account(cid)["balance"] == "995.00"
    found = invariants.check(system.database_urls, {pid: 5}, {cid: Decimal("1000.00")}, system.provider_url)
    assert found == []
