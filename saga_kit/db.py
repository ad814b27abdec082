"""Engine and unit of work.

A ``UnitOfWork`` is one PostgreSQL transaction. Everything a handler does — its state
change, the inbox records of the events it consumed and the events it emits (outbox
rows) — commits together or not at all. It rolls back unless the block exits cleanly.

Writes whose results nobody reads (a batch's saved changes, its outgoing events, the
timeline) are queued with ``write`` and sent together at ``flush``, in one round trip
(psycopg's pipeline mode), just before the commit. Statements whose rows are needed and
that do not depend on each other go together too, with ``read``: one round trip for all
of them. (``BEGIN`` stays a round trip of its own: psycopg syncs after it even in a
pipeline, to know the transaction started.) So a batch pays for a few round trips, not
one per statement: the events emitted in a unit of work go to the outbox in one
statement, and the emit hooks (e.g. the order service's timeline) queue theirs.

``read`` and ``flush`` go to psycopg directly, on the connection SQLAlchemy's pool lent,
and the hot paths use them: the consumer's claims and loads, the payment worker's claim
and record, the order desk's orders (its data keys and cancellations still go through
SQLAlchemy). Measured once against the embedded PostgreSQL
on this project's 2-core machine (2,000 statements each way, one connection, ``SELECT``
of one row by a JSON list of ids): ~220 µs of client CPU per statement through
SQLAlchemy's ``execute``, ~80 µs through psycopg, ~200 µs for three in one pipeline.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from psycopg import pq
from psycopg.rows import namedtuple_row
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from events.envelope import Envelope, EventPayload, P, new_envelope
from saga_kit import outbox, signing, tracing
from saga_kit.headers import Headers

SAGA_LOCK_NAMESPACE = 7_301_003  # arbitrary, constant: first key of per-saga advisory locks


def saga_lock_key(order_id: uuid.UUID) -> int:
    """A signed 32-bit key from the UUID; a collision only serializes two sagas."""
    return (order_id.int & 0xFFFFFFFF) - (1 << 31)


@dataclass(frozen=True)
class Delivery:
    """An event with the Kafka headers it travels with (its trace context among them):
    as consumed, or as emitted and about to be published."""

    envelope: Envelope[Any]
    headers: Headers = ()
    #: the trace context ``headers`` carry, if extracted already: the consumer extracts a
    #: record's once, for its batch span's link, its handling span and its timeline entry
    #: (``trace``)
    context: otel_context.Context | None = None

    def trace(self) -> otel_context.Context:
        """The trace context ``headers`` carry (``saga_kit.tracing.extract``)."""
        return self.context if self.context is not None else tracing.extract(self.headers)


#: Called once per unit of work, with every event it emitted; queues its own writes.
EmitHook = Callable[["UnitOfWork", Sequence[Delivery]], None]


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # no ping per checkout (a round trip each): a connection broken by a database
        # restart fails its statement, SQLAlchemy invalidates the pool, the caller retries
        pool_pre_ping=False,
        pool_timeout=10,
        connect_args={"connect_timeout": 5},
    )


async def discard_if_unusable(conn: AsyncConnection) -> None:
    """Invalidate ``conn`` — close it, so the pool never lends or resets it — if its
    driver connection is lost or still in pipeline mode.

    A pipeline psycopg could not end (the server went away with results due, as when
    PostgreSQL shuts down mid-batch) leaves libpq in pipeline mode, where not even
    ``ROLLBACK`` can be sent: the rollback would raise "cannot exit pipeline mode while
    busy" in place of the failure that stopped the unit, and the pool would log a
    traceback resetting the connection. SQLAlchemy invalidates a connection itself only
    for errors it recognises as a disconnect, and ``_pipeline`` works on the driver's
    connection, beneath it."""
    if conn.invalidated or conn.closed:
        return
    try:
        driver = (await conn.get_raw_connection()).driver_connection
        usable = (
            driver is not None
            and not driver.broken
            and driver.pgconn.pipeline_status == pq.PipelineStatus.OFF
        )
    except Exception:  # a connection that cannot even say its state is not lent again
        usable = False
    if not usable:
        with contextlib.suppress(Exception):  # the caller's failure is the one to raise
            await conn.invalidate()


class Later:
    """A query queued with ``UnitOfWork.read_later``: its rows, once a round trip took it."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow
        self._rows: list[Any] | None = None

    async def rows(self) -> list[Any]:
        """Its rows (named tuples, as ``UnitOfWork.read``'s); if no round trip took it yet,
        one takes it now (with whatever else is queued)."""
        if self._rows is None:
            await self._uow._pipeline(())
        assert self._rows is not None
        return self._rows


class UnitOfWork:
    """One transaction plus the events it will publish once committed."""

    def __init__(
        self,
        conn: AsyncConnection,
        producer: str,
        emit_hooks: Sequence[EmitHook],
        signer: signing.Signer | None = None,
    ) -> None:
        self.conn = conn
        self.producer = producer
        self._signer = signer
        self._emit_hooks = emit_hooks
        #: Domain events emitted so far, in order (written to the outbox at ``flush``).
        self.emitted: list[Envelope[Any]] = []
        self._unflushed: list[Delivery] = []
        self._rows: list[outbox.Row] = []
        self._writes: list[tuple[str, Mapping[str, Any]]] = []
        self._later: list[tuple[str, Mapping[str, Any], Later]] = []
        self.outbox_rows = 0
        self._after_commit: list[Callable[[], None]] = []

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once this unit has committed (never if it rolls back), e.g.
        to wake a worker that acts on what it wrote."""
        self._after_commit.append(callback)

    def write(self, statement: str, params: Mapping[str, Any]) -> None:
        """Queue a statement whose result nobody reads; it is sent at ``flush``, in order.
        The statement uses the driver's placeholders: ``%(name)s``."""
        self._writes.append((statement, params))

    def emit(
        self,
        payload: P,
        *,
        order_id: uuid.UUID,
        causation_id: uuid.UUID | None,
        trace: otel_context.Context | None = None,
        headers: Headers = (),
    ) -> Envelope[P]:
        """Queue ``payload`` for the outbox; it is published only if this unit commits.
        Its ``traceparent`` header is ``trace`` (default: the current span's context), so
        the consumers of the event continue that trace; ``headers`` are added (e.g. a
        ``correlation_id``)."""
        if payload.producer != self.producer:
            raise ValueError(f"{self.producer} may not emit {payload.event_type}")
        envelope = new_envelope(payload, order_id=order_id, causation_id=causation_id)
        row = outbox.row_of(envelope, trace, headers, self._signer)
        self.emitted.append(envelope)
        self._unflushed.append(Delivery(envelope, row.headers))
        self._rows.append(row)
        return envelope

    def reply(
        self,
        payload: EventPayload,
        *,
        to: Envelope[Any],
        headers: Headers = (),
        trace: otel_context.Context | None = None,
    ) -> Envelope[Any]:
        """Emit ``payload`` as the reaction to ``to``: same saga, caused by it (``emit``)."""
        return self.emit(
            payload, order_id=to.order_id, causation_id=to.event_id, trace=trace, headers=headers
        )

    def emit_raw(self, *, topic: str, key: bytes | None, value: bytes, headers: Headers) -> None:
        """Queue bytes that are not a domain event (a dead letter) for publishing."""
        signed = self._signer.headers(topic, key, value) if self._signer else []
        self._rows.append(outbox.Row(uuid.uuid4(), topic, key, value, (*headers, *signed)))

    async def read(self, *queries: tuple[str, Mapping[str, Any]]) -> list[list[Any]]:
        """Run ``queries`` — (statement, parameters): a ``SELECT``, or an ``INSERT`` /
        ``UPDATE … RETURNING`` whose rows are needed — in one round trip, in order, after
        the statements queued so far with ``write``; return each one's rows, as named
        tuples keyed by column name or alias (``row.order_id``; ``sum(q) AS q``).
        Statements use the driver's placeholders (``%(name)s``), as in ``write``.

        Emitted events are not written yet (their outbox rows go at ``flush``): a read
        does not see them. If nothing ran before in this unit, psycopg first sends
        ``BEGIN`` in a round trip of its own. A failing statement raises here (psycopg's
        error, which ``saga_kit.errors.is_transient`` classifies), and the unit of work
        rolls back."""
        return await self._pipeline(queries)

    def read_later(self, statement: str, params: Mapping[str, Any]) -> Later:
        """Queue a query whose rows are needed, but not before the next round trip: it goes
        in that one (``read``'s, or ``flush``'s), after the writes queued before it and
        before that read's own queries; ``Later.rows`` returns its rows. Two steps that do
        not need each other's results share a round trip this way: the consumer's inbox
        claims ride with the reactions' load (``saga_kit.consumer``)."""
        later = Later(self)
        self._later.append((statement, params, later))
        return later

    async def flush(self, *, commit: bool = False) -> None:
        """Send every queued write, the outbox rows (one statement) and the emit hooks'
        writes in one round trip; a failing statement raises here. With ``commit`` (the
        unit's last flush, ``Database.unit_of_work``), ``COMMIT`` goes in the same round
        trip; the connection's own commit then finds no transaction open and sends nothing
        (psycopg), so a transaction that ends with writes queued costs one round trip fewer.
        With nothing queued (a consumer batch that stored dead letters after its flush, or
        wrote nothing) nothing is sent here and the connection commits as usual."""
        rows, self._rows = self._rows, []
        emitted, self._unflushed = self._unflushed, []
        if rows:
            self.write(*outbox.insert_statement(rows))
            if emitted:
                for hook in self._emit_hooks:
                    hook(self, emitted)
            self.outbox_rows += len(rows)
        if self._writes or self._later:
            await self._pipeline((), commit=commit)

    async def _pipeline(
        self, queries: Sequence[tuple[str, Mapping[str, Any]]], *, commit: bool = False
    ) -> list[list[Any]]:
        """One round trip (psycopg's pipeline, straight on the driver's connection): the
        queued writes, the queries queued with ``read_later``, then ``queries``, then
        ``COMMIT`` if asked; the rows of each of ``queries``."""
        writes, self._writes = self._writes, []
        later, self._later = self._later, []
        driver = (await self.conn.get_raw_connection()).driver_connection
        assert driver is not None
        cursors = []
        async with driver.pipeline():
            for statement, params in writes:
                await driver.execute(statement, params)
            for statement, params in [*((s, p) for s, p, _ in later), *queries]:
                cursor = driver.cursor(row_factory=namedtuple_row)
                await cursor.execute(statement, params)
                cursors.append(cursor)
            if commit:
                await driver.execute("COMMIT")
        results = [await cursor.fetchall() for cursor in cursors]
        for (_, _, pending), rows in zip(later, results, strict=False):
            pending._rows = rows
        return results[len(later) :]


class Database:
    """The service's database: hands out units of work and tells the relay about commits."""

    def __init__(
        self,
        engine: AsyncEngine,
        producer: str,
        *,
        emit_hooks: Sequence[EmitHook] = (),
        on_commit: Callable[[], None] | None = None,
        signer: signing.Signer | None = None,
    ) -> None:
        self.engine = engine
        self.producer = producer
        #: Signs everything this service publishes (None: unsigned, development only).
        self.signer = signer
        self._emit_hooks = tuple(emit_hooks)
        self._on_commit = on_commit

    def set_on_commit(self, callback: Callable[[], None]) -> None:
        self._on_commit = callback

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[UnitOfWork]:
        """Commit on clean exit (after flushing the outbox), roll back on any exception."""
        async with self.engine.connect() as conn:
            async with conn.begin():
                uow = UnitOfWork(conn, self.producer, self._emit_hooks, self.signer)
                try:
                    yield uow
                    await uow.flush(commit=True)
                except BaseException:
                    await discard_if_unusable(conn)
                    raise
            if uow.outbox_rows and self._on_commit is not None:
                self._on_commit()
            for callback in uow._after_commit:
                callback()

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
