"""Forged events against the running system: whoever can write to a topic is not believed.

The attacks of issue 13 ("anyone who can write to a topic can publish a PaymentCompleted
with amount 0.00 and get an order approved without paying"), each sent while a real saga
waits for exactly that event.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg

from events import OrderCreated, OrderLine, PaymentCompleted, encode
from events.envelope import new_envelope
from events.topics import ORDERS, PAYMENT
from sagastack.client import SagaClient
from sagastack.system import System
from tests.e2e.conftest import UniqueIds, seed
from tests.polling import wait_until


def reasons(system: System, service: str, value: bytes) -> list[str]:
    with psycopg.connect(system.database_urls[service]) as conn:
        return [r for (r,) in conn.execute("SELECT reason FROM dead_letters WHERE value = %s", (value,))]


def test_a_forged_payment_does_not_approve_an_order_and_the_real_one_still_does(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    products, customers = seed(client, uid, {"gem": ("999.00", 1)}, {"vic": "1000.00"})
    system.stop_service("payment_svc")  # the saga waits for a payment that only payment sends
    try:
        order_id = client.place_order(customers["vic"], {products["gem"]: 1}, deadline_seconds=600)
        wait_until(
            lambda: "InventoryReserved" in {e["event_type"] for e in client.saga(order_id)["events"]},
            30,
            "stock reserved",
        )
        forged = encode(
            new_envelope(
                PaymentCompleted(customer_id=customers["vic"], amount=Decimal("0.00")),
                order_id=uuid.UUID(order_id),
                causation_id=None,
            )
        )
        key = order_id.encode()
        system.publish([(PAYMENT, key, forged)])  # unsigned
        system.publish([(PAYMENT, key, forged)], signed_by="inventory_svc")  # the wrong key
        tampered = forged.replace(b'"0.00"', b'"0.01"')
        signature = system.signer("payment_svc").headers(PAYMENT, key, forged)  # payment's key, other bytes
        system.publish([(PAYMENT, key, tampered)], headers=signature)
        for service in ("order_svc", "inventory_svc"):
            wait_until(lambda s=service: len(reasons(system, s, forged)) == 2, 30, f"{service} refuses")
            wait_until(lambda s=service: len(reasons(system, s, tampered)) == 1, 30, f"{service} refuses")
            found = reasons(system, service, forged) + reasons(system, service, tampered)
            assert all(r.startswith("bad_signature") for r in found), found
            assert any("not signed" in r for r in found)
            assert any("only payment_svc may emit PaymentCompleted" in r for r in found)
            assert any("forged or tampered" in r for r in found)
        assert client.order(order_id)["status"] == "PENDING"
        assert client.product(products["gem"])["sold"] == 0
        # with payment's own key (stolen, or a bug in payment): the facts are still checked
        system.publish([(PAYMENT, key, forged)], signed_by="payment_svc")
        wait_until(lambda: len(reasons(system, "order_svc", forged)) == 3, 30, "order refuses the amount")
        # the story of the saga names what was refused for its facts; a record that failed
        # the signature check (the wrong key too) is not believed to be about this order
        refused = client.saga(order_id)["explanation"]["refused"]
        assert [r["reason"] for r in refused] == [
            "fact_mismatch: PaymentCompleted charged 0.00, the order's total is 999.00",
        ]
        assert "refused 1 event(s)" in client.saga(order_id)["explanation"]["verdict"]
        assert client.order(order_id)["status"] == "PENDING"
    finally:
        system.start_service("payment_svc")
    saga = client.wait_for_events(order_id, {"InventoryCommitted"})
    assert saga["status"] == "APPROVED"
    assert client.account(customers["vic"])["balance"] == "1.00"  # charged the real 999.00


def order_created(order_id: uuid.UUID, customer: str, product: str) -> bytes:
    """An OrderCreated of 2 x ``product`` for ``customer``, one the order service never wrote."""
    return encode(
        new_envelope(
            OrderCreated(
                customer_id=customer,
                items=(OrderLine(product_id=product, quantity=2),),
                deadline_at=datetime.now(UTC) + timedelta(minutes=10),
            ),
            order_id=order_id,
            causation_id=None,
        )
    )


def test_a_foreign_order_created_starts_no_saga(system: System, client: SagaClient, uid: UniqueIds) -> None:
    """An OrderCreated the order service never wrote: no stock is held, nobody is charged."""
    products, customers = seed(client, uid, {"ghost": ("5.00", 3)}, {"gus": "50.00"})
    order_id = uuid.uuid4()
    forged = order_created(order_id, customers["gus"], products["ghost"])
    system.publish([(ORDERS, str(order_id).encode(), forged)])
    for service in ("inventory_svc", "payment_svc"):
        wait_until(lambda s=service: reasons(system, s, forged) != [], 30, f"{service} refuses")
        assert reasons(system, service, forged)[0] == "bad_signature: the record is not signed"
    assert client.product(products["ghost"])["available"] == 3
    assert client.account(customers["gus"])["balance"] == "50.00"


def test_a_saga_the_order_service_never_started_gives_back_what_it_held(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    """The same OrderCreated signed with the order service's own key (stolen, or the order
    lost to a restored backup): the participants believe it, reserve and charge; the order
    service, answered about an order it never placed, records it CANCELLED
    (``unknown_order``) and cancels it, and everything held is given back."""
    products, customers = seed(client, uid, {"wisp": ("5.00", 3)}, {"ida": "50.00"})
    order_id = uuid.uuid4()
    created = order_created(order_id, customers["ida"], products["wisp"])
    system.publish([(ORDERS, str(order_id).encode(), created)], signed_by="order_svc")
    orders = f"{system.url('order_svc')}/orders/{order_id}"
    wait_until(lambda: client.http.get(orders).status_code == 200, 30, "the order service records it")
    saga = client.wait_for_events(str(order_id), {"OrderCancelled", "InventoryReleased"})
    cancelled = [e for e in saga["events"] if e["event_type"] == "OrderCancelled"]
    assert [e["payload"]["reason"] for e in cancelled] == ["unknown_order"]
    order = client.order(str(order_id))
    assert (order["status"], order["reason"]) == ("CANCELLED", "unknown_order")
    wait_until(lambda: client.account(customers["ida"])["balance"] == "50.00", 30, "money given back")
    assert client.product(products["wisp"])["available"] == 3
