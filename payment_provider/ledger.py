"""The provider's ledger: accounts, charges and refunds, each change one transaction.

Exactly once per key. A charge's or refund's idempotency key is its table's primary key,
and the row records a digest of the request. A request whose key is taken is a replay
when the digest matches (the stored outcome is answered again) and a misuse when it does
not (``IdempotencyKeyReused``). Concurrent requests under one key serialize on the
account's (charge) or the charge's (refund) row lock, and the insert is ``ON CONFLICT DO
NOTHING`` followed by a read: whichever request commits first makes the one charge, the
others read it back as replays. A balance moves only in the transaction that inserted
the row.

Lock order: a charge locks its account, then inserts its key; a refund locks the charge,
then updates the account. No transaction holds a key another one needs while waiting on
an account, so they never wait on each other in a cycle.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Generic, TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from payment_provider.errors import ChargeAlreadyRefunded, IdempotencyKeyReused, NoSuchCharge, OutcomeUnknown
from payment_provider.models import AccountView, ChargeIn, ChargeView, DeclineCode, RefundView, cents

T = TypeVar("T")


@contextlib.asynccontextmanager
async def _transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """``engine.begin()``, except that a failure of the COMMIT itself is ``OutcomeUnknown``:
    the commit may have reached the database, so the answer must not be the 503 that says
    nothing was done. A failure before it rolls back and propagates as it is."""
    committing = False
    try:
        async with engine.begin() as conn:
            yield conn
            committing = True
    except Exception as exc:
        if committing:
            raise OutcomeUnknown() from exc
        raise


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What a request under an idempotency key came to; ``replayed`` when an earlier
    request under that key made it."""

    record: T
    replayed: bool


def authorize(balance: Decimal | None, amount: Decimal) -> DeclineCode | None:
    """The charging rule: why a charge of ``amount`` on an account holding ``balance``
    (None: no such account) is declined, or None when it succeeds."""
    if balance is None:
        return "unknown_account"
    if balance < amount:
        return "insufficient_funds"
    return None


def _digest(*parts: str) -> bytes:
    return hashlib.sha256(json.dumps(parts).encode()).digest()


def charge_digest(request: ChargeIn) -> bytes:
    """Two charge requests are the same when account, amount (to the cent: "12.3" is
    "12.30") and reference are."""
    return _digest(request.account_id, cents(request.amount), request.reference)


def refund_digest(charge_key: str) -> bytes:
    return _digest(charge_key)


# -- accounts ---------------------------------------------------------------------------
async def set_balance(engine: AsyncEngine, account_id: str, balance: Decimal) -> AccountView:
    """Create the account or set its balance."""
    async with engine.begin() as conn:
        stored = await conn.scalar(
            text(
                "INSERT INTO accounts (account_id, balance) VALUES (:a, :b)"
                " ON CONFLICT (account_id) DO UPDATE SET balance = EXCLUDED.balance,"
                " updated_at = clock_timestamp() RETURNING balance"
            ),
            {"a": account_id, "b": balance},
        )
    return AccountView(account_id=account_id, balance=stored)


async def get_account(engine: AsyncEngine, account_id: str) -> AccountView | None:
    async with engine.connect() as conn:
        balance = await conn.scalar(
            text("SELECT balance FROM accounts WHERE account_id = :a"), {"a": account_id}
        )
    return None if balance is None else AccountView(account_id=account_id, balance=balance)


async def list_accounts(engine: AsyncEngine) -> list[AccountView]:
    """Every account, by id (code point order)."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text('SELECT account_id, balance FROM accounts ORDER BY account_id COLLATE "C"')
        )
    return [AccountView.model_validate(r._mapping) for r in rows]


# -- charges ----------------------------------------------------------------------------
_CHARGE_COLUMNS = (
    "idempotency_key, charge_id, account_id, amount, reference, status, decline_code, refunded,"
    " created_at, request_digest"
)


V = TypeVar("V", ChargeView, RefundView)


def _stored(view: type[V], row: Any) -> tuple[V, bytes]:
    """A stored charge or refund as its view, and the digest of the request that made it."""
    values = dict(row._mapping)
    digest = bytes(values.pop("request_digest"))
    return view.model_validate(values), digest


def _charge_of(row: Any) -> tuple[ChargeView, bytes]:
    return _stored(ChargeView, row)


async def _stored_charge(conn: AsyncConnection, key: str) -> tuple[ChargeView, bytes] | None:
    query = text(f"SELECT {_CHARGE_COLUMNS} FROM charges WHERE idempotency_key = :k")
    row = (await conn.execute(query, {"k": key})).first()
    return None if row is None else _charge_of(row)


def _replay(stored: tuple[T, bytes], digest: bytes) -> Outcome[T]:
    record, stored_digest = stored
    if stored_digest != digest:
        raise IdempotencyKeyReused()
    return Outcome(record, replayed=True)


async def charge(engine: AsyncEngine, key: str, request: ChargeIn) -> Outcome[ChargeView]:
    """Charge ``request.amount`` to ``request.account_id`` under ``key``, once: the balance
    goes down by the amount and the charge is stored as ``succeeded``, in one
    transaction; or the charge is stored as ``declined`` (``unknown_account``,
    ``insufficient_funds``) and nothing moves. Under a key used before: the stored charge
    (``replayed``) if the request is the same, else ``IdempotencyKeyReused``."""
    digest = charge_digest(request)
    async with _transaction(engine) as conn:
        stored = await _stored_charge(conn, key)
        if stored is not None:
            return _replay(stored, digest)
        balance = await conn.scalar(
            text("SELECT balance FROM accounts WHERE account_id = :a FOR UPDATE"), {"a": request.account_id}
        )
        decline = authorize(balance, request.amount)
        row = (
            await conn.execute(
                text(
                    "INSERT INTO charges (idempotency_key, charge_id, account_id, amount, reference,"
                    " status, decline_code, request_digest)"
                    " VALUES (:k, :id, :a, :amount, :ref, :status, :decline, :d)"
                    f" ON CONFLICT (idempotency_key) DO NOTHING RETURNING {_CHARGE_COLUMNS}"
                ),
                {
                    "k": key,
                    "id": uuid.uuid4(),
                    "a": request.account_id,
                    "amount": request.amount,
                    "ref": request.reference,
                    "status": "declined" if decline else "succeeded",
                    "decline": decline,
                    "d": digest,
                },
            )
        ).first()
        if row is None:  # a concurrent request under this key committed first
            stored = await _stored_charge(conn, key)
            assert stored is not None, "a conflicting charge is committed, so it is visible"
            return _replay(stored, digest)
        if decline is None:
            await conn.execute(
                text(
                    "UPDATE accounts SET balance = balance - :amount, updated_at = clock_timestamp()"
                    " WHERE account_id = :a"
                ),
                {"amount": request.amount, "a": request.account_id},
            )
        return Outcome(_charge_of(row)[0], replayed=False)


async def get_charge(engine: AsyncEngine, key: str) -> ChargeView | None:
    """The charge made under ``key`` as it is now (``refunded`` once refunded)."""
    async with engine.connect() as conn:
        stored = await _stored_charge(conn, key)
    return None if stored is None else stored[0]


# -- refunds ----------------------------------------------------------------------------
_REFUND_SELECT = (
    "SELECT r.idempotency_key, r.refund_id, r.charge_key, c.charge_id, r.amount, r.created_at,"
    " r.request_digest FROM refunds r JOIN charges c ON c.idempotency_key = r.charge_key"
)


def _refund_of(row: Any) -> tuple[RefundView, bytes]:
    return _stored(RefundView, row)


async def _stored_refund(conn: AsyncConnection, key: str) -> tuple[RefundView, bytes] | None:
    row = (await conn.execute(text(f"{_REFUND_SELECT} WHERE r.idempotency_key = :k"), {"k": key})).first()
    return None if row is None else _refund_of(row)


async def refund(engine: AsyncEngine, key: str, charge_key: str) -> Outcome[RefundView]:
    """Refund the charge made under ``charge_key`` in full, under ``key``, once: the
    amount goes back onto the charge's account and the charge is marked refunded, in one
    transaction. ``NoSuchCharge`` for an unknown or declined charge;
    ``ChargeAlreadyRefunded`` when another key refunded it; under a key used before, the
    stored refund (``replayed``) if the request is the same, else
    ``IdempotencyKeyReused``."""
    digest = refund_digest(charge_key)
    async with _transaction(engine) as conn:
        stored = await _stored_refund(conn, key)
        if stored is not None:
            return _replay(stored, digest)
        charged = (
            await conn.execute(
                text(
                    "SELECT charge_id, account_id, amount, status, refunded FROM charges"
                    " WHERE idempotency_key = :ck FOR UPDATE"
                ),
                {"ck": charge_key},
            )
        ).first()
        if charged is None or charged.status != "succeeded":
            raise NoSuchCharge()
        if charged.refunded:
            # refunded while we waited for the charge's lock: by a request under this key
            # (a replay), or under another one
            stored = await _stored_refund(conn, key)
            if stored is not None:
                return _replay(stored, digest)
            raise ChargeAlreadyRefunded()
        row = (
            await conn.execute(
                text(
                    "INSERT INTO refunds (idempotency_key, refund_id, charge_key, amount, request_digest)"
                    " VALUES (:k, :id, :ck, :amount, :d) ON CONFLICT (idempotency_key) DO NOTHING"
                    " RETURNING idempotency_key, refund_id, charge_key, amount, created_at"
                ),
                {"k": key, "id": uuid.uuid4(), "ck": charge_key, "amount": charged.amount, "d": digest},
            )
        ).first()
        if row is None:  # a concurrent request under this key, for another charge, won
            stored = await _stored_refund(conn, key)
            assert stored is not None, "a conflicting refund is committed, so it is visible"
            return _replay(stored, digest)
        await conn.execute(
            text("UPDATE charges SET refunded = true WHERE idempotency_key = :ck"), {"ck": charge_key}
        )
        moved = await conn.execute(
            text(
                "UPDATE accounts SET balance = balance + :amount, updated_at = clock_timestamp()"
                " WHERE account_id = :a"
            ),
            {"amount": charged.amount, "a": charged.account_id},
        )
        if moved.rowcount != 1:  # accounts are never deleted: a charged account exists
            raise RuntimeError(f"the account of charge {charged.charge_id} is gone")
        return Outcome(RefundView(**row._mapping, charge_id=charged.charge_id), replayed=False)


async def get_refund(engine: AsyncEngine, key: str) -> RefundView | None:
    async with engine.connect() as conn:
        stored = await _stored_refund(conn, key)
    return None if stored is None else stored[0]


async def everything(engine: AsyncEngine) -> tuple[Sequence[ChargeView], Sequence[RefundView]]:
    """Every charge (declined ones too) and every refund, oldest first, read in one
    snapshot (a refund's charge is always among the charges)."""
    async with engine.connect() as conn, conn.begin():
        await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        charges = await conn.execute(
            text(f'SELECT {_CHARGE_COLUMNS} FROM charges ORDER BY created_at, idempotency_key COLLATE "C"')
        )
        refunds = await conn.execute(
            text(f'{_REFUND_SELECT} ORDER BY r.created_at, r.idempotency_key COLLATE "C"')
        )
        return [_charge_of(r)[0] for r in charges], [_refund_of(r)[0] for r in refunds]
