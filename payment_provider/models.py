"""The provider's wire contract: request and answer bodies.

Amounts are exact decimals written as JSON strings with two places (``"12.34"``; input
may have fewer places, ``"12.3"`` is 12.30), never negative; a charge is at most
999,999,999,999.99. Balances have any number of digits (a refund is owed however high a
balance was set since) and are never negative. Times are UTC, ISO 8601.

Identifiers are printable text (Python's ``str.isprintable``: no control characters, no
separators but the space, no lone surrogates): an account id 1..100 characters, an
idempotency key 1..200. A reference (the order id) is free text of at most 200.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from events.values import Money, SafeText
from saga_kit.http import InvalidField

MAX_ACCOUNT_ID = 100
MAX_IDEMPOTENCY_KEY = 200
MAX_REFERENCE = 200

_CENT = Decimal("0.01")


def printable_text(value: str) -> str:
    """Refuse control characters, separators other than the space, lone surrogates."""
    if not value.isprintable():
        raise ValueError(
            "must be printable text (no control characters, no separators but the space, no lone surrogates)"
        )
    return value


AccountId = Annotated[str, Field(min_length=1, max_length=MAX_ACCOUNT_ID), AfterValidator(printable_text)]
IdempotencyKey = Annotated[
    str, Field(min_length=1, max_length=MAX_IDEMPOTENCY_KEY), AfterValidator(printable_text)
]
#: Free text the client chooses (the order id): stored and shown as sent.
Reference = Annotated[SafeText, Field(max_length=MAX_REFERENCE)]

DeclineCode = Literal["insufficient_funds", "unknown_account"]


def cents(value: Decimal) -> str:
    """An amount on the wire: always two places."""
    return format(value.quantize(_CENT), "f")


#: An amount or balance as answered: a string with two places, any number of digits.
Amount = Annotated[
    Decimal,
    PlainSerializer(cents, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": r"^[0-9]+\.[0-9]{2}$", "examples": ["12.34"]}),
]


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


#: A time as answered: UTC, ISO 8601 with microseconds when there are any.
Timestamp = Annotated[
    datetime,
    PlainSerializer(_utc, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


# -- accounts ---------------------------------------------------------------------------
class AccountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: The balance to set, at most 999,999,999,999.99.
    balance: Money


class AccountView(BaseModel):
    account_id: str
    balance: Amount


# -- charges ----------------------------------------------------------------------------
class ChargeIn(BaseModel):
    """``POST /v1/charges``: take ``amount`` from ``account_id``'s balance."""

    model_config = ConfigDict(extra="forbid")

    account_id: AccountId
    #: At most 999,999,999,999.99; zero is a valid charge.
    amount: Money
    #: The client's reference (the order id), stored and shown with the charge.
    reference: Reference


class ChargeView(BaseModel):
    """A charge as stored. ``status`` is ``succeeded`` (the amount was taken) or
    ``declined`` (nothing was taken; ``decline_code`` says why, null otherwise);
    ``refunded`` turns true once the full amount went back to the account."""

    charge_id: uuid.UUID
    idempotency_key: str
    account_id: str
    amount: Amount
    reference: str
    status: Literal["succeeded", "declined"]
    decline_code: DeclineCode | None = None
    refunded: bool
    created_at: Timestamp


# -- refunds ----------------------------------------------------------------------------
class RefundIn(BaseModel):
    """``POST /v1/refunds``: give a charge's full amount back to its account."""

    model_config = ConfigDict(extra="forbid")

    #: The idempotency key the charge was made under.
    charge_key: IdempotencyKey


class RefundView(BaseModel):
    refund_id: uuid.UUID
    idempotency_key: str
    charge_key: str
    charge_id: uuid.UUID
    #: The charge's full amount.
    amount: Amount
    status: Literal["succeeded"] = "succeeded"
    created_at: Timestamp


class LedgerView(BaseModel):
    """Everything the provider did, for reconciliation: every charge (declined ones too)
    and every refund, oldest first."""

    charges: list[ChargeView]
    refunds: list[RefundView]


# -- errors -----------------------------------------------------------------------------
class ErrorBody(BaseModel):
    """Every error answer: ``error`` is a stable code for programs, ``message`` is for
    people."""

    error: str
    message: str


class DeclineBody(BaseModel):
    """A 402: the charge was declined (and stored under its key: a replay answers this
    again)."""

    error: Literal["card_declined"]
    decline_code: DeclineCode
    message: str


class InvalidBody(BaseModel):
    """A 422: the body, a path parameter or the ``Idempotency-Key`` is invalid; ``details``
    says where and why (never echoing the input)."""

    error: Literal["invalid_request"]
    message: str
    details: list[InvalidField]


def error_doc(description: str, model: type[BaseModel] = ErrorBody) -> dict[str, Any]:
    """One error answer in a route's OpenAPI ``responses``."""
    return {"model": model, "description": description}
