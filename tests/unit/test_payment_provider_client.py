"""The payment service's provider client (``payment_svc.provider``) against real sockets:
a provider nobody listens for, and one that takes the request and never answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import pytest_asyncio

from payment_svc.provider import PaymentProvider, Unavailable, Unreachable
from sagastack.embedded import free_port


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
        with pytest.raises(Unreachable) as raised:
            await provider.request("GET", "/v1/accounts/acct")
        assert str(raised.value) == "ClientConnectorError"  # the kind only: no address for callers
        assert provider.calls[("charge", "unavailable")] == 1
    finally:
        await provider.aclose()


async def test_a_provider_that_never_answers_is_a_timeout_within_the_setting(silent: str) -> None:
    provider = _client(silent)
    try:
        answer = await asyncio.wait_for(provider.charge("charge:k", "acct", Decimal("1.00"), "ref"), 5)
        assert isinstance(answer, Unavailable) and "did not answer within 0.3 s" in answer.reason
        with pytest.raises(Unreachable):
            await asyncio.wait_for(provider.request("GET", "/v1/accounts/acct"), 5)
    finally:
        await provider.aclose()
