"""Personal data (saga_kit.personal_data): sealed with the customer's own key before it is
stored or sent, so neither a database nor the Kafka log ever holds it in the clear; and
forgetting the customer (crypto-shredding) makes every copy unreadable while the saga's
money and stock records stay."""

from __future__ import annotations

import base64
import json
import secrets
import uuid

import psycopg

from events.topics import ORDERS
from sagastack.client import SagaClient
from sagastack.system import SERVICES, System
from tests.e2e.conftest import UniqueIds, kafka_records, sagactl, seed
from tests.polling import wait_until


def database_text(url: str) -> str:
    """Every row of every table of a database, as text."""
    with psycopg.connect(url) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
            )
        ]
        return "\n".join(str(row[0]) for t in tables for row in conn.execute(f'SELECT t::text FROM "{t}" t'))


def test_personal_data_is_sealed_everywhere_and_forgetting_makes_it_unreadable(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    products, customers = seed(client, uid, {"fig": ("4.00", 5)}, {"ann": "40.00"})
    ann = customers["ann"]
    email = f"{uuid.uuid4().hex}@example.org"
    street = f"{uuid.uuid4().hex} Harbour Road"
    mine = system.client(ann)
    order_id = mine.place_order(ann, {products["fig"]: 2}, email=email, shipping_address=street)
    mine.wait_for_events(order_id, {"OrderApproved", "InventoryCommitted"})

    # its customer (and the operator) read it back
    assert mine.order(order_id)["personal_data"] == {
        "email": email,
        "shipping_address": street,
        "erased": False,
        "unreadable": False,
    }
    assert client.order(order_id)["personal_data"]["email"] == email

    # in the clear nowhere: not in any database, not in the Kafka log
    for name in SERVICES:
        stored = database_text(system.database_urls[name])
        assert email not in stored and street not in stored, f"{name} stores personal data in the clear"
    values = [
        r.value for r in kafka_records(system, ORDERS) if r.key == order_id.encode() and r.value is not None
    ]
    created = [json.loads(v) for v in values if json.loads(v)["event_type"] == "OrderCreated"]
    assert len(created) == 1 and created[0]["schema_version"] == 3
    sealed = created[0]["payload"]["personal_data"]
    assert set(sealed) == {"key_id", "nonce", "ciphertext"}
    assert all(email.encode() not in v and street.encode() not in v for v in values)

    # forget the customer: the key goes, the data with it; money and stock stay
    before = client.order(order_id)
    forgotten = sagactl(system, "forget", ann, "-o", "json")
    assert forgotten.returncode == 0, forgotten.stderr
    assert json.loads(forgotten.stdout) == {"customer_id": ann, "keys_destroyed": 1}
    after = client.order(order_id)
    assert after["personal_data"] == {
        "email": None,
        "shipping_address": None,
        "erased": True,
        "unreadable": False,
    }
    assert (after["status"], after["total"], after["items"]) == (
        before["status"],
        before["total"],
        before["items"],
    )
    assert client.product(products["fig"])["sold"] == 2
    assert client.account(ann)["balance"] == "32.00"
    with psycopg.connect(system.database_urls["order_svc"]) as conn:
        row = conn.execute(
            "SELECT wrapped_key, shredded_at FROM customer_keys WHERE key_id = %s", (sealed["key_id"],)
        ).fetchone()
    assert row is not None and row[0] is None and row[1] is not None  # the record of when, no key
    assert json.loads(sagactl(system, "forget", ann, "-o", "json").stdout)["keys_destroyed"] == 0

    # the customer's next order gets a new key and is readable again
    again = mine.place_order(ann, {products["fig"]: 1}, email=email)
    assert mine.order(again)["personal_data"]["email"] == email
    assert client.order(order_id)["personal_data"]["erased"] is True
    mine.close()


def test_a_customer_can_not_forget_and_bad_personal_data_is_a_422(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    products, customers = seed(client, uid, {"oat": ("1.00", 5)}, {"bea": "5.00"})
    bea = system.client(customers["bea"])
    refused = bea.http.post(f"{system.url('order_svc')}/customers/{customers['bea']}/forget")
    assert refused.status_code == 403
    for bad, why in (
        ({"email": "not-an-address"}, "value is not a valid email address"),
        ({"shipping_address": ""}, "String should have at least 1 character"),
        ({"shipping_address": "x" * 501}, "String should have at most 500 characters"),
        ({"shipping_address": "\t"}, "must not be blank"),
        ({"shipping_address": "\u200b"}, "must not be blank"),
        ({"shipping_address": "1 Main St\u202e"}, "bidirectional control character U+202E"),
        ({"shipping_address": "x\u0000y"}, "control character U+0000"),
    ):
        body = {
            "customer_id": customers["bea"],
            "items": [{"product_id": products["oat"], "quantity": 1}],
            **bad,
        }
        answer = bea.http.post(f"{system.url('order_svc')}/orders", json=body)
        assert answer.status_code == 422, (bad, answer.text)
        assert why in answer.json()["detail"][0]["msg"], answer.text
        assert "not-an-address" not in answer.text  # the input is never echoed
    bea.close()


def test_the_master_key_rotates_on_a_running_service(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    """The order service started with a new master key and the old one as a previous key
    rewraps every data key as it starts and says when the old key may go; started then
    with the new key alone, every order's personal data still reads. (Before rotation was
    built, a new key file made every earlier order read as erased.)"""
    products, customers = seed(client, uid, {"rye": ("1.00", 5)}, {"cal": "5.00"})
    cal = system.client(customers["cal"])
    email = f"{uuid.uuid4().hex}@example.org"
    order_id = cal.place_order(customers["cal"], {products["rye"]: 1}, email=email)
    keys = system.run_dir / "keys"
    old, new = keys / "pii-master.json", keys / f"pii-rotated-{uuid.uuid4().hex[:8]}.json"
    new.write_text(json.dumps({"key": base64.b64encode(secrets.token_bytes(32)).decode()}))
    new.chmod(0o600)
    log = system.run_dir / "logs" / "order_svc.log"
    try:
        since = log.stat().st_size
        system.start_service(
            "order_svc",
            env={"ORDER_PII_MASTER_KEY_FILE": str(new), "ORDER_PII_PREVIOUS_MASTER_KEY_FILES": str(old)},
        )
        wait_until(lambda: b"may be removed" in log.read_bytes()[since:], 30, "the rewrap job's word: done")
        assert cal.order(order_id)["personal_data"]["email"] == email
        system.start_service("order_svc", env={"ORDER_PII_MASTER_KEY_FILE": str(new)})
        assert cal.order(order_id)["personal_data"]["email"] == email  # the old key is not needed
        again = cal.place_order(customers["cal"], {products["rye"]: 1}, email=email)
        assert cal.order(again)["personal_data"]["email"] == email
    finally:  # the run's own key again, the rotated one beside it: the job wraps back
        system.start_service("order_svc", env={"ORDER_PII_PREVIOUS_MASTER_KEY_FILES": str(new)})
    assert cal.order(order_id)["personal_data"]["email"] == email
    cal.close()
