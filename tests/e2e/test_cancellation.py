"""Cancellation and deadlines (c4-c6) over HTTP, Kafka and three databases."""

from __future__ import annotations

import time
import uuid

import psycopg

from sagastack.client import SagaClient
from sagastack.system import System
from tests.e2e.conftest import UniqueIds, seed


def payment_status(system: System, order_id: str) -> str | None:
    with psycopg.connect(system.database_urls["payment_svc"]) as conn:
        row = conn.execute("SELECT status FROM payments WHERE order_id = %s", (order_id,)).fetchone()
    return None if row is None else str(row[0])


def test_customer_cancels_an_approved_order_refunded_and_restocked(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    products, customers = seed(client, uid, {"lamp": ("20.00", 3)}, {"gus": "50.00"})
    lamp, gus = products["lamp"], customers["gus"]
    order_id = client.place_order(gus, {lamp: 2})
    assert client.wait_for_events(order_id, {"InventoryCommitted"})["status"] == "APPROVED"
    assert client.account(gus)["balance"] == "10.00"

    customer = system.client(gus)  # the customer cancels: an operator's would say so
    try:
        r = customer.http.post(f"{system.url('order_svc')}/orders/{order_id}/cancel")
    finally:
        customer.close()
    assert r.status_code == 202 and r.json()["status"] == "CANCELLED"
    saga = client.wait_for_events(order_id, {"InventoryReleased", "PaymentRefunded"})
    types = [e["event_type"] for e in saga["events"]]
    assert types[:5] == [
        "OrderCreated",
        "InventoryReserved",
        "PaymentCompleted",
        "OrderApproved",
        "InventoryCommitted",
    ]
    assert set(types[5:]) == {"OrderCancelled", "InventoryReleased", "PaymentRefunded"}
    cancelled = next(e for e in saga["events"] if e["event_type"] == "OrderCancelled")
    for compensation in ("InventoryReleased", "PaymentRefunded"):
        event = next(e for e in saga["events"] if e["event_type"] == compensation)
        assert event["causation_id"] == cancelled["event_id"]
    assert client.account(gus)["balance"] == "50.00"
    stock = client.product(lamp)
    assert (stock["available"], stock["reserved"], stock["sold"]) == (3, 0, 0)
    assert client.order(order_id)["reason"] == "cancelled_by_customer"

    # cancelling again, or a rejected order, answers 409 and changes nothing
    again = client.http.post(f"{system.url('order_svc')}/orders/{order_id}/cancel")
    assert again.status_code == 409
    assert again.json()["reason"] == "order_not_cancellable"
    assert "CANCELLED" in again.json()["detail"]
    assert client.account(gus)["balance"] == "50.00"


def test_an_operator_cancels_an_approved_order_and_the_saga_says_who(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    products, customers = seed(client, uid, {"vase": ("9.00", 2)}, {"ola": "20.00"})
    order_id = client.place_order(customers["ola"], {products["vase"]: 1})
    assert client.wait_for_events(order_id, {"InventoryCommitted"})["status"] == "APPROVED"
    client.cancel(order_id)  # the operator's token
    saga = client.wait_for_events(order_id, {"InventoryReleased", "PaymentRefunded"})
    cancelled = next(e for e in saga["events"] if e["event_type"] == "OrderCancelled")
    assert cancelled["payload"]["reason"] == "cancelled_by_operator"
    assert client.order(order_id)["reason"] == "cancelled_by_operator"
    assert saga["explanation"]["verdict"].startswith(
        "cancelled: an operator cancelled it after it was approved"
    )
    assert client.account(customers["ola"])["balance"] == "20.00"


def test_cancel_answers_404_for_unknown_and_422_for_malformed_ids(system: System) -> None:
    base = system.url("order_svc")
    assert system.http.post(f"{base}/orders/{uuid.uuid4()}/cancel").status_code == 404
    assert system.http.post(f"{base}/orders/not-a-uuid/cancel").status_code == 422


def test_deadline_cancels_a_stuck_saga_and_a_late_payment_is_never_kept(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    """Payment is down, so the saga cannot finish; the order's deadline cancels it and
    inventory releases. When payment comes back it sees InventoryReserved and
    OrderCancelled, in whichever order: the customer is never charged in the end."""
    products, customers = seed(client, uid, {"kite": ("7.00", 2)}, {"hal": "30.00"})
    kite, hal = products["kite"], customers["hal"]
    system.stop_service("payment_svc")
    try:
        r = client.http.post(
            f"{system.url('order_svc')}/orders",
            json={
                "customer_id": hal,
                "items": [{"product_id": kite, "quantity": 1}],
                "deadline_seconds": 1.5,
            },
        )
        assert r.status_code == 202
        order_id = r.json()["order_id"]
        saga = client.wait_for_events(order_id, {"OrderCancelled", "InventoryReleased"}, timeout=30)
        assert saga["status"] == "CANCELLED"
        assert client.order(order_id)["reason"] == "timeout"
        assert client.product(kite)["available"] == 2
    finally:
        system.start_service("payment_svc")
    end = time.monotonic() + 30
    while payment_status(system, order_id) not in ("VOIDED", "REFUNDED"):
        assert time.monotonic() < end, f"payment never settled: {payment_status(system, order_id)}"
        time.sleep(0.1)
    assert client.account(hal)["balance"] == "30.00"
    assert client.order(order_id)["status"] == "CANCELLED"


def test_deadline_seconds_is_validated(system: System) -> None:
    body = {"customer_id": "c", "items": [{"product_id": "p", "quantity": 1}]}
    for bad in (0, -1, 10**6, "soon", 5e-324, 1e-7, 0.1, 0.99):  # under 1 s: a timeout all but certain
        r = system.http.post(f"{system.url('order_svc')}/orders", json={**body, "deadline_seconds": bad})
        assert r.status_code == 422, bad
        assert "deadline_seconds" in r.text
