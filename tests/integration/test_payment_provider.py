"""The card processor's simulator (payment_provider) on the real PostgreSQL: its app runs
in process (httpx's ASGI transport, or uvicorn on a free port where a real connection
matters), over its own database, migrated like at start."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from payment_provider.app import build_app, prepare
from payment_provider.settings import Settings
from saga_kit.db import create_engine
from saga_kit.settings import async_postgres_url
from sagastack.embedded import DATABASES, Postgres, free_port
from tests.integration.conftest import broken_off_answer
from tests.polling import until

REPLAYED = "Idempotent-Replayed"


@pytest.fixture(scope="session")
def provider_url(postgres: Postgres) -> str:
    return async_postgres_url(postgres.url(DATABASES["payment_provider"]))


@pytest_asyncio.fixture(scope="session")
async def provider_engine(provider_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(provider_url, pool_size=12)  # 24 connections: 20 concurrent requests fit
    await prepare(engine)
    yield engine
    await engine.dispose()


def client_of(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://provider")


@pytest_asyncio.fixture
async def provider(provider_url: str, provider_engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    """A fresh app (its faults off) with fault control on, over the shared database."""
    settings = Settings(database_url=provider_url, fault_control=True)
    async with client_of(build_app(settings, provider_engine)) as client:
        yield client


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def account(provider: httpx.AsyncClient, balance: str) -> str:
    account_id = uid("acct")
    r = await provider.put(f"/v1/accounts/{account_id}", json={"balance": balance})
    assert r.status_code == 200, r.text
    assert r.json() == {"account_id": account_id, "balance": balance}
    return account_id


async def balance_of(provider: httpx.AsyncClient, account_id: str) -> str:
    r = await provider.get(f"/v1/accounts/{account_id}")
    assert r.status_code == 200, r.text
    value: str = r.json()["balance"]
    return value


async def charge(
    provider: httpx.AsyncClient, key: str, account_id: str, amount: str, reference: str = "order-1"
) -> httpx.Response:
    body = {"account_id": account_id, "amount": amount, "reference": reference}
    return await provider.post("/v1/charges", json=body, headers={"Idempotency-Key": key})


async def refund(provider: httpx.AsyncClient, key: str, charge_key: str) -> httpx.Response:
    return await provider.post(
        "/v1/refunds", json={"charge_key": charge_key}, headers={"Idempotency-Key": key}
    )


async def faults(provider: httpx.AsyncClient, **settings: Any) -> dict[str, Any]:
    r = await provider.put("/v1/faults", json=settings)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def stored_charge(provider: httpx.AsyncClient, key: str) -> httpx.Response:
    return await provider.get(f"/v1/charges/{key}")


async def test_head_answers_wherever_get_does(provider: httpx.AsyncClient) -> None:
    """RFC 9110 §9.3.2, as on the services: the GET's status and headers, no content."""
    for path in ("/v1/ledger", "/v1/accounts", "/v1/faults", "/health/ready", "/v1/charges/no-such-key"):
        got, head = await provider.get(path), await provider.head(path)
        assert (head.status_code, head.content) == (got.status_code, b""), path
        assert head.headers["content-length"] == str(len(got.content)), path


# -- charges ----------------------------------------------------------------------------
async def test_a_charge_takes_the_amount_from_the_balance(provider: httpx.AsyncClient) -> None:
    acct = await account(provider, "100.00")
    key = uid("charge")
    r = await charge(provider, key, acct, "12.34", reference="order 7f/\u00e9")
    assert r.status_code == 201, r.text
    assert REPLAYED not in r.headers
    body = r.json()
    assert set(body) == {
        "charge_id",
        "idempotency_key",
        "account_id",
        "amount",
        "reference",
        "status",
        "decline_code",
        "refunded",
        "created_at",
    }
    assert uuid.UUID(body["charge_id"])
    assert (body["idempotency_key"], body["account_id"], body["amount"], body["reference"]) == (
        key,
        acct,
        "12.34",
        "order 7f/\u00e9",
    )
    assert (body["status"], body["decline_code"], body["refunded"]) == ("succeeded", None, False)
    assert body["created_at"].endswith("Z")
    assert await balance_of(provider, acct) == "87.66"
    assert (await stored_charge(provider, key)).json() == body
    # an amount with fewer places is the same amount, answered with two
    r = await charge(provider, uid("charge"), acct, "7.5")
    assert (r.status_code, r.json()["amount"]) == (201, "7.50")
    assert await balance_of(provider, acct) == "80.16"


@pytest.mark.parametrize(
    ("balance", "decline_code"), [("10.00", "insufficient_funds"), (None, "unknown_account")]
)
async def test_a_decline_is_stored_under_its_key_and_replayed(
    provider: httpx.AsyncClient, balance: str | None, decline_code: str
) -> None:
    acct = await account(provider, balance) if balance is not None else uid("nobody")
    key = uid("charge")
    first = await charge(provider, key, acct, "10.01")
    assert first.status_code == 402, first.text
    assert REPLAYED not in first.headers
    assert first.json()["error"] == "card_declined"
    assert first.json()["decline_code"] == decline_code
    assert set(first.json()) == {"error", "decline_code", "message"}
    again = await charge(provider, key, acct, "10.01")
    assert (again.status_code, again.json(), again.headers[REPLAYED]) == (402, first.json(), "true")
    stored = (await stored_charge(provider, key)).json()
    assert (stored["status"], stored["decline_code"], stored["refunded"]) == ("declined", decline_code, False)
    assert stored["amount"] == "10.01"
    if balance is not None:
        assert await balance_of(provider, acct) == balance  # nothing taken
        # the balance is enough now, but the key's answer is what it was
        await provider.put(f"/v1/accounts/{acct}", json={"balance": "50.00"})
        assert (await charge(provider, key, acct, "10.01")).status_code == 402
        assert await balance_of(provider, acct) == "50.00"
    else:
        assert (await provider.get(f"/v1/accounts/{acct}")).json()["error"] == "no_such_account"


async def test_a_replay_answers_the_stored_answer_and_charges_nothing(provider: httpx.AsyncClient) -> None:
    acct = await account(provider, "30.00")
    key = uid("charge")
    first = await charge(provider, key, acct, "10.00")
    assert first.status_code == 201
    for amount in ("10.00", "10"):  # the same amount, written otherwise
        again = await charge(provider, key, acct, amount)
        assert again.status_code == 201
        assert again.headers[REPLAYED] == "true"
        assert again.json() == first.json()
    assert await balance_of(provider, acct) == "20.00"


@pytest.mark.parametrize("changed", ["account_id", "amount", "reference"])
async def test_a_key_reused_with_another_body_is_refused(provider: httpx.AsyncClient, changed: str) -> None:
    acct, other = await account(provider, "30.00"), await account(provider, "30.00")
    key = uid("charge")
    assert (await charge(provider, key, acct, "5.00", "order-a")).status_code == 201
    body = {"account_id": acct, "amount": "5.00", "reference": "order-a"}
    body[changed] = {"account_id": other, "amount": "5.01", "reference": "order-b"}[changed]
    r = await provider.post("/v1/charges", json=body, headers={"Idempotency-Key": key})
    assert r.status_code == 409
    assert r.json()["error"] == "idempotency_key_reused"
    assert set(r.json()) == {"error", "message"}
    assert (await balance_of(provider, acct), await balance_of(provider, other)) == ("25.00", "30.00")


async def test_a_charge_or_refund_without_an_idempotency_key_is_refused(provider: httpx.AsyncClient) -> None:
    acct = await account(provider, "30.00")
    body = {"account_id": acct, "amount": "5.00", "reference": "r"}
    for headers in ({}, {"Idempotency-Key": ""}):
        r = await provider.post("/v1/charges", json=body, headers=headers)
        assert (r.status_code, r.json()["error"]) == (400, "idempotency_key_required")
        r = await provider.post("/v1/refunds", json={"charge_key": "x"}, headers=headers)
        assert (r.status_code, r.json()["error"]) == (400, "idempotency_key_required")
    assert await balance_of(provider, acct) == "30.00"


async def test_an_idempotency_key_sent_twice_is_refused_and_charges_nothing(
    provider: httpx.AsyncClient,
) -> None:
    """Two ``Idempotency-Key`` headers charged under the first (a trial): a client retrying
    under the second would have been charged twice. Which one was meant is unknown: 422."""
    acct = await account(provider, "30.00")
    twice = httpx.Headers([("Idempotency-Key", "k-one"), ("Idempotency-Key", "k-two")])
    for path, body in (
        ("/v1/charges", {"account_id": acct, "amount": "5.00", "reference": "r"}),
        ("/v1/refunds", {"charge_key": "k-one"}),
    ):
        r = await provider.post(path, json=body, headers=twice)
        assert (r.status_code, r.json()["error"]) == (422, "invalid_request"), r.text
        (detail,) = r.json()["details"]
        assert (detail["loc"], detail["type"]) == (["header", "Idempotency-Key"], "duplicate")
    assert await balance_of(provider, acct) == "30.00"
    assert (await provider.get("/v1/charges/k-one")).status_code == 404


async def test_an_idempotency_key_that_is_not_utf8_is_refused(provider: httpx.AsyncClient) -> None:
    """Every key that was not UTF-8 was read as the one key U+FFFD: the second client was
    answered the first one's charge as a replay (an attack trial)."""
    acct = await account(provider, "30.00")
    for raw in (b"caf\xe9", b"x\xe8", b"\xff\xfe"):
        body = {"account_id": acct, "amount": "5.00", "reference": "r"}
        r = await provider.post("/v1/charges", json=body, headers=[(b"Idempotency-Key", raw)])
        assert (r.status_code, r.json()["error"]) == (422, "invalid_request"), r.text
        assert r.json()["details"][0]["msg"] == "must be text in UTF-8"
    assert await balance_of(provider, acct) == "30.00"
    ledger = (await provider.get("/v1/ledger")).json()
    assert "\ufffd" not in {c["idempotency_key"] for c in ledger["charges"]}


async def test_invalid_requests_are_refused_and_change_nothing(provider: httpx.AsyncClient) -> None:
    acct = await account(provider, "30.00")
    good = {"account_id": acct, "amount": "5.00", "reference": "r"}
    bad_bodies = [
        {**good, "amount": "-1.00"},
        {**good, "amount": "1.234"},
        {**good, "amount": 5},
        {**good, "amount": "1000000000000.00"},
        {**good, "account_id": "x" * 101},
        {**good, "account_id": "a\nb"},
        {**good, "reference": "r" * 201},
        {**good, "currency": "EUR"},
        {"account_id": acct, "amount": "5.00"},
    ]
    for body in bad_bodies:
        r = await provider.post("/v1/charges", json=body, headers={"Idempotency-Key": uid("k")})
        assert r.status_code == 422, body
        assert r.json()["error"] == "invalid_request" and r.json()["details"], body
    r = await provider.post("/v1/charges", json=good, headers={"Idempotency-Key": "k" * 201})
    assert (r.status_code, r.json()["details"][0]["loc"]) == (422, ["header", "Idempotency-Key"])
    for path in (f"/v1/accounts/{'a' * 101}", f"/v1/charges/{'k' * 201}"):
        r = await provider.get(path)
        assert (r.status_code, r.json()["error"]) == (422, "invalid_request"), path
    # a control character: no path has one; a last newline was left out of the id by the
    # route's pattern (zz%0A was account zz), and /v1/charges%0A was /v1/charges
    for path in ("/v1/accounts/a%09b", "/v1/accounts/z%0A", "/v1/charges%0A"):
        r = await provider.get(path)
        assert (r.status_code, r.json()["error"]) == (400, "invalid_path"), path
    r = await provider.put(f"/v1/accounts/{acct}", json={"balance": "-5.00"})
    assert r.status_code == 422
    assert await balance_of(provider, acct) == "30.00"
    # bytes that are not UTF-8 were read as U+FFFD: %ff%fe and %fe%ff were one account
    for method in ("PUT", "GET"):
        r = await provider.request(method, "/v1/accounts/%ff%fe?x=1", json={"balance": "1.00"})
        assert (r.status_code, r.json()["details"][0]["loc"]) == (422, ["path", "account_id"]), r.text
        assert r.json()["details"][0]["msg"] == "must be text in UTF-8"
    # …and a key's, of a charge or a refund; a % that escapes nothing was read as it came
    for path in ("/v1/charges/%ff", "/v1/refunds/r%fe", "/v1/accounts/%zz", "/v1/charges/k%2"):
        r = await provider.get(path)
        assert (r.status_code, r.json()["details"][0]["loc"][0]) == (422, "path"), (path, r.text)
    tail = uid("")  # UTF-8 is read as such
    r = await provider.put(f"/v1/accounts/caf%C3%A9{tail}", json={"balance": "1.00"})
    assert r.json()["account_id"] == f"caf\u00e9{tail}"


@pytest.mark.parametrize(
    ("coding", "status", "error"),
    [
        ({"Content-Encoding": "gzip"}, 415, "unsupported_content_encoding"),
        ({"Content-Encoding": "identity, br"}, 415, "unsupported_content_encoding"),
        ({"Transfer-Encoding": "gzip, chunked"}, 501, "unsupported_transfer_coding"),
    ],
)
async def test_a_body_coded_in_a_way_not_read_is_refused_and_changes_nothing(
    provider: httpx.AsyncClient, coding: dict[str, str], status: int, error: str
) -> None:
    """An attack trial: a plain JSON body labelled gzip (``Content-Encoding``, or
    ``Transfer-Encoding: gzip, chunked``) was read as it came and set a balance, where a
    proxy that decodes it reads another body; the services refused it (415, 501). So does
    the provider now, in its own shape (``saga_kit.http.coding_refusal``)."""
    acct = await account(provider, "30.00")
    headers = {"Content-Type": "application/json", **coding}
    for method, path in (("PUT", f"/v1/accounts/{acct}"), ("POST", "/v1/charges")):
        body = {"balance": "7.00"} if method == "PUT" else {"account_id": acct, "amount": "5.00"}
        sent = {**headers, "Idempotency-Key": uid("k")}
        r = await provider.request(method, path, content=json.dumps(body).encode(), headers=sent)
        assert (r.status_code, r.json()["error"]) == (status, error), (path, r.text)
        assert set(r.json()) == {"error", "message"}, r.text
        if status == 415:
            assert r.headers["accept-encoding"] == "identity"
    assert await balance_of(provider, acct) == "30.00"
    ledger = (await provider.get("/v1/ledger")).json()
    assert not [c for c in ledger["charges"] if c["account_id"] == acct]


async def test_a_body_that_cannot_be_read_is_an_invalid_request_and_changes_nothing(
    provider_url: str, provider_engine: AsyncEngine
) -> None:
    """Bytes that are not UTF-8, and nesting deeper than the parser reads, were a 400
    ``bad_request`` (the framework's "error parsing the body"), where every other invalid
    body is a 422 ``invalid_request`` with ``details``; UTF-16 was read (a second trial: it
    created an account). A body past the limit is a 413 in the provider's shape — also on
    the routes whose bodies the fault controls buffer (it was plain text there)."""
    settings = Settings(database_url=provider_url, http_max_body_bytes=250_000, fault_control=True)
    async with client_of(build_app(settings, provider_engine)) as provider:
        acct = await account(provider, "30.00")
        json_type = {"Content-Type": "application/json"}
        utf16 = '{"balance": "1.00"}'.encode("utf-16")
        for body, why in (
            (b'{"balance": "1.00\xff"}', "the body is not UTF-8: byte 0xff at offset 17"),
            (utf16, "the body is not UTF-8: byte 0xff at offset 0"),
            (b"[" * 100_000 + b"]" * 100_000, "the body nests arrays and objects too deeply to be read"),
        ):
            for method, path in (("PUT", f"/v1/accounts/{acct}"), ("POST", "/v1/charges")):
                headers = {**json_type, "Idempotency-Key": uid("k")}
                r = await provider.request(method, path, content=body, headers=headers)
                assert r.status_code == 422, (path, r.status_code, r.text)
                assert r.json()["details"] == [{"loc": ["body"], "msg": why, "type": "body_unreadable"}]
        big = b'{"balance": "1.00", "pad": "' + b"x" * 250_000 + b'"}'

        async def unannounced() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            for i in range(0, len(big), 10_000):
                yield big[i : i + 10_000]

        for method, path in (("PUT", f"/v1/accounts/{acct}"), ("POST", "/v1/charges")):
            for content in (big, unannounced()):
                headers = {**json_type, "Idempotency-Key": uid("k")}
                r = await provider.request(method, path, content=content, headers=headers)
                assert r.status_code == 413, (path, r.text)
                assert r.json() == {
                    "error": "body_too_large",
                    "message": "the body is larger than 250000 bytes, the most accepted",
                }
        assert await balance_of(provider, acct) == "30.00"
        ledger = (await provider.get("/v1/ledger")).json()
        assert not [c for c in ledger["charges"] if c["account_id"] == acct]


async def test_twenty_concurrent_identical_charges_make_one_charge(provider: httpx.AsyncClient) -> None:
    acct = await account(provider, "100.00")
    key = uid("charge")
    answers = await asyncio.gather(*(charge(provider, key, acct, "7.00") for _ in range(20)))
    assert [r.status_code for r in answers] == [201] * 20, [r.text for r in answers if r.status_code != 201]
    assert sum(REPLAYED not in r.headers for r in answers) == 1  # one made it, 19 were told of it
    assert len({r.json()["charge_id"] for r in answers}) == 1
    assert await balance_of(provider, acct) == "93.00"
    ledger = (await provider.get("/v1/ledger")).json()
    assert [c["idempotency_key"] for c in ledger["charges"]].count(key) == 1


async def test_concurrent_charges_under_other_keys_never_overdraw(provider: httpx.AsyncClient) -> None:
    """The account's row lock: ten charges of 3.00 on 10.00 make three, decline seven."""
    acct = await account(provider, "10.00")
    answers = await asyncio.gather(*(charge(provider, uid("charge"), acct, "3.00") for _ in range(10)))
    assert sorted(r.status_code for r in answers) == [201] * 3 + [402] * 7
    assert await balance_of(provider, acct) == "1.00"


# -- refunds ----------------------------------------------------------------------------
async def test_a_refund_happens_once(provider: httpx.AsyncClient) -> None:
    acct = await account(provider, "50.00")
    charge_key, refund_key = uid("charge"), uid("refund")
    charged = (await charge(provider, charge_key, acct, "20.00")).json()
    assert await balance_of(provider, acct) == "30.00"

    r = await refund(provider, refund_key, charge_key)
    assert r.status_code == 201, r.text
    assert REPLAYED not in r.headers
    body = r.json()
    assert set(body) == {
        "refund_id",
        "idempotency_key",
        "charge_key",
        "charge_id",
        "amount",
        "status",
        "created_at",
    }
    assert uuid.UUID(body["refund_id"])
    assert (body["idempotency_key"], body["charge_key"], body["charge_id"]) == (
        refund_key,
        charge_key,
        charged["charge_id"],
    )
    assert (body["amount"], body["status"]) == ("20.00", "succeeded")
    assert await balance_of(provider, acct) == "50.00"
    assert (await stored_charge(provider, charge_key)).json() == {**charged, "refunded": True}
    assert (await provider.get(f"/v1/refunds/{refund_key}")).json() == body

    again = await refund(provider, refund_key, charge_key)
    assert (again.status_code, again.json(), again.headers[REPLAYED]) == (201, body, "true")
    other = await refund(provider, uid("refund"), charge_key)
    assert (other.status_code, other.json()["error"]) == (409, "charge_already_refunded")
    reused = await refund(provider, refund_key, uid("charge"))
    assert (reused.status_code, reused.json()["error"]) == (409, "idempotency_key_reused")
    assert await balance_of(provider, acct) == "50.00"
    # a replay of the charge still answers what it answered first
    replayed = await charge(provider, charge_key, acct, "20.00")
    assert (replayed.status_code, replayed.json()) == (201, charged)
    assert await balance_of(provider, acct) == "50.00"


async def test_a_refund_of_an_unknown_or_declined_charge_is_404(provider: httpx.AsyncClient) -> None:
    acct = await account(provider, "1.00")
    declined = uid("charge")
    assert (await charge(provider, declined, acct, "2.00")).status_code == 402
    for charge_key in (uid("never"), declined):
        r = await refund(provider, uid("refund"), charge_key)
        assert (r.status_code, r.json()["error"]) == (404, "no_such_charge")
    assert await balance_of(provider, acct) == "1.00"
    r = await provider.get(f"/v1/refunds/{uid('refund')}")
    assert (r.status_code, r.json()["error"]) == (404, "no_such_refund")
    r = await stored_charge(provider, uid("never"))
    assert (r.status_code, r.json()["error"]) == (404, "no_such_charge")


async def test_concurrent_refunds_give_the_money_back_once(provider: httpx.AsyncClient) -> None:
    acct = await account(provider, "10.00")
    charge_key = uid("charge")
    assert (await charge(provider, charge_key, acct, "4.00")).status_code == 201
    same_key = uid("refund")
    answers = await asyncio.gather(
        *(refund(provider, uid("refund"), charge_key) for _ in range(5)),
        *(refund(provider, same_key, charge_key) for _ in range(5)),
    )
    made = [r for r in answers if r.status_code == 201 and REPLAYED not in r.headers]
    assert len(made) == 1
    others = sorted((r.status_code, r.json().get("error")) for r in answers if r is not made[0])
    assert all(code in ((201, None), (409, "charge_already_refunded")) for code in others), others
    assert await balance_of(provider, acct) == "10.00"
    refunds = (await provider.get("/v1/ledger")).json()["refunds"]
    assert [r["charge_key"] for r in refunds].count(charge_key) == 1


# -- faults -----------------------------------------------------------------------------
async def test_a_lost_response_still_charged_once(provider: httpx.AsyncClient) -> None:
    acct = await account(provider, "40.00")
    key = uid("charge")
    await faults(provider, lose_response_rate=1.0)
    lost = await charge(provider, key, acct, "15.00")
    assert (lost.status_code, lost.json()["error"]) == (502, "response_lost")
    assert await balance_of(provider, acct) == "25.00"  # accounts are never faulted
    await faults(provider)  # all off
    stored = await stored_charge(provider, key)
    assert stored.status_code == 200
    assert (stored.json()["status"], stored.json()["amount"]) == ("succeeded", "15.00")
    retry = await charge(provider, key, acct, "15.00")
    assert (retry.status_code, retry.headers[REPLAYED]) == (201, "true")
    assert retry.json() == stored.json()
    assert await balance_of(provider, acct) == "25.00"
    assert (await provider.get("/v1/faults")).json()["injected"]["lose_response"] == 1


async def test_an_outage_answers_503_and_records_nothing(provider: httpx.AsyncClient) -> None:
    acct = await account(provider, "40.00")
    charged = uid("charge")
    assert (await charge(provider, charged, acct, "1.00")).status_code == 201
    view = await faults(provider, outage=True)
    assert view["outage"] is True
    key = uid("charge")
    r = await charge(provider, key, acct, "15.00")
    assert (r.status_code, r.json()["error"]) == (503, "unavailable")
    r = await refund(provider, uid("refund"), charged)
    assert (r.status_code, r.json()["error"]) == (503, "unavailable")
    assert (await stored_charge(provider, charged)).status_code == 503
    # accounts, the ledger and health are not faulted
    assert (await provider.get("/health/ready")).status_code == 200
    ledger = (await provider.get("/v1/ledger")).json()
    assert key not in {c["idempotency_key"] for c in ledger["charges"]}
    assert charged not in {r["charge_key"] for r in ledger["refunds"]}
    assert await balance_of(provider, acct) == "39.00"
    assert (await provider.get("/v1/faults")).json()["injected"]["outage"] == 3
    await faults(provider)
    assert (await stored_charge(provider, key)).status_code == 404


async def test_error_rate_one_answers_500_and_records_nothing(provider: httpx.AsyncClient) -> None:
    acct = await account(provider, "40.00")
    await faults(provider, error_rate=1.0)
    key = uid("charge")
    for _ in range(3):
        r = await charge(provider, key, acct, "15.00")
        assert (r.status_code, r.json()["error"]) == (500, "internal_error")
    await faults(provider)
    assert (await stored_charge(provider, key)).status_code == 404
    assert await balance_of(provider, acct) == "40.00"
    assert (await charge(provider, key, acct, "15.00")).status_code == 201  # the key was never used
    assert (await provider.get("/v1/faults")).json()["injected"]["error"] == 3


@pytest_asyncio.fixture
async def failing_database(provider_engine: AsyncEngine) -> AsyncIterator[None]:
    """Charges whose reference is ``fail-before-commit`` fail inside their transaction,
    and those whose reference is ``fail-at-commit`` fail at its COMMIT (a deferred
    constraint trigger), both with the error PostgreSQL sends when it shuts down
    (``admin_shutdown``: transient)."""
    statements = [
        "CREATE FUNCTION fail_charge() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " RAISE EXCEPTION 'shutting down (test)' USING ERRCODE = 'admin_shutdown'; END $$",
        "CREATE TRIGGER fail_before_commit AFTER INSERT ON charges FOR EACH ROW"
        " WHEN (NEW.reference = 'fail-before-commit') EXECUTE FUNCTION fail_charge()",
        "CREATE CONSTRAINT TRIGGER fail_at_commit AFTER INSERT ON charges DEFERRABLE INITIALLY DEFERRED"
        " FOR EACH ROW WHEN (NEW.reference = 'fail-at-commit') EXECUTE FUNCTION fail_charge()",
    ]
    async with provider_engine.begin() as conn:
        for statement in statements:
            await conn.exec_driver_sql(statement)
    try:
        yield
    finally:
        async with provider_engine.begin() as conn:
            await conn.exec_driver_sql("DROP TRIGGER fail_before_commit ON charges")
            await conn.exec_driver_sql("DROP TRIGGER fail_at_commit ON charges")
            await conn.exec_driver_sql("DROP FUNCTION fail_charge()")


async def test_503_means_nothing_done_and_a_failed_commit_is_500_outcome_unknown(
    provider: httpx.AsyncClient, failing_database: None
) -> None:
    """A client may void a payment whose every call was answered 503, so a 503 must never
    follow a COMMIT that may have landed: a failure before it is 503, one at it is 500."""
    acct = await account(provider, "40.00")
    before = await charge(provider, uid("charge"), acct, "5.00", reference="fail-before-commit")
    assert (before.status_code, before.json()["error"]) == (503, "unavailable")
    at = await charge(provider, uid("charge"), acct, "5.00", reference="fail-at-commit")
    assert (at.status_code, at.json()["error"]) == (500, "outcome_unknown")
    assert "same Idempotency-Key" in at.json()["message"]
    assert await balance_of(provider, acct) == "40.00"  # both rolled back, here


async def test_faults_put_resets_what_it_does_not_name_and_a_seed_repeats_the_draws(
    provider: httpx.AsyncClient,
) -> None:
    view = await faults(provider, error_rate=0.5, timeout_ms=100, latency_ms=1)
    assert view | {"injected": None} == {
        "latency_ms": 1,
        "error_rate": 0.5,
        "timeout_rate": 0.0,
        "timeout_ms": 100,
        "outage": False,
        "lose_response_rate": 0.0,
        "seed": None,
        "injected": None,
    }
    view = await faults(provider, outage=True)
    assert (view["error_rate"], view["timeout_ms"], view["latency_ms"], view["outage"]) == (
        0.0,
        15000,
        0,
        True,
    )
    assert (await provider.put("/v1/faults", json={"error_rate": 1.5})).status_code == 422
    assert (await provider.put("/v1/faults", json={"eror_rate": 0.5})).status_code == 422
    assert (await provider.get("/v1/faults")).json()["outage"] is True  # a refused PUT changes nothing

    async def pattern() -> list[int]:
        await faults(provider, error_rate=0.5, seed=42)
        return [(await stored_charge(provider, "no-such-key")).status_code for _ in range(16)]

    first = await pattern()
    assert set(first) == {404, 500}
    assert await pattern() == first
    await faults(provider)


async def test_a_timed_out_call_still_charges_after_its_client_gave_up(
    provider_url: str, provider_engine: AsyncEngine
) -> None:
    """On a real connection (uvicorn on a free port): the client gives up during the
    injected wait and closes its connection; the charge still happens, once, and a retry
    under the same key is told of it."""
    app = build_app(Settings(database_url=provider_url, fault_control=True), provider_engine)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off"))
    serving = asyncio.create_task(server.serve())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            await until(lambda: server.started, "the server listens")
            acct = await account(client, "10.00")
            # a wait long enough that "nothing done yet" is read inside it on a loaded machine
            await faults(client, timeout_rate=1.0, timeout_ms=5000)
            key = uid("charge")
            body = {"account_id": acct, "amount": "4.00", "reference": "r"}
            with pytest.raises(httpx.ReadTimeout):
                await client.post("/v1/charges", json=body, headers={"Idempotency-Key": key}, timeout=0.3)
            assert await balance_of(client, acct) == "10.00"  # still waiting, nothing done yet
            await faults(client)  # off for the calls that follow; the waiting one goes on

            async def charged() -> bool:
                return (await stored_charge(client, key)).status_code == 200

            await until(charged, "the abandoned charge is made", within=20)
            assert await balance_of(client, acct) == "6.00"
            retry = await charge(client, key, acct, "4.00", reference="r")
            assert (retry.status_code, retry.headers[REPLAYED]) == (201, "true")
            assert await balance_of(client, acct) == "6.00"
            assert (await client.get("/v1/faults")).json()["injected"]["timeout"] == 1
    finally:
        server.should_exit = True
        await serving


async def test_fault_routes_are_404_without_fault_control(
    provider_url: str, provider_engine: AsyncEngine
) -> None:
    async with client_of(build_app(Settings(database_url=provider_url), provider_engine)) as plain:
        for method in ("GET", "PUT"):
            r = await plain.request(method, "/v1/faults", json={"outage": True} if method == "PUT" else None)
            assert (r.status_code, r.json()["error"]) == (404, "not_found")
        assert (await plain.get("/v1/accounts")).status_code == 200
    with pytest.raises(ValidationError, match="PROVIDER_FAULT_CONTROL"):
        Settings(database_url=provider_url, faults={"outage": True})


async def test_a_saga_services_route_sent_to_the_provider_says_whose_it_is(
    provider: httpx.AsyncClient,
) -> None:
    """The provider's port given as the payment service's (a trial) read a bare "Not Found"."""
    r = await provider.get("/accounts/ann")
    assert (r.status_code, r.json()["error"]) == (404, "not_found")
    assert r.json()["message"] == (
        "the payment provider (simulator) has no route GET /accounts/ann: that is another service's"
        " route (make run prints each service's URL); this service's routes are listed at /docs"
    )
    r = await provider.get("/v1/nothing")
    assert r.json()["message"] == (
        "the payment provider (simulator) has no route GET /v1/nothing;"
        " this service's routes are listed at /docs"
    )


async def test_initial_faults_come_from_the_settings(provider_url: str, provider_engine: AsyncEngine) -> None:
    settings = Settings(database_url=provider_url, fault_control=True, faults={"outage": True})
    async with client_of(build_app(settings, provider_engine)) as client:
        assert (await client.get("/v1/faults")).json()["outage"] is True
        assert (await stored_charge(client, uid("k"))).status_code == 503


async def test_the_ledger_lists_every_charge_and_refund(provider: httpx.AsyncClient) -> None:
    acct = await account(provider, "10.00")
    ok, declined, refunded, refund_key = uid("ok"), uid("declined"), uid("refunded"), uid("refund")
    assert (await charge(provider, ok, acct, "1.00")).status_code == 201
    assert (await charge(provider, declined, acct, "100.00")).status_code == 402
    assert (await charge(provider, refunded, acct, "2.00")).status_code == 201
    made = (await refund(provider, refund_key, refunded)).json()
    ledger = (await provider.get("/v1/ledger")).json()
    charges = {c["idempotency_key"]: c for c in ledger["charges"]}
    assert charges[ok] == (await stored_charge(provider, ok)).json()
    assert (charges[declined]["status"], charges[declined]["decline_code"]) == (
        "declined",
        "insufficient_funds",
    )
    assert (charges[refunded]["refunded"], charges[ok]["refunded"]) == (True, False)
    assert made in ledger["refunds"]
    keys = [c["idempotency_key"] for c in ledger["charges"]]
    assert keys.index(ok) < keys.index(declined) < keys.index(refunded)  # oldest first
    accounts = (await provider.get("/v1/accounts")).json()
    assert {"account_id": acct, "balance": "9.00"} in accounts
    ids = [a["account_id"] for a in accounts]
    assert ids == sorted(ids)


async def test_ready_only_while_the_database_answers(provider: httpx.AsyncClient) -> None:
    assert (await provider.get("/health/live")).json() == {"status": "ok"}
    ready = await provider.get("/health/ready")
    assert (ready.status_code, ready.json()["checks"]["database"]["ok"]) == (200, True)
    # a database nobody listens on
    gone = create_engine(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none")
    try:
        async with client_of(build_app(Settings(database_url="postgresql://x/y"), gone)) as client:
            r = await client.get("/health/ready")
            assert (r.status_code, r.json()["checks"]["database"]["ok"]) == (503, False)
            r = await charge(client, uid("k"), "a", "1.00")
            assert (r.status_code, r.json()["error"]) == (503, "unavailable")
    finally:
        await gone.dispose()


async def test_a_body_whose_client_went_away_is_a_400_in_the_providers_shape(
    provider_url: str, provider_engine: AsyncEngine
) -> None:
    """As at the services (``saga_kit.http.broke_off``): it was a 422 ``invalid_request``."""
    from saga_kit.http import BODY_BROKE_OFF

    app = build_app(Settings(database_url=provider_url), provider_engine)
    status, body = await broken_off_answer(app, "/v1/charges")
    assert (status, body) == (400, {"error": "invalid_http_request", "message": BODY_BROKE_OFF})


async def test_a_body_that_stops_arriving_is_a_408_and_changes_nothing(
    provider_url: str, provider_engine: AsyncEngine
) -> None:
    """An attack trial: a body announced and not sent held its connection with no answer
    after 100 s; the services answer 408 at their body's deadline, and so does the
    provider (``PROVIDER_HTTP_BODY_TIMEOUT_SECONDS``), in its own shape — also on the
    routes whose bodies the fault controls buffer."""
    settings = Settings(database_url=provider_url, fault_control=True, http_body_timeout_seconds=0.3)
    async with client_of(build_app(settings, provider_engine)) as provider:
        acct = await account(provider, "30.00")

        async def stalled() -> AsyncIterator[bytes]:
            yield b'{"balance": '
            await asyncio.sleep(30)
            yield b'"1.00"}'

        for method, path in (("PUT", f"/v1/accounts/{acct}"), ("POST", "/v1/charges")):
            sent = {"Content-Type": "application/json", "Idempotency-Key": uid("k")}
            r = await asyncio.wait_for(provider.request(method, path, content=stalled(), headers=sent), 10)
            assert r.status_code == 408, (path, r.text)
            assert r.json() == {
                "error": "request_timeout",
                "message": "the request body did not arrive within 0.3 s",
            }
            assert r.headers["connection"] == "close"
        assert await balance_of(provider, acct) == "30.00"
