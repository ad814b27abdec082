"""The payment service's provider client (``payment_svc.provider``) against real sockets:
a provider nobody listens for, one that takes the request and never answers, one that
hangs up, and ones that answer a fixed status — and which of them leave a charge in doubt
(``Unavailable.nothing_done``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio
from fastapi import HTTPException
from starlette.exceptions import HTTPException as StarletteHTTPException

from payment_svc import runtime
from payment_svc.api import AccountIn, get_account, list_accounts, put_account
from payment_svc.provider import (
    MAX_ANSWER_BYTES,
    Charged,
    ChargeResult,
    Declined,
    PaymentProvider,
    Refunded,
    Refused,
    Unavailable,
    Unreachable,
)
from saga_kit.auth import UNAUTHENTICATED
from saga_kit.http import Degraded
from sagastack.embedded import free_port
from tests.jsonserver import JsonServer
from tests.rawhttp import answering, serving


@pytest_asyncio.fixture
async def silent() -> AsyncIterator[str]:
    """A server that reads the request and never answers."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(3600)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.close()


def _client(url: str) -> PaymentProvider:
    return PaymentProvider(url, timeout=0.3, breaker_failures=5, breaker_recovery=1.0)


async def test_nobody_listening_is_unavailable_for_a_charge_and_unreachable_for_an_account_call() -> None:
    provider = _client(f"http://127.0.0.1:{free_port()}")
    try:
        answer = await provider.charge("charge:k", "acct", Decimal("1.00"), "ref")
        assert isinstance(answer, Unavailable) and "could not be reached" in answer.reason
        assert answer.nothing_done  # no connection, no request: a cancellation may void
        with pytest.raises(Unreachable) as raised:
            await provider.request("GET", "/v1/accounts/acct")
        assert str(raised.value) == "ClientConnectorError"  # the kind only: no address for callers
        assert provider.calls == {("charge", "unreachable"): 1}  # the metric's label: nothing sent
    finally:
        await provider.aclose()


async def test_a_provider_that_never_answers_is_a_timeout_within_the_setting(silent: str) -> None:
    provider = _client(silent)
    try:
        answer = await asyncio.wait_for(provider.charge("charge:k", "acct", Decimal("1.00"), "ref"), 5)
        assert isinstance(answer, Unavailable) and "did not answer within 0.3 s" in answer.reason
        assert not answer.nothing_done  # it may still charge
        assert provider.calls == {("charge", "timeout"): 1}
        with pytest.raises(Unreachable):
            await asyncio.wait_for(provider.request("GET", "/v1/accounts/acct"), 5)
    finally:
        await provider.aclose()


async def _charge_against(status: int, body: bytes) -> ChargeResult:
    """One charge against a provider that answers ``status`` with ``body``."""
    async with serving(answering(status, body)) as url:
        provider = _client(url)
        try:
            return await provider.charge("charge:k", "acct", Decimal("1.00"), "ref")
        finally:
            await provider.aclose()


async def test_a_provider_that_hangs_up_after_the_request_leaves_the_charge_in_doubt() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.close()

    async with serving(hang_up) as url:
        provider = _client(url)
        try:
            answer = await provider.charge("charge:k", "acct", Decimal("1.00"), "ref")
            assert isinstance(answer, Unavailable) and "broke off" in answer.reason
            assert not answer.nothing_done
            assert provider.calls == {("charge", "broken"): 1}
        finally:
            await provider.aclose()


@pytest.mark.parametrize(
    ("status", "nothing_done"), [(503, True), (429, True), (500, False), (502, False), (504, False)]
)
async def test_only_503_and_429_say_nothing_was_done(status: int, nothing_done: bool) -> None:
    """And the metric counts the call by its status: a plain 503 (nothing done) was
    counted with the timeouts (maybe charged) under one label, ``unavailable`` (a review)."""
    async with serving(answering(status, b'{"error": "x", "message": "y"}')) as url:
        provider = _client(url)
        try:
            got = await provider.charge("charge:k", "acct", Decimal("1.00"), "ref")
            assert isinstance(got, Unavailable) and f"answered {status}" in got.reason
            assert got.nothing_done is nothing_done
            assert provider.calls == {("charge", str(status)): 1}
        finally:
            await provider.aclose()


@pytest.mark.parametrize(
    ("status", "nothing_done"), [(400, True), (401, True), (404, True), (422, True), (409, False)]
)
async def test_a_refusal_did_nothing_unless_another_request_holds_the_key(
    status: int, nothing_done: bool
) -> None:
    """A 4xx but a decline is ``Refused``; every one but 409 (another request under the
    key, which may have charged) was refused before anything was done, so a cancellation
    may void what such calls left (a review: a cancelled order whose charge the provider
    kept refusing stayed in doubt for ever)."""
    async with serving(answering(status, b'{"error": "x", "message": "y"}')) as url:
        provider = _client(url)
        try:
            got = await provider.charge("charge:k", "acct", Decimal("1.00"), "ref")
        finally:
            await provider.aclose()
    assert got == Refused(status, "x"), got
    assert got.nothing_done is nothing_done
    assert provider.state == "closed"  # a refusal is the provider working


@pytest.mark.parametrize("status", [202, 300])
async def test_an_answer_neither_success_nor_4xx_leaves_the_charge_in_doubt(status: int) -> None:
    """Only a 4xx (but 409) is a refusal made before anything was done. A 202 (accepted,
    to be processed) or a 3xx the client does not follow says nothing of the sort: it was
    counted "nothing done", and a cancelled order's charge the provider may have made was
    voided, the money kept (a review)."""
    got = await _charge_against(status, b'{"error": "x", "message": "y"}')
    assert got == Refused(status, "x"), got
    assert not got.nothing_done


@pytest.mark.parametrize(
    ("body", "refunded"),
    [
        (b'{"error": "charge_already_refunded", "message": "under another key"}', True),
        (b'{"error": "idempotency_key_reused", "message": "another body"}', False),
    ],
)
async def test_a_charge_refunded_under_another_key_is_refunded(body: bytes, refunded: bool) -> None:
    """409 ``charge_already_refunded``: the money is back (by hand, at the provider), so
    the refund is done; any other 409 is a refusal."""
    async with serving(answering(409, body)) as url:
        provider = _client(url)
        try:
            got = await provider.refund("refund:k", "charge:k")
        finally:
            await provider.aclose()
    assert got == (Refunded(None) if refunded else Refused(409, "idempotency_key_reused")), got


async def test_an_open_breaker_sends_nothing_so_nothing_was_done() -> None:
    provider = PaymentProvider(
        f"http://127.0.0.1:{free_port()}", timeout=0.3, breaker_failures=1, breaker_recovery=60
    )
    try:
        await provider.charge("charge:k", "acct", Decimal("1.00"), "ref")
        assert provider.state == "open"
        answer = await provider.charge("charge:k", "acct", Decimal("1.00"), "ref")
        assert isinstance(answer, Unavailable) and answer.reason.startswith("circuit breaker open")
        assert answer.nothing_done
    finally:
        await provider.aclose()


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, b"<html>gateway</html>", "unavailable"),
        (200, b"[1, 2]", "unavailable"),
        (201, b'{"status": "succeeded"}', "unavailable"),
        (200, b'{"charge_id": ""}', "unavailable"),
        (402, b"not json", "card_declined"),
        (402, b'{"decline_code": "insufficient_funds"}', "insufficient_funds"),
        # JSON nested past the parser's depth: RecursionError, not ValueError, raised out
        # of the round as the bodies above once did (a review)
        (200, b"[" * 100_000 + b"]" * 100_000, "unavailable"),
        (402, b"[" * 100_000 + b"]" * 100_000, "card_declined"),
    ],
)
async def test_a_garbled_answer_is_asked_again_and_a_garbled_decline_is_still_a_decline(
    status: int, body: bytes, expected: str
) -> None:
    """A success whose body does not say what was done raised out of the worker's round
    and dropped every answer of it (a review): it is ``Unavailable``, the charge in doubt
    (asked again with the same key, whose replay says). A 402 is a decline whatever its
    body says of why."""
    async with serving(answering(status, body)) as url:
        provider = _client(url)
        try:
            charged = await provider.charge("charge:k", "acct", Decimal("1.00"), "ref")
            refunded = await provider.refund("refund:k", "charge:k")
        finally:
            await provider.aclose()
    if expected == "unavailable":
        assert isinstance(charged, Unavailable) and not charged.nothing_done, charged
        assert f"answered {status} without a charge_id" in charged.reason
        assert isinstance(refunded, Unavailable) and "without a refund_id" in refunded.reason
    else:
        assert charged == Declined(expected)  # type: ignore[arg-type]


async def test_readiness_says_so_while_the_provider_refuses_the_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A provider refusing every call (a wrong path: 404) never opens the breaker, which
    counts only failures, and readiness said all was well while every order waited for its
    deadline (an attack trial). It is ``degraded`` until a call is settled again."""
    provider = _client("http://127.0.0.1:1")  # replaced below: each server serves one answer
    monkeypatch.setitem(runtime._state, "provider", provider)
    try:
        async with serving(answering(404, b'{"error": "not_found", "message": "no route"}')) as url:
            provider.base_url = url
            for _ in range(2):
                assert isinstance(await provider.charge("charge:k", "acct", Decimal("1.00"), "ref"), Refused)
        assert provider.state == "closed" and provider.refusing is not None
        with pytest.raises(Degraded) as degraded:
            await runtime.provider_check()
        assert "the payment provider refuses the service's calls since" in str(degraded.value)
        assert "(the last: 404 not_found)" in str(degraded.value)
        async with serving(answering(201, b'{"charge_id": "ch_1"}')) as url:
            provider.base_url = url
            assert await provider.charge("charge:k", "acct", Decimal("1.00"), "ref") == Charged("ch_1")
        assert provider.refusing is None
        await runtime.provider_check()  # ready again
    finally:
        await provider.aclose()


@pytest.mark.parametrize("body", [b"<html>maintenance</html>", b"null", b"5", b'"accounts"'])
async def test_an_account_answer_the_service_cannot_read_is_a_502_not_a_500(
    body: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 200 whose body is not JSON, or not the list ``GET /accounts`` reads, was a 500 with
    a traceback (a review): the provider broke its contract, so it is a 502 that says so."""
    with JsonServer(body) as server:
        provider = _client(server.base)
        monkeypatch.setitem(runtime._state, "provider", provider)
        try:
            with pytest.raises(HTTPException) as listed:
                await list_accounts()
            assert listed.value.status_code == 502, listed.value.detail
            if body.startswith(b"<"):
                with pytest.raises(HTTPException) as one:
                    await get_account("ann", UNAUTHENTICATED)
                assert (one.value.status_code, one.value.detail) == (
                    502,
                    "the payment provider answered 200 with a body that is not JSON",
                )
        finally:
            await provider.aclose()


async def test_a_call_cancelled_midway_neither_closes_nor_counts_against_the_breaker(silent: str) -> None:
    """A call that ends by cancellation (or any error that is not the provider's failure)
    said nothing of the provider: the failures counted so far stand. ``circuitbreaker``
    treats every exception it does not count as a success and resets its count (a review:
    a cancelled half-open probe closed the breaker)."""
    provider = PaymentProvider(silent, timeout=0.3, breaker_failures=2, breaker_recovery=60)
    try:
        await provider.charge("charge:k", "acct", Decimal("1.00"), "ref")  # a timeout: one failure
        assert provider.breaker.failure_count == 1
        call = asyncio.create_task(provider.charge("charge:k", "acct", Decimal("1.00"), "ref"))
        await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert provider.breaker.failure_count == 1
        await provider.charge("charge:k", "acct", Decimal("1.00"), "ref")  # the second failure in a row
        assert provider.state == "open"
    finally:
        await provider.aclose()


@pytest.mark.parametrize("status", [429, 503])
async def test_an_account_call_the_provider_answers_nothing_done_is_a_503_to_retry(
    status: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 429 (rate limited) is, like a 503, "nothing done: try again" in the provider's
    contract: the account routes pass it on as a 503 with Retry-After, not a 502 that says
    the provider broke (a review)."""
    async with serving(answering(status, b'{"error": "slow_down"}')) as url:
        provider = _client(url)
        monkeypatch.setitem(runtime._state, "provider", provider)
        try:
            with pytest.raises(StarletteHTTPException) as listed:
                await list_accounts()
        finally:
            await provider.aclose()
    assert listed.value.status_code == 503, listed.value.detail
    assert listed.value.headers is not None and listed.value.headers["Retry-After"].isdigit()


async def test_a_balance_set_and_not_answered_may_have_been_set_and_is_safe_to_set_again(
    silent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``PUT`` the provider took and did not answer may have been applied: the 502 says
    so, and that sending it again is safe (it sets the whole balance); one that never
    connected was not sent, and says only that (a review: "did not answer" read as "not
    set")."""
    body = AccountIn(balance=Decimal("10.00"))
    for url, maybe in ((silent, True), (f"http://127.0.0.1:{free_port()}", False)):
        provider = _client(url)
        monkeypatch.setitem(runtime._state, "provider", provider)
        try:
            with pytest.raises(HTTPException) as put:
                await put_account("ann", body)
        finally:
            await provider.aclose()
        assert put.value.status_code == 502, put.value.detail
        assert put.value.detail.startswith("the payment provider did not answer: ")
        assert ("it may have been applied, and sending it again is safe" in put.value.detail) is maybe


def _streaming(status: int, size: int, *, say_length: bool) -> Any:
    """A handler that answers ``status`` with ``size`` bytes of a JSON string, with or
    without a Content-Length (without: the body ends when the connection closes)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        length = f"content-length: {size + 2}\r\n" if say_length else ""
        writer.write(f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{length}".encode())
        writer.write(b"connection: close\r\n\r\n" + b'"')
        with contextlib.suppress(ConnectionError):
            for _ in range(size // 65536):
                writer.write(b"x" * 65536)
                await writer.drain()
            writer.write(b"x" * (size % 65536) + b'"')
            await writer.drain()
        writer.close()

    return answer


@pytest.mark.parametrize("say_length", [True, False])
async def test_an_answer_too_big_to_be_one_is_not_read_whole(say_length: bool) -> None:
    """The provider's answer was read whole, bounded by the timeout only: a provider (or
    whatever sits between) streaming 300 MB took the payment service from 138 to 755 MB
    with two calls (an attack trial). A charge's answer over ``MAX_ANSWER_BYTES`` is a
    call broken off — in doubt, asked again under the key — and an account call's is no
    answer, whether or not the size was announced."""
    size = MAX_ANSWER_BYTES + 1
    async with serving(_streaming(201, size, say_length=say_length)) as url:
        provider = PaymentProvider(url, timeout=10.0, breaker_failures=5, breaker_recovery=1.0)
        try:
            got = await provider.charge("charge:k", "acct", Decimal("1.00"), "ref")
            with pytest.raises(Unreachable):
                await provider.request("GET", "/v1/accounts")
        finally:
            await provider.aclose()
    assert isinstance(got, Unavailable) and not got.nothing_done, got
    assert f"over {MAX_ANSWER_BYTES} bytes" in got.reason, got.reason


@pytest.mark.parametrize("status", [302, 307])
async def test_a_redirect_is_not_followed_and_leaves_the_charge_in_doubt(status: int) -> None:
    """A provider that charged and answered a redirect: the client followed it, and what
    the redirect's target answered counted — a 404 there, a refusal that did nothing, so
    a cancelled order was voided while the provider had its money (an attack trial). A
    payment API does not redirect a charge: the 3xx itself is the answer, and it promises
    nothing."""

    async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read(65536)
        if request.startswith(b"POST"):
            writer.write(
                f"HTTP/1.1 {status} X\r\nlocation: /v1/nothing\r\ncontent-length: 0\r\n"
                "connection: close\r\n\r\n".encode()
            )
        else:  # the redirect's target
            writer.write(b"HTTP/1.1 404 X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    async with serving(redirect) as url:
        provider = _client(url)
        try:
            got = await provider.charge("charge:k", "acct", Decimal("1.00"), "ref")
        finally:
            await provider.aclose()
    assert isinstance(got, Refused) and got.status == status, got
    assert not got.nothing_done
