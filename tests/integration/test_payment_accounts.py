"""Payment's account routes over the payment provider's simulator: the provider is an
external system and may hold accounts this service would never create (ids outside
``ExternalId``). Listing answered 500 with a traceback for one (a helper's attack: ``PUT
/v1/accounts/%2E`` at the provider broke ``GET /accounts`` and the dashboard's balances
until the account was gone); listed as they were, ``" alice"`` and ``"\\u0430lice"`` (a
Cyrillic a) were customers beside ``alice``, alike on every screen (a later attack trial).
An account no customer can have is not a customer's: it is left out."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import httpx
import pytest

from payment_svc import runtime
from payment_svc.api import list_accounts
from tests.integration.conftest import ServiceUnderTest


async def test_accounts_the_provider_holds_under_ids_no_customer_can_have_are_left_out(
    payment: ServiceUnderTest, provider_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    customer = f"kim-{uuid.uuid4().hex[:6]}"
    odd = [
        ".",
        f"has space {customer}",
        "x" * 90 + customer,
        f" {customer}",
        f"\u0430{customer}",
        f"{customer}/x",
    ]
    async with httpx.AsyncClient(base_url=provider_endpoint) as provider:
        for account_id in [customer, *odd]:
            quoted = "%2E" if account_id == "." else quote(account_id, safe="/")
            put = await provider.put(f"/v1/accounts/{quoted}", json={"balance": "1.00"})
            assert put.status_code == 200, put.text
    monkeypatch.setitem(runtime._state, "provider", payment.provider)
    listed = {view.customer_id: view.balance for view in await list_accounts()}
    assert listed[customer] == 1
    assert not set(odd) & listed.keys(), listed.keys()
