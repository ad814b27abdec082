"""The customers' data keys (``saga_kit.personal_data.KeyStore``) over the order
service's real database."""

from __future__ import annotations

import secrets
from typing import Any, cast

from sqlalchemy.ext.asyncio import AsyncConnection

from saga_kit.personal_data import KEY_BYTES, KeyStore, MasterKey, forget
from tests.integration.conftest import ServiceUnderTest, uid


class _ForgetAfterFirstStatement:
    """A connection on which the customer is forgotten, by another transaction that
    commits, right after the first statement ran."""

    def __init__(self, conn: AsyncConnection, order: ServiceUnderTest, customer: str) -> None:
        self._conn, self._order, self._customer = conn, order, customer
        self.statements = 0

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        result = await self._conn.execute(*args, **kwargs)
        self.statements += 1
        if self.statements == 1:
            async with self._order.db.engine.begin() as other:
                assert await forget(other, self._customer) == 1
        return result


async def test_a_customer_forgotten_while_its_key_is_taken_gets_a_new_key(order: ServiceUnderTest) -> None:
    """``keys_for`` inserts a key unless the customer has a live one, then reads the live
    one. A customer forgotten in between (another transaction's commit) had none left to
    read: the customer was missing from the answer, and ``POST /orders`` with its
    personal data was a 500 (a ``KeyError`` in ``place_orders``). Now a customer without a
    live key by then gets a new one, as any order after forgetting does."""
    keystore = KeyStore(MasterKey.of(secrets.token_bytes(KEY_BYTES)))
    customer = uid("c")
    async with order.db.engine.begin() as conn:
        (first,) = (await keystore.keys_for(conn, [customer])).values()
    async with order.db.engine.begin() as conn:
        racing = _ForgetAfterFirstStatement(conn, order, customer)
        keys = await keystore.keys_for(cast(AsyncConnection, racing), [customer])
    assert racing.statements >= 2
    assert customer in keys and keys[customer].key_id != first.key_id
    async with order.db.engine.connect() as conn:
        assert await keystore.key(conn, first.key_id) is None  # forgotten
        assert await keystore.key(conn, keys[customer].key_id) == keys[customer]  # committed, live
