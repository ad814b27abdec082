"""The provider's HTTP API (``/v1``) and health. Routes decode, call one ledger function and
answer; the contract is in ``ledger`` and ``models``.

A request that makes a charge or a refund needs an ``Idempotency-Key`` header. An answer
to a replay — the same key with the same body — is the first answer again (status and
body) with ``Idempotent-Replayed: true``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, TypeAdapter, ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from events.values import error_words, printable
from payment_provider import ledger
from payment_provider.errors import (
    IdempotencyKeyRequired,
    InvalidRequest,
    NoSuchAccount,
    NoSuchCharge,
    NoSuchRefund,
)
from payment_provider.models import (
    AccountId,
    AccountIn,
    AccountView,
    ChargeIn,
    ChargeView,
    DeclineBody,
    IdempotencyKey,
    InvalidBody,
    LedgerView,
    RefundIn,
    RefundView,
    error_doc,
    printable_text,
)
from saga_kit.http import IDEMPOTENT_REPLAYED, header_text, path_text, sent_twice

Responses = dict[int | str, dict[str, Any]]

_INVALID: Responses = {
    422: error_doc("the body, a path parameter or the Idempotency-Key is invalid", InvalidBody)
}
_KEY_REQUIRED: Responses = {400: error_doc("no Idempotency-Key header (`idempotency_key_required`)")}
_KEY_REUSED: Responses = {
    409: error_doc("the Idempotency-Key was used with another body (`idempotency_key_reused`)")
}
_REPLAYED_HEADER = {
    IDEMPOTENT_REPLAYED: {
        "description": "`true` when this is the stored answer to an earlier request under the key"
    }
}
_FAULTS: Responses = {
    500: error_doc(
        "injected error (`internal_error`), nothing done; or the database failed while committing"
        " (`outcome_unknown`): the change may have been made, ask again with the same key"
    ),
    502: error_doc("injected lost answer (`response_lost`): the call was processed and committed"),
    503: error_doc(
        "injected outage, or the database away (`unavailable`): nothing done, retry with the same key"
    ),
}


async def get_engine(request: Request) -> AsyncEngine:
    engine: AsyncEngine = request.app.state.engine
    return engine


EngineDep = Annotated[AsyncEngine, Depends(get_engine)]

_account_id = TypeAdapter(AccountId)
_key = TypeAdapter(IdempotencyKey)


def _checked(adapter: TypeAdapter[str], value: str, where: str, name: str) -> str:
    """A path parameter or header checked like a body field, or ``InvalidRequest``."""
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise InvalidRequest(
            [
                {"loc": [where, name], "msg": printable(error_words(e), 300), "type": str(e["type"])}
                for e in exc.errors()
            ]
        ) from None


def idempotency_key(
    request: Request,
    idempotency_key: Annotated[
        str | None,
        Header(description="1 to 200 printable characters (UTF-8); the same key answers the same result"),
    ] = None,
) -> str:
    """The ``Idempotency-Key`` header: required (400), 1..200 printable UTF-8 characters,
    sent once (422: which of two keys was meant is unknown; the framework took the first,
    and a client retrying under the second would be charged twice — a trial found it)."""
    if len(request.headers.getlist("idempotency-key")) > 1:
        raise InvalidRequest([sent_twice("header", "Idempotency-Key")])
    if not idempotency_key:
        raise IdempotencyKeyRequired()
    try:  # a key is UTF-8, like a path's
        key = header_text(idempotency_key)
    except ValueError as not_utf8:
        # it was read as U+FFFD, which is printable: every such key was one key, and a
        # client was told of another's charge as its own (an attack trial)
        detail = {"loc": ["header", "Idempotency-Key"], "msg": str(not_utf8), "type": "value_error"}
        raise InvalidRequest([detail]) from None
    return _checked(_key, key, "header", "Idempotency-Key")


KeyDep = Annotated[str, Depends(idempotency_key)]


def _in_path(request: Request, adapter: TypeAdapter[str], value: str, name: str) -> str:
    """The path parameter ``name`` (``value``), checked like a body field (``adapter``);
    422 for a path whose bytes are not UTF-8, or with a ``%`` that escapes nothing
    (``saga_kit.http.path_text``): the server read them as U+FFFD, or as they came, so
    two paths were one account or key (attack trials)."""
    try:
        path = path_text(request.scope)
        # the whole path, as the parameter may be only part of it: format characters (U+200B,
        # bidirectional controls), separators, private-use and unassigned characters, lone
        # surrogates (a control character is refused before that, by ``path_refusal``)
        printable_text(path)
    except ValueError as unreadable:
        detail = {"loc": ["path", name], "msg": str(unreadable), "type": "value_error"}
        raise InvalidRequest([detail]) from None
    return _checked(adapter, value, "path", name)


def account_id_in_path(request: Request, account_id: str) -> str:
    """The path's ``account_id`` (``AccountId``), as ``_in_path`` reads it."""
    return _in_path(request, _account_id, account_id, "account_id")


AccountIdDep = Annotated[str, Depends(account_id_in_path)]


def _json(model: BaseModel, status: int, replayed: bool = False) -> JSONResponse:
    return JSONResponse(
        model.model_dump(mode="json"),
        status_code=status,
        headers={IDEMPOTENT_REPLAYED: "true"} if replayed else None,
    )


# -- accounts ---------------------------------------------------------------------------
accounts = APIRouter(tags=["accounts"])


@accounts.put(
    "/v1/accounts/{account_id:path}",
    summary="Create an account or set its balance",
    response_model=AccountView,
    responses=_INVALID,
)
async def put_account(account_id: AccountIdDep, body: AccountIn, engine: EngineDep) -> JSONResponse:
    """Sets the balance (a decimal string, at most 999,999,999,999.99) of the account
    ``account_id`` (1..100 printable characters, UTF-8), creating it if needed. Charges
    and refunds move it from then on. Answers ``{"account_id", "balance"}``."""
    return _json(await ledger.set_balance(engine, account_id, body.balance), 200)


@accounts.get(
    "/v1/accounts/{account_id:path}",
    summary="One account's balance",
    response_model=AccountView,
    responses={404: error_doc("no such account (`no_such_account`)"), **_INVALID},
)
async def get_account(account_id: AccountIdDep, engine: EngineDep) -> JSONResponse:
    """The account's balance now, after every charge and refund so far."""
    account = await ledger.get_account(engine, account_id)
    if account is None:
        raise NoSuchAccount()
    return _json(account, 200)


@accounts.get("/v1/accounts", summary="Every account", response_model=list[AccountView])
async def list_accounts(engine: EngineDep) -> list[AccountView]:
    """Every account with its balance, ordered by id (code point order)."""
    return await ledger.list_accounts(engine)


# -- charges ----------------------------------------------------------------------------
charges = APIRouter(tags=["charges"])


def _charge_answer(outcome: ledger.Outcome[ChargeView]) -> JSONResponse:
    """201 with the charge, or 402 with the decline: what the first request under the key
    was answered (a charge is never refunded when first answered)."""
    charge = outcome.record
    if charge.status == "succeeded":
        return _json(charge.model_copy(update={"refunded": False}), 201, outcome.replayed)
    assert charge.decline_code is not None
    reason = {"insufficient_funds": "the balance is below the amount", "unknown_account": "no such account"}
    decline = DeclineBody(
        error="card_declined",
        decline_code=charge.decline_code,
        message=f"the charge was declined: {reason[charge.decline_code]}",
    )
    return _json(decline, 402, outcome.replayed)


@charges.post(
    "/v1/charges",
    summary="Charge an account",
    status_code=201,
    response_model=ChargeView,
    responses={
        201: {"description": "charged", "headers": _REPLAYED_HEADER},
        402: {"model": DeclineBody, "description": "declined (`card_declined`)", "headers": _REPLAYED_HEADER},
        **_KEY_REQUIRED,
        **_KEY_REUSED,
        **_INVALID,
        **_FAULTS,
    },
)
async def post_charge(body: ChargeIn, key: KeyDep, engine: EngineDep) -> JSONResponse:
    """Takes ``amount`` from the account's balance and stores the charge under the
    ``Idempotency-Key``, in one transaction: **201** with the charge (``status``
    ``succeeded``). When the account does not exist or holds less than the amount, nothing
    is taken and the charge is stored as ``declined``: **402** ``card_declined`` with
    ``decline_code`` ``unknown_account`` or ``insufficient_funds``.

    The same key with the same body (account, amount to the cent, reference) answers the
    first answer again — 201 or 402, same body — with ``Idempotent-Replayed: true``, and
    charges nothing; with another body, **409** ``idempotency_key_reused``. Concurrent
    requests under one key make one charge."""
    return _charge_answer(await ledger.charge(engine, key, body))


@charges.get(
    "/v1/charges/{idempotency_key:path}",
    summary="The charge made under a key",
    response_model=ChargeView,
    responses={404: error_doc("no charge under this key (`no_such_charge`)"), **_INVALID, **_FAULTS},
)
async def get_charge(request: Request, idempotency_key: str, engine: EngineDep) -> JSONResponse:
    """The charge made under ``idempotency_key`` as it is now: declined ones too (``status``
    ``declined``, ``decline_code``), and ``refunded: true`` once refunded. How a client that
    lost an answer finds out whether it was charged."""
    key = _in_path(request, _key, idempotency_key, "idempotency_key")
    charge = await ledger.get_charge(engine, key)
    if charge is None:
        raise NoSuchCharge()
    return _json(charge, 200)


# -- refunds ----------------------------------------------------------------------------
refunds = APIRouter(tags=["refunds"])


@refunds.post(
    "/v1/refunds",
    summary="Refund a charge in full",
    status_code=201,
    response_model=RefundView,
    responses={
        201: {"description": "refunded", "headers": _REPLAYED_HEADER},
        404: error_doc("no successful charge under `charge_key` (`no_such_charge`)"),
        409: error_doc(
            "the charge was refunded under another key (`charge_already_refunded`), or this"
            " Idempotency-Key was used with another body (`idempotency_key_reused`)"
        ),
        **_KEY_REQUIRED,
        **_INVALID,
        **_FAULTS,
    },
)
async def post_refund(body: RefundIn, key: KeyDep, engine: EngineDep) -> JSONResponse:
    """Gives the full amount of the charge made under ``charge_key`` back to its account
    and marks the charge refunded, in one transaction: **201** with the refund. **404**
    ``no_such_charge`` for an unknown or declined charge; **409**
    ``charge_already_refunded`` when another key refunded it already.

    The same key with the same body answers the stored refund again (201, same body) with
    ``Idempotent-Replayed: true``; with another body, **409** ``idempotency_key_reused``."""
    outcome = await ledger.refund(engine, key, body.charge_key)
    return _json(outcome.record, 201, outcome.replayed)


@refunds.get(
    "/v1/refunds/{idempotency_key:path}",
    summary="The refund made under a key",
    response_model=RefundView,
    responses={404: error_doc("no refund under this key (`no_such_refund`)"), **_INVALID, **_FAULTS},
)
async def get_refund(request: Request, idempotency_key: str, engine: EngineDep) -> JSONResponse:
    """The refund made under ``idempotency_key``."""
    key = _in_path(request, _key, idempotency_key, "idempotency_key")
    found = await ledger.get_refund(engine, key)
    if found is None:
        raise NoSuchRefund()
    return _json(found, 200)


# -- ledger -----------------------------------------------------------------------------
reconciliation = APIRouter(tags=["ledger"])


@reconciliation.get("/v1/ledger", summary="Every charge and refund", response_model=LedgerView)
async def get_ledger(engine: EngineDep) -> LedgerView:
    """Every charge (declined ones too) and every refund, oldest first, read in one
    snapshot: what to reconcile the payment service's records against. Not paginated."""
    all_charges, all_refunds = await ledger.everything(engine)
    return LedgerView(charges=list(all_charges), refunds=list(all_refunds))


def routers() -> list[APIRouter]:
    return [accounts, charges, refunds, reconciliation]
