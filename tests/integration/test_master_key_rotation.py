"""Rotating the master key of personal data (``saga_kit.personal_data``,
``order_svc.masterkeys``) over the order service's real database and HTTP app.

Before rotation was built, an operator who replaced the master key file (the obvious way
to "rotate" it) had every earlier order's personal data shown as erased — the customer
was never forgotten — and every returning customer's order with personal data answered
500. A data key under a master key the service does not have is now a 503 (the data is
there; the service lacks a key), and a rotation rewraps every data key with the new key
while both are given, after which the old key can go."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from order_svc.app import SPEC
from order_svc.masterkeys import rewrap_data_keys
from order_svc.settings import Settings
from saga_kit.personal_data import (
    KEY_BYTES,
    KeyStore,
    MasterKey,
    MasterKeyUnavailable,
    forget,
    load_master_key,
)
from saga_kit.service import http_app
from tests.integration.conftest import ServiceUnderTest, uid


async def _no_metrics() -> bytes:
    return b""


def _key_file(directory: Path, name: str) -> Path:
    path = directory / f"{name}.json"
    path.write_text(json.dumps({"key": base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}))
    return path


def _id_of(path: Path) -> str:
    key = load_master_key(str(path), production=False)
    assert key is not None
    return key.key_id


def _settings(master: Path, *previous: Path, rewrap: bool = True) -> Settings:
    return Settings.model_construct(
        database_url="postgresql+psycopg://unused/db",
        http_port=0,
        pii_master_key_file=str(master),
        pii_previous_master_key_files=",".join(str(p) for p in previous),
        pii_rewrap=rewrap,
    )


class _OrderApp:
    """The order service's HTTP app with these master keys (authentication off: an operator)."""

    def __init__(self, order: ServiceUnderTest, settings: Settings) -> None:
        self.settings, self.order = settings, order
        app = http_app(SPEC, order.db, settings, {}, _no_metrics)
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")

    async def place(self, customer: str, email: str | None) -> httpx.Response:
        body: dict[str, Any] = {"customer_id": customer, "items": [{"product_id": "p", "quantity": 1}]}
        if email is not None:
            body["email"] = email
        return await self.http.post("/orders", json=body, headers={"Idempotency-Key": uuid.uuid4().hex})

    async def personal_data(self, order_id: str) -> Any:
        answer = await self.http.get(f"/orders/{order_id}")
        return answer.json()["personal_data"] if answer.status_code == 200 else answer.status_code

    async def __aenter__(self) -> _OrderApp:
        await self.order.relay_caught_up()  # else, late in a slow run, POST /orders is a 503
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.http.aclose()


async def _masters_of(order: ServiceUnderTest, customers: list[str]) -> list[str | None]:
    async with order.db.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT master_key_id FROM customer_keys"
                " WHERE customer_id = ANY(:c) AND shredded_at IS NULL ORDER BY customer_id"
            ),
            {"c": customers},
        )
        return [r.master_key_id for r in rows]


async def test_a_replaced_master_key_is_a_503_and_a_rotation_keeps_every_order_readable(
    order: ServiceUnderTest, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old, new = _key_file(tmp_path, "old"), _key_file(tmp_path, "new")
    ann, bob = uid("ann"), uid("bob")
    placed = {}
    async with _OrderApp(order, _settings(old)) as app:
        for customer in (ann, bob):
            answer = await app.place(customer, f"{customer}@example.org")
            assert answer.status_code == 202, answer.text
            placed[customer] = answer.json()["order_id"]
        readable = {c: await app.personal_data(o) for c, o in placed.items()}
    assert readable[ann] == {
        "email": f"{ann}@example.org",
        "shipping_address": None,
        "erased": False,
        "unreadable": False,
    }

    # the key file replaced: the data is there, the service lacks the key to it
    async with _OrderApp(order, _settings(new)) as app:
        read = await app.http.get(f"/orders/{placed[ann]}")  # was 200, "erased": true
        assert read.status_code == 503 and "cannot be opened now" in read.json()["detail"], read.text
        assert read.headers["retry-after"] == "30"
        # ann's order, with others in one group commit: hers alone is refused (an operator
        # trial: her key refused every order of its batch, those without personal data too)
        others = [uid("new") for _ in range(6)]
        answers = await asyncio.gather(
            app.place(ann, f"{ann}@example.org"),
            *(app.place(c, f"{c}@example.org" if n % 2 else None) for n, c in enumerate(others)),
        )
        again = answers[0]
        assert again.status_code == 503, again.text  # was a 500
        assert again.json()["reason"] == "service_unavailable"
        assert "personal data cannot be sealed now" in again.json()["detail"]  # not "the database"
        assert [a.status_code for a in answers[1:]] == [202] * len(others), [a.text for a in answers]

    # rotated: the old key beside the new one reads everything, and the job rewraps it all
    rotating = _settings(new, old)
    async with _OrderApp(order, rotating) as app:
        assert {c: await app.personal_data(o) for c, o in placed.items()} == readable
    new_id, old_id = (_id_of(p) for p in (new, old))
    # several instances' first step: the new key given everywhere, nothing rewrapped yet
    assert await rewrap_data_keys(order.db, _settings(new, old, rewrap=False)) == 0
    assert await _masters_of(order, [ann, bob]) == [old_id, old_id]
    with caplog.at_level(logging.INFO, logger="order_svc.masterkeys"):
        assert await rewrap_data_keys(order.db, rotating) >= 2
        assert await rewrap_data_keys(order.db, rotating) == 0  # nothing left under the old key
    assert await _masters_of(order, [ann, bob]) == [new_id, new_id]
    assert f"previous master key ({old_id})" in caplog.text and "may be removed" in caplog.text

    # the old key gone: every order still reads, and a returning customer is served
    async with _OrderApp(order, _settings(new)) as app:
        assert {c: await app.personal_data(o) for c, o in placed.items()} == readable
        assert (await app.place(ann, f"{ann}@example.org")).status_code == 202


async def test_rewrap_takes_rows_from_before_master_key_ids_and_leaves_what_it_cannot_open(
    order: ServiceUnderTest,
) -> None:
    """A row from before rows named their master key (the migration leaves it NULL) is
    unwrapped with each key given; a forgotten customer's row stays as it is; a key
    under a master key not given is counted, not changed, and reads as a 503."""
    old, new, other = (MasterKey.of(secrets.token_bytes(KEY_BYTES)) for _ in range(3))
    ann, bob, cy, dee = (uid(n) for n in ("ann", "bob", "cy", "dee"))
    async with order.db.engine.begin() as conn:
        keys = await KeyStore(old).keys_for(conn, [ann, bob, cy])
        keys |= await KeyStore(other).keys_for(conn, [dee])
        await conn.execute(
            text("UPDATE customer_keys SET master_key_id = NULL WHERE customer_id = :c"), {"c": ann}
        )
        assert await forget(conn, cy) == 1
    rotating = KeyStore(new, [old])
    done = await rotating.rewrap(order.db, batch=1)  # a batch per key: the walk goes on
    assert done.rewrapped >= 2 and done.unknown.get(other.key_id, 0) >= 1
    assert await _masters_of(order, [ann, bob, cy, dee]) == [new.key_id, new.key_id, other.key_id]
    async with order.db.engine.connect() as conn:
        for customer in (ann, bob):
            assert await KeyStore(new).key(conn, keys[customer].key_id) == keys[customer], customer
        assert await KeyStore(new).key(conn, keys[cy].key_id) is None  # forgotten stays forgotten
        with pytest.raises(MasterKeyUnavailable, match=other.key_id):
            await KeyStore(new).key(conn, keys[dee].key_id)


async def test_what_does_not_open_is_unreadable_not_erased_and_a_damaged_key_seals_nothing(
    order: ServiceUnderTest, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An attack trial: a sealed value moved to another of the customer's orders, or a data
    key's row altered, read as ``erased`` — the customer was never forgotten — with no word
    in the log; and the altered key made the customer's next order with personal data a
    500 (a traceback, no audit entry). Now each is ``unreadable`` with an ERROR naming the
    order, and the next order is a 503 naming the key in the log."""
    gina, frank = uid("gina"), uid("frank")
    async with _OrderApp(order, _settings(_key_file(tmp_path, "key"))) as app:
        first, second, franks = [
            (await app.place(c, f"{c}@example.org")).json()["order_id"] for c in (gina, gina, frank)
        ]
        async with order.db.engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE orders SET personal_data = (SELECT personal_data FROM orders WHERE order_id = :a)"
                    " WHERE order_id = :b"
                ),
                {"a": first, "b": second},
            )
            await conn.execute(
                text(
                    "UPDATE customer_keys SET wrapped_key = decode(repeat('ab', 40), 'hex')"
                    " WHERE customer_id = :c AND shredded_at IS NULL"
                ),
                {"c": frank},
            )
        unreadable = {"email": None, "shipping_address": None, "erased": False, "unreadable": True}
        with caplog.at_level(logging.ERROR, logger="order_svc.api"):
            assert await app.personal_data(second) == unreadable
            assert await app.personal_data(franks) == unreadable
        assert f"order {second}: its personal data does not open" in caplog.text
        assert "restore it from a backup" in caplog.text
        assert (await app.personal_data(first))["email"] == f"{gina}@example.org"  # the original opens
        again = await app.place(frank, f"{frank}@example.org")
        assert again.status_code == 503, again.text
        assert (await app.place(frank, "")).status_code == 422  # the rest is as ever
