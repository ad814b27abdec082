"""Personal data, sealed per customer, and forgotten by destroying one key (crypto-shredding).

A customer's personal data (an order's e-mail address and shipping address) is never
stored or sent in the clear. It is sealed with **AES-256-GCM** (``cryptography``'s
``AESGCM``; a random 96-bit nonce per seal) under that customer's own **data key**, with
the order's id as associated data, so a sealed value cannot be moved to another order.
The sealed value (``Sealed``: key id, nonce, ciphertext) is what the order's row, the
``OrderCreated`` event, the timeline, the outbox and the Kafka log hold.

Data keys live in the ``customer_keys`` table of the service that seals, each wrapped
with the service's **master key** (RFC 3394 AES key wrap, ``cryptography``'s
``aes_key_wrap``), which never leaves the process's memory and comes from a file
(``ORDER_PII_MASTER_KEY_FILE``: JSON ``{"key": base64 of 32 bytes}``).

**Forgetting a customer** (``forget``) deletes the wrapped data key. From then on every
copy of the customer's personal data — in any database, in the Kafka log, in a backup —
is ciphertext without a key: unreadable everywhere, without finding or rewriting any of
it. The orders themselves, their totals, stock and payments stay as they were. The
customer's next order gets a new key.

Key rotation of the master key is not built: a new master key means unwrapping and
rewrapping every live data key (one ``UPDATE`` per key), which is left to an operator
tool.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from events.personal import PersonalData, Sealed
from saga_kit.errors import ConfigurationError, TransientError

#: bytes of a data key and of the master key (AES-256)
KEY_BYTES = 32
_NONCE_BYTES = 12
#: How often ``KeyStore.keys_for`` tries to take a customer's key (a customer forgotten
#: between its insert and its read is tried again).
_KEY_TRIES = 3


class MasterKeyError(ConfigurationError):
    """The master key is missing, unreadable, or unfit for where the service runs."""


class Unreadable(Exception):
    """Sealed data that cannot be opened: its key was destroyed (the customer was
    forgotten), or it was altered."""


def load_master_key(path: str | None, *, production: bool) -> bytes | None:
    """The master key from its file; None without one (development: personal data is then
    refused). In production (``SAGA_ENV=production``) a file is required and the
    development one is refused: ``MasterKeyError`` says which."""
    if not path:
        if production:
            raise MasterKeyError("SAGA_ENV=production needs ORDER_PII_MASTER_KEY_FILE")
        return None
    try:
        document = json.loads(Path(path).read_text())
        key = base64.b64decode(document["key"], validate=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MasterKeyError(f"cannot read the master key {path}: {type(exc).__name__}") from None
    if len(key) != KEY_BYTES:
        raise MasterKeyError(f"the master key in {path} is not {KEY_BYTES} bytes")
    if production and document.get("development"):
        raise MasterKeyError(f"SAGA_ENV=production refuses the development master key {path}")
    return key


def write_dev_master_key(path: Path) -> Path:
    """A development master key (readable by the owner only), kept if it exists."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        document = {"development": True, "key": base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}
        path.write_text(json.dumps(document) + "\n")
        path.chmod(0o600)
    return path


@dataclass(frozen=True)
class DataKey:
    key_id: uuid.UUID
    key: bytes


def _aad(key_id: uuid.UUID, bound_to: uuid.UUID) -> bytes:
    return b"personal-data/1\0" + key_id.bytes + bound_to.bytes


def seal(data: PersonalData, key: DataKey, bound_to: uuid.UUID) -> Sealed:
    """``data`` sealed under ``key``, bound to ``bound_to`` (the order's id)."""
    nonce = os.urandom(_NONCE_BYTES)
    plaintext = data.model_dump_json(exclude_none=True).encode()
    ciphertext = AESGCM(key.key).encrypt(nonce, plaintext, _aad(key.key_id, bound_to))
    return Sealed(
        key_id=key.key_id,
        nonce=base64.b64encode(nonce).decode(),
        ciphertext=base64.b64encode(ciphertext).decode(),
    )


def open_sealed(sealed: Sealed, key: DataKey | None, bound_to: uuid.UUID) -> PersonalData:
    """The personal data ``sealed`` holds; ``Unreadable`` without its key or if altered."""
    if key is None or key.key_id != sealed.key_id:
        raise Unreadable("its data key was destroyed: the customer was forgotten")
    try:
        plaintext = AESGCM(key.key).decrypt(
            base64.b64decode(sealed.nonce), base64.b64decode(sealed.ciphertext), _aad(key.key_id, bound_to)
        )
    except (InvalidTag, ValueError):
        raise Unreadable("it does not open with its key (altered, or sealed for another order)") from None
    return PersonalData.model_validate_json(plaintext)


class KeyStore:
    """The customers' data keys in the service's database, wrapped with its master key."""

    def __init__(self, master_key: bytes) -> None:
        self._master = master_key

    def _wrap(self, key: bytes) -> bytes:
        return aes_key_wrap(self._master, key)

    def _unwrap(self, wrapped: bytes) -> bytes:
        try:
            return aes_key_unwrap(self._master, wrapped)
        except InvalidUnwrap:
            raise Unreadable("a data key does not unwrap with this master key") from None

    async def keys_for(self, conn: AsyncConnection, customers: Iterable[str]) -> dict[str, DataKey]:
        """Each customer's live data key, a new one made for a customer without (or whose
        keys were all destroyed). Concurrent callers agree: a key is unique per customer
        while live, and the loser of a race reads the winner's. A customer forgotten
        between the insert, which found its live key, and the read gets a new key too
        (the insert is tried again for it, at most ``_KEY_TRIES`` times in all); past
        that, ``TransientError``."""
        keys: dict[str, DataKey] = {}
        missing = sorted(set(customers))
        for _ in range(_KEY_TRIES):
            if not missing:
                return keys
            keys |= await self._live_or_new(conn, missing)
            missing = [c for c in missing if c not in keys]
        if missing:
            raise TransientError("a customer's data key was destroyed each time one was taken")
        return keys

    async def _live_or_new(self, conn: AsyncConnection, wanted: list[str]) -> dict[str, DataKey]:
        """``keys_for``'s one try: a new key for each of ``wanted`` (sorted) without a live
        one, then the live keys read; a customer forgotten in between is left out."""
        fresh = {c: (uuid.uuid4(), secrets.token_bytes(KEY_BYTES)) for c in wanted}
        await conn.execute(
            text(
                "INSERT INTO customer_keys (key_id, customer_id, wrapped_key)"
                " SELECT * FROM unnest("
                "CAST(:ids AS uuid[]), CAST(:customers AS text[]), CAST(:keys AS bytea[]))"
                " ON CONFLICT (customer_id) WHERE shredded_at IS NULL DO NOTHING"
            ),
            {
                "ids": [fresh[c][0] for c in wanted],
                "customers": wanted,
                "keys": [self._wrap(fresh[c][1]) for c in wanted],
            },
        )
        rows = await conn.execute(
            text(
                "SELECT customer_id, key_id, wrapped_key FROM customer_keys"
                " WHERE customer_id = ANY(:customers) AND shredded_at IS NULL"
            ),
            {"customers": wanted},
        )
        return {r.customer_id: DataKey(r.key_id, self._unwrap(bytes(r.wrapped_key))) for r in rows}

    async def key(self, conn: AsyncConnection, key_id: uuid.UUID) -> DataKey | None:
        """The data key ``key_id`` if it still exists (None once destroyed)."""
        row = (
            await conn.execute(
                text("SELECT wrapped_key FROM customer_keys WHERE key_id = :k AND shredded_at IS NULL"),
                {"k": key_id},
            )
        ).first()
        return None if row is None else DataKey(key_id, self._unwrap(bytes(row.wrapped_key)))


async def forget(conn: AsyncConnection, customer_id: str) -> int:
    """Destroy every data key of ``customer_id`` (the row stays, as a record of when, with
    no key in it); return how many were destroyed. Works without the master key."""
    result = await conn.execute(
        text(
            "UPDATE customer_keys SET wrapped_key = NULL, shredded_at = clock_timestamp()"
            " WHERE customer_id = :c AND shredded_at IS NULL"
        ),
        {"c": customer_id},
    )
    return int(result.rowcount or 0)


def sealed_of(value: Mapping[str, Any] | None) -> Sealed | None:
    """A stored sealed value (JSON) as ``Sealed``."""
    return None if value is None else Sealed.model_validate(value)
