"""HTTP API of the payment service: customer accounts (held by the payment provider, read
and set through it) and the service's payments."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from sqlalchemy import text

from events.values import Balance, ExternalId, Money
from payment_svc import runtime
from payment_svc.provider import NOTHING_DONE_STATUSES, Unreachable
from saga_kit.http import DatabaseDep, PrincipalDep, errors, upstream_unavailable

router = APIRouter(tags=["accounts"])

CustomerId = Annotated[ExternalId, Path()]

#: What an account route answers when the provider does not.
_PROVIDER_DOWN = {
    502: "the payment provider did not answer, or answered an error",
    503: (
        "the payment provider is briefly unavailable or limits its rate (`service_unavailable`);"
        " retry after `Retry-After`"
    ),
}


class AccountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    balance: Money


class AccountView(BaseModel):
    #: The provider's account id. Accounts this service creates are named by customer ids
    #: (``ExternalId``), but the provider is an external system and may hold others (its
    #: own rule: 1-100 printable characters): they are shown as they are, not refused.
    customer_id: str
    #: Any number of digits: refunds are owed however high the balance was set since.
    balance: Balance


async def _provider(method: str, path: str, body: Any = None, *, not_found: str | None = None) -> Any:
    """The provider's JSON answer to an account call: its 404 as ours when ``not_found``
    says what is missing, its 503 or 429 as our 503 (with ``Retry-After``); anything else but 200 —
    or no answer, or a 200 that is not JSON — is a 502 (a ``PUT`` sent and not answered
    says it may have been applied)."""
    try:
        answer = await runtime.provider().request(method, path, body)
    except Unreachable as exc:
        # a PUT sent and not answered may have been applied; it sets the whole balance, so
        # sending it again is safe (an operator read "did not answer" as "not set": a review)
        maybe = "; it may have been applied, and sending it again is safe (it sets the whole value)"
        raise HTTPException(
            502, f"the payment provider did not answer: {exc}{maybe if method == 'PUT' and exc.sent else ''}"
        ) from None
    if answer.status_code == 404 and not_found is not None:
        raise HTTPException(404, not_found)
    if answer.status_code in NOTHING_DONE_STATUSES:  # 503, 429: nothing done, try again
        raise upstream_unavailable("the payment provider", answer.retry_after)
    if answer.status_code != 200:
        raise HTTPException(502, f"the payment provider answered {answer.status_code}")
    try:
        return answer.json()
    except ValueError:
        raise HTTPException(502, "the payment provider answered 200 with a body that is not JSON") from None


def _view(data: Any) -> AccountView:
    """An account as the provider answered it; an answer that is not one is a 502 (the
    provider broke its own contract), never a 500."""
    try:
        return AccountView(customer_id=data["account_id"], balance=Decimal(str(data["balance"])))
    except (KeyError, TypeError, ArithmeticError, ValidationError) as exc:
        raise HTTPException(
            502, f"the payment provider answered an account this service cannot read ({type(exc).__name__})"
        ) from None


@router.put(
    "/accounts/{customer_id}",
    summary="Create an account or set its balance",
    response_model=AccountView,
    responses=errors(_PROVIDER_DOWN),
)
async def put_account(customer_id: CustomerId, body: AccountIn) -> AccountView:
    """Sets the customer's balance at the payment provider (at most 999,999,999,999.99);
    charges and refunds move it from then on."""
    return _view(await _provider("PUT", f"/v1/accounts/{customer_id}", {"balance": f"{body.balance:.2f}"}))


#: A 404 of a customer's own resource: another's is a 404 too, so that an id tells nothing.
NOT_YOURS = "{}, or not the caller's (a customer sees its own only)"


@router.get(
    "/accounts/{customer_id}",
    summary="One account's balance",
    response_model=AccountView,
    responses=errors({404: NOT_YOURS.format("no such account"), **_PROVIDER_DOWN}),
)
async def get_account(customer_id: CustomerId, principal: PrincipalDep) -> AccountView:
    """The customer's balance at the payment provider now, after every charge and refund.
    A customer reads its own only (another's is a 404)."""
    if not principal.may_act_for(customer_id):
        raise HTTPException(404, f"account {customer_id} not found")
    return _view(
        await _provider("GET", f"/v1/accounts/{customer_id}", not_found=f"account {customer_id} not found")
    )


@router.get(
    "/accounts",
    summary="Every account's balance",
    response_model=list[AccountView],
    responses=errors(_PROVIDER_DOWN, invalid=False),
)
async def list_accounts() -> list[AccountView]:
    """Every customer's account at the payment provider, by customer id; an answer that is
    not a list of accounts is a 502, as ``_view``'s. An account whose id no customer can
    have (``ExternalId``) is not a customer's and is left out: the provider holds others
    too, and ``" alice"`` and ``"\\u0430lice"`` (a Cyrillic a) were listed as customers beside
    ``alice``, alike on every screen (an attack trial)."""
    accounts = await _provider("GET", "/v1/accounts")
    if not isinstance(accounts, list):
        raise HTTPException(502, "the payment provider answered something else than a list of accounts")
    return [_view(a) for a in accounts if _a_customers(a)]


_CUSTOMER_ID: TypeAdapter[str] = TypeAdapter(ExternalId)


def _a_customers(account: Any) -> bool:
    """Whether ``account`` (as the provider answered it) has an id a customer can have; one
    that is no account at all is kept, for ``_view`` to refuse."""
    if not isinstance(account, dict) or not isinstance(account.get("account_id"), str):
        return True
    try:
        _CUSTOMER_ID.validate_python(account["account_id"])
    except ValidationError:
        return False
    return True


class PaymentView(BaseModel):
    order_id: uuid.UUID
    customer_id: str
    amount: Decimal
    #: PENDING, CHARGED, DECLINED, REFUND_PENDING, REFUNDED or VOIDED
    status: str
    reason: str | None
    #: provider calls made (or claimed) so far
    attempts: int
    #: the order was cancelled while a call was out or its charge in doubt: the worker
    #: voids it if the call did nothing, else a refund follows the charge
    cancel_requested: bool
    #: provider calls answered "nothing done" (503, 429, any 4xx but 402 and 409, no connection,
    #: the breaker open)
    nothing_done_calls: int
    #: PENDING, and a call may have charged (in flight, lost in a crash, or answered
    #: without settling it: a timeout, a lost answer, a 5xx but 503): a cancellation
    #: finishes the charge and refunds it instead of voiding
    charge_in_doubt: bool
    #: since when its current call — the charge, or the refund — has waited on the provider
    #: (null: not waiting)
    waiting_since: datetime | None
    last_error: str | None
    next_attempt_at: datetime | None
    charge_id: str | None
    refund_id: str | None


@router.get(
    "/payments/{order_id}",
    summary="An order's payment and its provider calls",
    tags=["payments"],
    response_model=PaymentView,
    responses=errors({404: NOT_YOURS.format("no payment for this order (yet)")}),
)
async def get_payment(order_id: uuid.UUID, db: DatabaseDep, principal: PrincipalDep) -> PaymentView:
    """The payment's status, how many provider calls it took, and while it waits, since
    when and the last failure (a timeout, an outage, the circuit breaker open)."""
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT order_id, customer_id, amount, status, reason, attempts, cancel_requested,"
                    " nothing_done_calls,"
                    " status = 'PENDING' AND attempts > nothing_done_calls AS charge_in_doubt,"
                    " waiting_since, last_error, charge_id, refund_id, CASE WHEN status IN"
                    " ('PENDING', 'REFUND_PENDING') THEN next_attempt_at END AS next_attempt_at"
                    " FROM payments WHERE order_id = :o"
                ),
                {"o": order_id},
            )
        ).first()
    if row is None or not principal.may_act_for(row.customer_id):
        raise HTTPException(404, f"no payment for order {order_id}")
    return PaymentView.model_validate(row._mapping)
