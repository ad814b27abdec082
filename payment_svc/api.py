"""HTTP API of the payment service: customer accounts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel, ConfigDict
from sqlalchemy import text

from events.values import Balance, ExternalId, Money
from saga_kit.http import DatabaseDep

router = APIRouter(tags=["accounts"])

CustomerId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]


class AccountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    balance: Money


class AccountView(BaseModel):
    customer_id: ExternalId
    #: Any number of digits: refunds are owed however high the balance was set since.
    balance: Balance


@router.put("/accounts/{customer_id}", response_model=AccountView)
async def put_account(customer_id: CustomerId, body: AccountIn, db: DatabaseDep) -> AccountView:
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


@router.get("/accounts/{customer_id}", response_model=AccountView)
async def get_account(customer_id: CustomerId, db: DatabaseDep) -> AccountView:
    async with db.engine.connect() as conn:
        balance = await conn.scalar(
            text("SELECT balance FROM accounts WHERE customer_id = :c"), {"c": customer_id}
        )
    if balance is None:
        raise HTTPException(404, f"account {customer_id!r} not found")
    return AccountView(customer_id=customer_id, balance=balance)


@router.get("/accounts", response_model=list[AccountView])
async def list_accounts(db: DatabaseDep) -> list[AccountView]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(text("SELECT customer_id, balance FROM accounts ORDER BY customer_id"))
    return [AccountView.model_validate(r._mapping) for r in rows]
