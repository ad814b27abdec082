"""Step 1: place orders (command → PENDING order + OrderCreated, in one transaction).

Concurrent requests are **group-committed** (``OrderDesk``): while one transaction runs,
new commands queue, and the next transaction places all of them with a few set-based
statements — one commit for many orders, and no added wait when the desk is idle. Each
command still gets its own answer.

An ``Idempotency-Key`` makes a retried request return the order the first one created;
the same key with a different body is refused (409) rather than silently ignored — also
when both arrive in the same batch, or at two instances at once (the key is unique in
the table; the loser of that race reads the winner's order).

A command whose caller has gone — the HTTP answer deadline answered it 503 while the
database held the batch (``saga_kit.http.AnswerDeadline``) — is not placed behind its
back: a batch whose callers have all gone is cancelled (its transaction rolls back), and
one that some callers left is rolled back just before its last round trip and placed
again without them. An attack trial froze PostgreSQL: a POST answered 503 after 8 s was
placed, charged and audited as 202 once the database came back, and a client that
retried without a key would have had two orders. What is left is the last round trip
itself (the writes with ``COMMIT``): a caller that goes while it is under way may be
answered 503 for an order that was placed — retried with the same ``Idempotency-Key``,
it is answered that order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import time
import uuid
from asyncio import FIRST_COMPLETED
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from opentelemetry import context as otel_context

from events import OrderCreated, OrderLine
from events.personal import PersonalData, Sealed
from order_svc.domain import OrderStatus
from order_svc.errors import IdempotencyKeyReused
from saga_kit import audit, deadlines, sql, tracing
from saga_kit.audit import CallAudit
from saga_kit.db import Database, UnitOfWork
from saga_kit.errors import is_transient
from saga_kit.personal_data import KeyStore, KeyUnavailable, seal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    """The command: what a client asked for (HTTP today; any door tomorrow)."""

    customer_id: str
    items: tuple[OrderLine, ...]
    idempotency_key: str | None
    #: How long the saga may stay PENDING before it is cancelled (c4).
    deadline: timedelta
    deadline_requested: bool = False
    #: The caller's trace context: OrderCreated continues that trace.
    trace: otel_context.Context | None = None
    #: W3C traceparent of the caller, kept with the order (cancellations continue it).
    traceparent: str | None = None
    #: The customer's e-mail and shipping address: sealed before anything stores or sends
    #: them (saga_kit.personal_data). Not part of ``request_hash``: a digest of personal
    #: data would outlive forgetting the customer.
    personal: PersonalData | None = None
    #: The caller, for the call's audit entry: appended in the transaction that places the
    #: order (saga_kit.audit); None: the door audits the call itself, or nothing does.
    audit: CallAudit | None = None

    @property
    def stored_key(self) -> str | None:
        """The idempotency key as ``orders.idempotency_key`` keeps it: the customer's own,
        ``http:<length of customer_id>:<customer_id>:<key>`` — another customer's same key
        is another key (one customer cannot learn of, or answer, another's request: IETF
        draft-ietf-httpapi-idempotency-key-header scopes a key to its client), and none can
        take the ``command:<command_id>`` of an order placed from Kafka. None: no key."""
        if self.idempotency_key is None:
            return None
        return stored_idempotency_key(self.customer_id, self.idempotency_key)

    @property
    def request_hash(self) -> str:
        return request_hash(
            self.customer_id, self.items, self.deadline.total_seconds() if self.deadline_requested else None
        )


def stored_idempotency_key(customer_id: str, key: str) -> str:
    """How ``orders.idempotency_key`` keeps a customer's HTTP ``Idempotency-Key``
    (``Placement.stored_key``)."""
    return f"http:{len(customer_id)}:{customer_id}:{key}"


def request_hash(customer_id: str, items: Sequence[OrderLine], deadline_seconds: float | None) -> str:
    """What an idempotency key stands for: the same key with another request is refused.
    HTTP and Kafka requests hash alike."""
    request = {
        "customer_id": customer_id,
        "items": [line.model_dump() for line in items],
        "deadline_seconds": deadline_seconds,
    }
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


def order_created(customer_id: str, items: Sequence[OrderLine], deadline_at: datetime) -> OrderCreated:
    """The event that starts a saga, whichever door the order came through."""
    return OrderCreated(customer_id=customer_id, items=tuple(items), deadline_at=deadline_at)


class Abandoned(Exception):
    """``place_orders`` rolled back because the callers of ``gone`` (indices of its
    commands) went away before its last round trip."""

    def __init__(self, gone: Sequence[int]) -> None:
        super().__init__(f"{len(gone)} caller(s) went away")
        self.gone = frozenset(gone)


class Placed(NamedTuple):
    """A command's order: placed by it, or (``replayed``) by an earlier request under its
    idempotency key, whose order is answered again (``Idempotent-Replayed: true``)."""

    order_id: uuid.UUID
    status: OrderStatus
    replayed: bool = False


async def place_orders(
    db: Database,
    commands: Sequence[Placement],
    keystore: KeyStore | None = None,
    wanted: Callable[[], Sequence[bool]] | None = None,
) -> list[Placed | IdempotencyKeyReused | KeyUnavailable]:
    """Place every command in one transaction; one result per command, in order: the
    order (new, or the one its idempotency key placed before), the 409 to answer, or — a
    command with personal data whose customer's data key cannot be had — its
    ``KeyUnavailable`` (not placed; the others are). Personal data is sealed with its
    customer's data key from ``keystore`` (required when a command has any). ``wanted``,
    asked just before the last round trip (the writes with ``COMMIT``), says per command
    whether its caller still waits; if one does not, the transaction rolls back and
    ``Abandoned`` names them."""
    results: list[Placed | IdempotencyKeyReused | KeyUnavailable | None] = [None] * len(commands)
    async with db.unit_of_work() as uow:
        keys = sorted({c.stored_key for c in commands if c.stored_key})
        known = await _orders_by_key(uow, keys)
        first_of_key: dict[str, int] = {}
        fresh: list[tuple[int, uuid.UUID, datetime]] = []
        now = datetime.now(UTC)
        for i, command in enumerate(commands):
            key = command.stored_key
            if key is not None and (key in known or key in first_of_key):
                continue  # answered from the earlier order below
            if key is not None:
                first_of_key[key] = i
            fresh.append((i, uuid.uuid4(), now + command.deadline))
        personal = [(i, oid) for i, oid, _ in fresh if commands[i].personal is not None]
        sealed: dict[int, Sealed] = {}
        if personal:
            assert keystore is not None, "personal data without a key store"
            data_keys = await keystore.keys_for(uow.conn, [commands[i].customer_id for i, _ in personal])
            for i, oid in personal:
                data, data_key = commands[i].personal, data_keys[commands[i].customer_id]
                assert data is not None
                if isinstance(data_key, KeyUnavailable):  # that customer's order alone is refused
                    results[i] = data_key
                else:
                    sealed[i] = seal(data, data_key, oid)
            fresh = [f for f in fresh if results[f[0]] is None]
        if fresh:
            inserted = await _insert_orders(
                uow, [(commands[i], oid, at, sealed.get(i)) for i, oid, at in fresh]
            )
            for i, order_id, deadline_at in fresh:
                if order_id not in inserted:  # another instance won this key a moment ago
                    continue
                command = commands[i]
                results[i] = Placed(order_id, OrderStatus.PENDING)
                payload = OrderCreated(
                    customer_id=command.customer_id,
                    items=command.items,
                    deadline_at=deadline_at,
                    personal_data=sealed.get(i),
                )
                uow.emit(payload, order_id=order_id, causation_id=None, trace=command.trace)
            lost = [commands[i].stored_key for i, oid, _ in fresh if oid not in inserted]
            known |= await _orders_by_key(uow, sorted(k for k in lost if k))
        for i, command in enumerate(commands):
            if results[i] is not None:
                continue
            key = command.stored_key
            assert key is not None
            if key in known:
                order_id, status, request_hash = known[key]
            else:  # the same key earlier in this batch
                j = first_of_key[key]
                earlier = results[j]
                if isinstance(earlier, KeyUnavailable):  # not placed: this one is not either
                    results[i] = earlier
                    continue
                assert isinstance(earlier, Placed)
                order_id, status, request_hash = earlier.order_id, earlier.status, commands[j].request_hash
            results[i] = (
                Placed(order_id, status, replayed=True)
                if request_hash == command.request_hash
                else IdempotencyKeyReused()
            )
        audit.append(
            uow,
            [
                command.audit.entry(f"/orders/{result[0]}", "202")
                for command, result in zip(commands, results, strict=True)
                if command.audit is not None and isinstance(result, Placed)
            ],
        )
        if wanted is not None and (gone := [i for i, w in enumerate(wanted()) if not w]):
            raise Abandoned(gone)  # rolled back: nothing of this transaction is kept
    return [r for r in results if r is not None]


async def _orders_by_key(
    uow: UnitOfWork, keys: Sequence[str]
) -> dict[str, tuple[uuid.UUID, OrderStatus, str]]:
    if not keys:
        return {}
    (rows,) = await uow.read(
        (
            "SELECT idempotency_key, order_id, status, request_hash"
            f" FROM orders WHERE idempotency_key IN {sql.TEXTS}",
            {"keys": sql.values(keys)},
        )
    )
    return {r.idempotency_key: (r.order_id, OrderStatus(r.status), r.request_hash) for r in rows}


async def _insert_orders(
    uow: UnitOfWork, new: Sequence[tuple[Placement, uuid.UUID, datetime, Sealed | None]]
) -> set[uuid.UUID]:
    """Insert orders and their lines; return the ids inserted (a key taken meanwhile by
    another transaction is skipped). The rows go in the order of their idempotency keys,
    as every lock here is taken: two transactions given the same keys in other orders
    (two instances, one client's burst) wait for each other instead of deadlocking."""
    new = sorted(new, key=lambda n: n[0].stored_key or "")
    (rows,) = await uow.read(
        (
            "INSERT INTO orders"
            " (order_id, customer_id, status, idempotency_key, request_hash, deadline_at, trace_context,"
            " personal_data)"
            " SELECT o, c, 'PENDING', k, h, d, t, p FROM json_to_recordset(CAST(%(rows)s AS json))"
            " AS v(o uuid, c text, k text, h text, d timestamptz, t text, p jsonb)"
            " ON CONFLICT (idempotency_key) DO NOTHING RETURNING order_id",
            {
                "rows": sql.rows(
                    {
                        "o": oid,
                        "c": cmd.customer_id,
                        "k": cmd.stored_key,
                        "h": cmd.request_hash,
                        "d": at,
                        "t": cmd.traceparent,
                        "p": sealed.model_dump(mode="json") if sealed else None,
                    }
                    for cmd, oid, at, sealed in new
                )
            },
        )
    )
    inserted = {r.order_id for r in rows}
    lines = [
        {"o": oid, "n": n, "p": line.product_id, "q": line.quantity}
        for cmd, oid, _, _ in new
        if oid in inserted
        for n, line in enumerate(cmd.items, 1)
    ]
    if lines:
        uow.write(
            (
                "INSERT INTO order_items (order_id, line_no, product_id, quantity)"
                " SELECT o, n, p, q FROM json_to_recordset(CAST(%(rows)s AS json))"
                " AS v(o uuid, n int, p text, q int)"
            ),
            {"rows": sql.rows(lines)},
        )
    return inserted


async def place_order(
    db: Database,
    customer_id: str,
    items: Sequence[OrderLine],
    idempotency_key: str | None,
    deadline: timedelta,
    *,
    deadline_requested: bool = False,
) -> Placed:
    """Place one order in a transaction of its own; raises ``IdempotencyKeyReused``."""
    command = Placement(
        customer_id,
        tuple(items),
        idempotency_key,
        deadline,
        deadline_requested,
        otel_context.get_current(),
        tracing.current_traceparent(),
    )
    (result,) = await place_orders(db, [command])
    if isinstance(result, IdempotencyKeyReused | KeyUnavailable):
        raise result
    return result


@dataclass
class _Waiting:
    command: Placement
    answer: asyncio.Future[Placed] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    since: float = field(default_factory=time.monotonic)


class OrderDesk:
    """Group commit of place-order commands (module doc). ``place`` returns the command's
    own answer; a batch that fails for a reason other than the database being away is
    retried one command per transaction, so one bad command fails alone."""

    def __init__(self, db: Database, max_batch: int = 200, keystore: KeyStore | None = None) -> None:
        self._db = db
        self._keystore = keystore
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Waiting] = asyncio.Queue()
        self._waiting: collections.deque[_Waiting] = collections.deque()  # in arrival order
        self._task: asyncio.Task[None] | None = None

    def queue_delay(self) -> float:
        """Seconds the oldest waiting command has waited (0 when none waits)."""
        waiting = self._waiting
        return time.monotonic() - waiting[0].since if waiting else 0.0

    async def place(self, command: Placement) -> Placed:
        """The order for ``command``; raises ``IdempotencyKeyReused`` or the failure."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="order-desk")
        waiting = _Waiting(command)
        self._waiting.append(waiting)
        self._queue.put_nowait(waiting)
        return await waiting.answer

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            for _ in batch:
                self._waiting.popleft()
            batch = [w for w in batch if not w.answer.done()]  # the client went away
            if batch:
                await self._place(batch)

    async def _place(self, batch: list[_Waiting]) -> None:
        """Place ``batch`` and answer each waiter (module doc: callers that went away)."""
        answers = [w.answer for w in batch]
        work = asyncio.ensure_future(
            place_orders(
                self._db, [w.command for w in batch], self._keystore, lambda: [not a.done() for a in answers]
            )
        )
        try:
            while not work.done():
                pending: list[asyncio.Future[Any]] = [work, *(a for a in answers if not a.done())]
                await asyncio.wait(pending, return_when=FIRST_COMPLETED)
                if not work.done() and all(a.done() for a in answers):
                    deadlines.leave(work)  # nobody waits: rolled back (unless its COMMIT was under way)
                    log.warning(
                        "%d order(s) not placed: their callers went away while the database held them",
                        len(batch),
                    )
                    return
        except BaseException:  # the desk itself stopped
            deadlines.leave(work)
            raise
        try:
            results = work.result()
        except Abandoned as exc:
            live = [w for i, w in enumerate(batch) if i not in exc.gone and not w.answer.done()]
            log.warning("%d order(s) not placed: their callers went away before the commit", len(exc.gone))
            if live:
                await self._place(live)
            return
        except Exception as exc:
            if len(batch) == 1 or is_transient(exc):
                for w in batch:
                    if not w.answer.done():
                        w.answer.set_exception(exc)
                return
            log.warning("a batch of %d orders failed (%s); placing them one by one", len(batch), exc)
            for w in batch:
                await self._place([w])
            return
        for w, result in zip(batch, results, strict=True):
            if w.answer.done():
                continue
            if isinstance(result, IdempotencyKeyReused | KeyUnavailable):
                w.answer.set_exception(result)
            else:
                w.answer.set_result(result)
