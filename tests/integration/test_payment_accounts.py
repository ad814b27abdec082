"""Payment's account routes over the payment provider's simulator: the provider is an
external system and may hold accounts this service would never create (ids outside
``ExternalId``). Listing them shows them as they are — it answered 500 with a traceback
(a helper's attack: ``PUT /v1/accounts/%2E`` at the provider broke ``GET /accounts`` and
the dashboard's balances until the account was gone)."""

from __future__ import annotations

import uuid

import httpx
import pytest

from payment_svc import runtime
from payment_svc.api import list_accounts
from tests.integration.conftest import ServiceUnderTest


async def test_accounts_the_provider_holds_under_any_id_are_listed_as_they_are(
    payment: ServiceUnderTest, provider_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    odd = [".", f"has space {uuid.uuid4().hex[:6]}", "x" * 90 + uuid.uuid4().hex[:6]]
    async with httpx.AsyncClient(base_url=provider_endpoint) as provider:
        for account_id in odd:
            quoted = "%2E" if account_id == "." else account_id.replace(" ", "%20")
            put = await provider.put(f"/v1/accounts/{quoted}", json={"balance": "1.00"})
            assert put.status_code == 200, put.text
    monkeypatch.setitem(runtime._state, "provider", payment.provider)
    listed = {view.customer_id: view.balance for view in await list_accounts()}
    for account_id in odd:
        assert listed[account_id] == 1
