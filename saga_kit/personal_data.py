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
(``ORDER_PII_MASTER_KEY_FILE``: JSON ``{"key": base64 of 32 bytes}``). Each row names the
master key that wrapped it by the key's id (``MasterKey.key_id``: a fingerprint, so a
file needs no id of its own).

**Rotating the master key** is envelope encryption's usual procedure: the service is
started with the new key as its master key and the old one among its previous keys
(``ORDER_PII_PREVIOUS_MASTER_KEY_FILES``), which it only unwraps with; ``rewrap`` (a
scheduled job, ``order_svc``'s ``pii_rewrap``) unwraps every live data key under a previous
key and wraps it again with the new one, a batch per transaction, and logs when none is
left: then the old key may be removed and destroyed. Data keys change no byte, so nothing
sealed is rewritten. A data key under a master key the service does not have is
``MasterKeyUnavailable`` — a 503 over HTTP, with the key's id in the log — never
"erased" and never a 500 (as every earlier order was for an operator who replaced the key
file, before rotation was built).

**Forgetting a customer** (``forget``) deletes the wrapped data key. From then on every
copy of the customer's personal data — in any database, in the Kafka log, in a backup —
is ciphertext without a key: unreadable everywhere, without finding or rewriting any of
it. The orders themselves, their totals, stock and payments stay as they were. The
customer's next order gets a new key.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import secrets
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from events.personal import PersonalData, Sealed
from saga_kit.db import Database
from saga_kit.errors import ConfigurationError, TransientError

log = logging.getLogger(__name__)

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


class KeyUnavailable(TransientError):
    """A customer's live data key cannot be had: its customer's personal data can be
    neither opened nor sealed until an operator acts (the log says which key and why).
    Only that customer's: ``KeyStore.keys_for`` answers it per customer."""


class MasterKeyUnavailable(KeyUnavailable):
    """A data key is wrapped with a master key this service was not given (a key file
    replaced instead of rotated, or an instance not yet given the new key in a rolling
    restart): the data is there, the service cannot open it until it has that key."""


class DataKeyDamaged(KeyUnavailable):
    """A customer's live data key does not unwrap with the master key its row names: the
    row was altered (restore it from a backup). Nothing new can be sealed for that customer
    until then (a 503 over HTTP, the log naming the key), and what was sealed reads as
    ``unreadable``."""


@dataclass(frozen=True)
class MasterKey:
    """A master key (32 bytes) and its id, which the ``customer_keys`` rows it wraps name:
    ``master_key_id``."""

    key_id: str
    key: bytes = field(repr=False)

    @classmethod
    def of(cls, key: bytes) -> MasterKey:
        """``key`` with its id: the first 16 hex digits of the SHA-256 of a label and the
        key — it names the key in rows and logs, and cannot be turned back into it."""
        return cls(hashlib.sha256(b"saga personal-data master key\0" + key).hexdigest()[:16], key)


def load_keystore(path: str | None, previous: Sequence[str] = (), *, production: bool) -> KeyStore | None:
    """The key store of master key ``path`` and the ``previous`` master keys' files (read to
    unwrap only, until ``KeyStore.rewrap`` has wrapped everything again with the master
    key); None without a master key (development: personal data is then refused).
    ``MasterKeyError`` as ``load_master_key``, and for previous keys without a master key."""
    current = load_master_key(path, production=production)
    if current is None:
        if previous:
            raise MasterKeyError(
                "ORDER_PII_PREVIOUS_MASTER_KEY_FILES needs ORDER_PII_MASTER_KEY_FILE:"
                " a previous key is only read to wrap again with the master key"
            )
        return None
    olds: dict[str, MasterKey] = {}
    for path in previous:
        try:
            old = load_master_key(path, production=production)
        except MasterKeyError as exc:
            raise MasterKeyError(f"ORDER_PII_PREVIOUS_MASTER_KEY_FILES: {exc}") from None
        if old is not None and old.key_id != current.key_id:
            olds.setdefault(old.key_id, old)  # a key given twice is one key
    return KeyStore(current, list(olds.values()))


def load_master_key(path: str | None, *, production: bool) -> MasterKey | None:
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
    return MasterKey.of(key)


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


@dataclass(frozen=True)
class Rewrapped:
    """What one ``KeyStore.rewrap`` did: data keys wrapped again with the master key
    (``rewrapped``); live ones it could not unwrap, counted by the id of the master key
    that wraps them: a key the service was not given (``unknown``; ``"?"`` for a row from
    before rows named their master key that no key given unwraps), or one it has that
    does not unwrap them (``altered``)."""

    rewrapped: int
    unknown: dict[str, int]
    altered: dict[str, int]


#: Data keys ``KeyStore.rewrap`` wraps again per transaction.
REWRAP_BATCH = 500


class KeyStore:
    """The customers' data keys in the service's database, wrapped with its master key
    ``current``; ``previous`` master keys unwrap only (a rotation in progress)."""

    def __init__(self, current: MasterKey, previous: Sequence[MasterKey] = ()) -> None:
        self.current = current
        self.previous = tuple(previous)
        self._by_id = {k.key_id: k for k in (current, *self.previous)}

    def _wrap(self, key: bytes) -> bytes:
        return aes_key_wrap(self.current.key, key)

    def _unwrap(self, master_key_id: str | None, wrapped: bytes) -> bytes:
        """The data key ``wrapped`` by the master key ``master_key_id`` (None: a row from
        before rows named it: each key given is tried). ``MasterKeyUnavailable`` without
        that key; ``DataKeyDamaged`` if it does not unwrap with it (altered)."""
        if master_key_id is None:
            for each in self._by_id.values():
                with contextlib.suppress(InvalidUnwrap):
                    return aes_key_unwrap(each.key, wrapped)
            raise MasterKeyUnavailable(
                "a data key wrapped before rows named their master key unwraps with none of this"
                f" service's ({', '.join(self._by_id)}): ORDER_PII_PREVIOUS_MASTER_KEY_FILES"
                " should hold the one it had then"
            )
        master = self._by_id.get(master_key_id)
        if master is None:
            raise MasterKeyUnavailable(
                f"a data key is wrapped with master key {master_key_id}, which this service"
                f" does not have (it has {', '.join(self._by_id)}): give it in"
                " ORDER_PII_PREVIOUS_MASTER_KEY_FILES"
            )
        try:
            return aes_key_unwrap(master.key, wrapped)
        except InvalidUnwrap:
            raise DataKeyDamaged(
                f"a data key does not unwrap with the master key its row names ({master_key_id}): the row"
                " was altered; restore it from a backup"
            ) from None

    def _unwrap_row(self, row: Any) -> bytes:
        """The data key of a ``customer_keys`` row (its ``wrapped_key`` and ``master_key_id``)."""
        return self._unwrap(row.master_key_id, bytes(row.wrapped_key))

    async def keys_for(
        self, conn: AsyncConnection, customers: Iterable[str]
    ) -> dict[str, DataKey | KeyUnavailable]:
        """Each customer's live data key, a new one made for a customer without (or whose
        keys were all destroyed). Concurrent callers agree: a key is unique per customer
        while live, and the loser of a race reads the winner's. A customer forgotten
        between the insert, which found its live key, and the read gets a new key too
        (the insert is tried again for it, at most ``_KEY_TRIES`` times in all); past
        that, ``TransientError``. A customer whose live key cannot be unwrapped has its
        ``KeyUnavailable`` (``MasterKeyUnavailable``: under a master key this service does
        not have; ``DataKeyDamaged``: altered) in place of a key: the others are not held
        up by it (one such customer in a group of orders refused them all: an operator
        trial)."""
        keys: dict[str, DataKey | KeyUnavailable] = {}
        missing = sorted(set(customers))
        for _ in range(_KEY_TRIES):
            if not missing:
                return keys
            keys |= await self._live_or_new(conn, missing)
            missing = [c for c in missing if c not in keys]
        if missing:
            raise TransientError("a customer's data key was destroyed each time one was taken")
        return keys

    async def _live_or_new(
        self, conn: AsyncConnection, wanted: list[str]
    ) -> dict[str, DataKey | KeyUnavailable]:
        """``keys_for``'s one try: a new key for each of ``wanted`` (sorted) without a live
        one, then the live keys read; a customer forgotten in between is left out."""
        fresh = {c: (uuid.uuid4(), secrets.token_bytes(KEY_BYTES)) for c in wanted}
        await conn.execute(
            text(
                "INSERT INTO customer_keys (key_id, customer_id, wrapped_key, master_key_id)"
                " SELECT *, CAST(:master AS text) FROM unnest("
                "CAST(:ids AS uuid[]), CAST(:customers AS text[]), CAST(:keys AS bytea[]))"
                " ON CONFLICT (customer_id) WHERE shredded_at IS NULL DO NOTHING"
            ),
            {
                "ids": [fresh[c][0] for c in wanted],
                "customers": wanted,
                "keys": [self._wrap(fresh[c][1]) for c in wanted],
                "master": self.current.key_id,
            },
        )
        rows = await conn.execute(
            text(
                "SELECT customer_id, key_id, wrapped_key, master_key_id FROM customer_keys"
                " WHERE customer_id = ANY(:customers) AND shredded_at IS NULL"
            ),
            {"customers": wanted},
        )
        keys: dict[str, DataKey | KeyUnavailable] = {}
        for row in rows:
            try:
                keys[row.customer_id] = DataKey(row.key_id, self._unwrap_row(row))
            except KeyUnavailable as exc:
                log.error("customer %s: %s", row.customer_id, exc)
                keys[row.customer_id] = exc
        return keys

    async def key(self, conn: AsyncConnection, key_id: uuid.UUID) -> DataKey | None:
        """The data key ``key_id`` if it still exists (None once destroyed);
        ``MasterKeyUnavailable`` and ``DataKeyDamaged`` as ``keys_for``."""
        row = (
            await conn.execute(
                text(
                    "SELECT wrapped_key, master_key_id FROM customer_keys"
                    " WHERE key_id = :k AND shredded_at IS NULL"
                ),
                {"k": key_id},
            )
        ).first()
        return None if row is None else DataKey(key_id, self._unwrap_row(row))

    async def rewrap(self, db: Database, batch: int = REWRAP_BATCH) -> Rewrapped:
        """Wrap every live data key not under the master key again with it, ``batch`` keys
        per transaction (their rows locked, so a customer forgotten meanwhile is forgotten
        after, or before and skipped); a key it cannot unwrap is counted (``Rewrapped``) and
        left as it is. One walk over the rows in key order: keys made meanwhile are under
        the master key already."""
        done, unknown, altered = 0, Counter[str](), Counter[str]()
        after = uuid.UUID(int=0)
        while True:
            async with db.engine.begin() as conn:
                rows = (
                    await conn.execute(
                        text(
                            "SELECT key_id, master_key_id, wrapped_key FROM customer_keys"
                            " WHERE shredded_at IS NULL AND master_key_id IS DISTINCT FROM :master"
                            " AND key_id > :after ORDER BY key_id LIMIT :n FOR UPDATE"
                        ),
                        {"master": self.current.key_id, "after": after, "n": batch},
                    )
                ).all()
                again: dict[uuid.UUID, bytes] = {}
                for row in rows:
                    try:
                        again[row.key_id] = self._wrap(self._unwrap_row(row))
                    except MasterKeyUnavailable:
                        unknown[row.master_key_id or "?"] += 1
                    except DataKeyDamaged:
                        altered[row.master_key_id] += 1
                if again:
                    await conn.execute(
                        text(
                            "UPDATE customer_keys AS k SET wrapped_key = v.wrapped, master_key_id = :master"
                            " FROM unnest(CAST(:ids AS uuid[]), CAST(:keys AS bytea[])) AS v(key_id, wrapped)"
                            " WHERE k.key_id = v.key_id"
                        ),
                        {"ids": list(again), "keys": list(again.values()), "master": self.current.key_id},
                    )
                done += len(again)
            if len(rows) < batch:
                return Rewrapped(done, dict(unknown), dict(altered))
            after = rows[-1].key_id


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
