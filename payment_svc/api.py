"""HTTP API of the payment service: customer accounts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel, ConfigDict
from sqlalchemy import text

from events.values import Balance, ExternalId, Money
from saga_kit.http import DatabaseDep, errors

router = APIRouter(tags=["accounts"])

CustomerId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]


class AccountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    balance: Money


class AccountView(BaseModel):
    customer_id: ExternalId
    #: Any number of digits: refunds are owed however high the balance was set since.
    balance: Balance


@router.put(
    "/accounts/{customer_id}",
    summary="Create an account or set its balance",
    response_model=AccountView,
    responses=errors(),
)
async def put_account(customer_id: CustomerId, body: AccountIn, db: DatabaseDep) -> AccountView:
    """Sets the customer's balance (at most 999,999,999,999.99); charges and refunds move
    it from then on."""
    async with db.unit_of_work() as uow:
        await uow.conn.execute(
            text(
                "INSERT INTO accounts (customer_id, balance) VALUES (:c, :b)"
                " ON CONFLICT (customer_id) DO UPDATE SET balance = :b,"
                " updated_at = clock_timestamp()"
            ),
            {"c": customer_id, "b": body.balance},
        )
    return AccountView(customer_id=customer_id, balance=body.balance)


@router.get(
    "/accounts/{customer_id}",
    summary="One account's balance",
    response_model=AccountView,
    responses=errors({404: "no such account"}),
)
async def get_account(customer_id: CustomerId, db: DatabaseDep) -> AccountView:
    """The customer's balance now, after every charge and refund so far."""
    async with db.engine.connect() as conn:
        balance = await conn.scalar(
            text("SELECT balance FROM accounts WHERE customer_id = :c"), {"c": customer_id}
        )
    if balance is None:
        raise HTTPException(404, f"account {customer_id!r} not found")
    return AccountView(customer_id=customer_id, balance=balance)


@router.get("/accounts", summary="Every account's balance", response_model=list[AccountView])
async def list_accounts(db: DatabaseDep) -> list[AccountView]:
    """Every account, by customer id."""
    async with db.engine.connect() as conn:
        rows = await conn.execute(text("SELECT customer_id, balance FROM accounts ORDER BY customer_id"))
    return [AccountView.model_validate(r._mapping) for r in rows]
