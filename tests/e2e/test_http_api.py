"""The HTTP contract: 4xx with a reason for bad input, idempotent order placement."""

from __future__ import annotations

import uuid

import httpx
import pytest

from sagastack.client import SagaClient
from sagastack.system import System
from tests.e2e.conftest import UniqueIds, seed

#: HTTP, a page or the CLI's layout, whatever the broker: make test runs it on Tansu only
pytestmark = pytest.mark.broker_independent

GOOD_LINE = {"product_id": "p1", "quantity": 1}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"customer_id": "c1"},
        {"customer_id": "c1", "items": []},
        {"customer_id": "", "items": [GOOD_LINE]},
        {"customer_id": "has space", "items": [GOOD_LINE]},
        {"customer_id": "c1", "items": [{"product_id": "p1", "quantity": 0}]},
        {"customer_id": "c1", "items": [{"product_id": "p1", "quantity": -3}]},
        {"customer_id": "c1", "items": [{"product_id": "p1", "quantity": "lots"}]},
        {"customer_id": "c1", "items": [{"product_id": "p1"}]},
        {"customer_id": "c1", "items": [GOOD_LINE, GOOD_LINE]},
        {"customer_id": "c1", "items": [{**GOOD_LINE, "price": "0.01"}]},
        {"customer_id": "c1", "items": [GOOD_LINE], "total": "0.01"},
        [1, 2, 3],
    ],
)
def test_invalid_order_bodies_get_422_with_a_reason(system: System, body: object) -> None:
    r = system.http.post(f"{system.url('order_svc')}/orders", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"], "the response must say what is wrong"


def test_non_json_body_gets_422_and_non_utf8_415(system: System) -> None:
    r = system.http.post(
        f"{system.url('order_svc')}/orders",
        content=b"{oops",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422
    # a body that is not even UTF-8 is not the media type it says: 415, not a 400
    for service, path in (("order_svc", "/orders"), ("payment_svc", "/accounts/c1")):
        r = system.http.request(
            "POST" if service == "order_svc" else "PUT",
            f"{system.url(service)}{path}",
            content=b'{"balance": "\xff\xfe"}',
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 415, (service, r.text)
        assert r.json() == {
            "detail": "the body is not UTF-8: byte 0xff at offset 13",
            "reason": "unsupported_media_type",
        }


@pytest.mark.parametrize(
    ("service", "path", "body"),
    [
        ("inventory_svc", "/products/p1", {"name": "x", "price": "-1.00", "stock": 1}),
        ("inventory_svc", "/products/p1", {"name": "x", "price": "1.001", "stock": 1}),
        ("inventory_svc", "/products/p1", {"name": "x", "price": "1.00", "stock": -1}),
        ("inventory_svc", "/products/p1", {"name": "", "price": "1.00", "stock": 1}),
        ("inventory_svc", "/products/p1", {"name": " \t ", "price": "1.00", "stock": 1}),
        ("inventory_svc", "/products/p1", {"name": "\u200b\ufeff", "price": "1.00", "stock": 1}),
        ("inventory_svc", "/products/p1", {"name": "a\u009b31mred", "price": "1.00", "stock": 1}),
        ("inventory_svc", "/products/p1", {"name": "abc\u202efdp.exe", "price": "1.00", "stock": 1}),
        ("inventory_svc", "/products/p1", {"name": "x" * 201, "price": "1.00", "stock": 1}),
        ("inventory_svc", "/products/bad%20id", {"name": "x", "price": "1.00", "stock": 1}),
        ("payment_svc", "/accounts/c1", {"balance": "-5"}),
        ("payment_svc", "/accounts/c1", {"balance": "ten"}),
        ("payment_svc", "/accounts/c1", {}),
    ],
)
def test_invalid_catalogue_and_account_bodies_get_422(
    system: System, service: str, path: str, body: object
) -> None:
    r = system.http.put(f"{system.url(service)}{path}", json=body)
    assert r.status_code == 422, r.text


def test_unknown_resources_get_404_and_malformed_ids_422(system: System) -> None:
    order = system.url("order_svc")
    assert system.http.get(f"{order}/orders/{uuid.uuid4()}").status_code == 404
    assert system.http.get(f"{order}/orders/{uuid.uuid4()}/saga").status_code == 404
    assert system.http.get(f"{order}/orders/not-a-uuid").status_code == 422
    assert (
        system.http.get(f"{system.url('inventory_svc')}/products/nope-{uuid.uuid4().hex}").status_code == 404
    )
    assert (
        system.http.get(f"{system.url('payment_svc')}/accounts/nobody-{uuid.uuid4().hex}").status_code == 404
    )


def test_idempotency_key_returns_the_same_order_and_refuses_a_different_body(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    products, customers = seed(client, uid, {"thing": ("3.00", 10)}, {"ann": "100.00"})
    key = uuid.uuid4().hex
    body = {"customer_id": customers["ann"], "items": [{"product_id": products["thing"], "quantity": 1}]}
    orders = system.url("order_svc") + "/orders"
    placed = system.http.post(orders, json=body, headers={"Idempotency-Key": key})
    replayed = system.http.post(orders, json=body, headers={"Idempotency-Key": key})
    assert (placed.status_code, replayed.status_code) == (202, 202)
    first = placed.json()["order_id"]
    assert replayed.json()["order_id"] == first
    assert "idempotent-replayed" not in placed.headers
    assert replayed.headers["idempotent-replayed"] == "true"  # nothing new was placed
    r = system.http.post(
        f"{system.url('order_svc')}/orders",
        json={
            "customer_id": customers["ann"],
            "items": [{"product_id": products["thing"], "quantity": 2}],
        },
        headers={"Idempotency-Key": key},
    )
    assert r.status_code == 409 and "Idempotency-Key" in r.json()["detail"]
    # two keys on one request: which one would it be? Neither: refused, nothing placed
    twice = system.http.post(
        f"{system.url('order_svc')}/orders",
        json={"customer_id": customers["ann"], "items": [{"product_id": products["thing"], "quantity": 1}]},
        headers=httpx.Headers([("Idempotency-Key", key), ("Idempotency-Key", uuid.uuid4().hex)]),
    )
    assert twice.status_code == 422 and twice.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    # a key is stored: a control character in it (a terminal's escape, a tab) is refused, as
    # in any stored text; once it was stored as sent (a key is UTF-8 text: the C1 controls
    # are sent as UTF-8)
    for raw, named in (("k\x85\x9b[31mred".encode(), "U+0085"), (b"a\tb", "U+0009")):
        refused = system.http.post(orders, json=body, headers=[(b"Idempotency-Key", raw)])
        assert refused.status_code == 422, refused.text
        (why,) = refused.json()["detail"]
        assert why["loc"] == ["header", "Idempotency-Key"] and named in why["msg"], why
    client.wait_for_events(first, {"InventoryCommitted"})
    assert client.product(products["thing"])["sold"] == 1  # one order, charged and sold once
    assert client.account(customers["ann"])["balance"] == "97.00"


def test_health_endpoints_name_each_check(system: System) -> None:
    for name in ("order_svc", "inventory_svc", "payment_svc"):
        assert httpx.get(f"{system.url(name)}/health/live").json() == {"status": "ok"}
        ready = httpx.get(f"{system.url(name)}/health/ready")
        assert ready.status_code == 200
        own = {"payment_provider"} if name == "payment_svc" else set()  # its circuit breaker
        assert set(ready.json()["checks"]) == {"database", "broker", "consumers", "outbox_relay", *own}
