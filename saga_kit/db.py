"""Engine and unit of work.

A ``UnitOfWork`` is one PostgreSQL transaction. Everything a handler does — its state
change, the inbox record of the event it consumed and the events it emits (outbox rows)
— commits together or not at all. It rolls back unless the block exits cleanly.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from opentelemetry.trace import SpanKind
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from events.envelope import Envelope, EventPayload, P, new_envelope
from saga_kit import outbox, tracing
from saga_kit.headers import Headers

_SAGA_LOCK_NAMESPACE = 7_301_003  # arbitrary, constant: first key of per-saga advisory locks


def _int32(order_id: uuid.UUID) -> int:
    """A signed 32-bit key from the UUID; a collision only serializes two sagas."""
    return (order_id.int & 0xFFFFFFFF) - (1 << 31)


#: Called inside the transaction for every event the unit of work emits.
EmitHook = Callable[[AsyncConnection, Envelope[Any]], Awaitable[None]]


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_timeout=10,
        connect_args={"connect_timeout": 5},
    )


class UnitOfWork:
    """One transaction plus the events it will publish once committed."""

    def __init__(self, conn: AsyncConnection, producer: str, emit_hooks: Sequence[EmitHook]) -> None:
        self.conn = conn
        self.producer = producer
        self._emit_hooks = emit_hooks
        self.emitted: list[Envelope[Any]] = []
        self.outbox_rows = 0

    async def emit(self, payload: P, *, order_id: uuid.UUID, causation_id: uuid.UUID | None) -> Envelope[P]:
        """Write ``payload`` to the outbox; it is published only if this unit commits."""
        if payload.producer != self.producer:
            raise ValueError(f"{self.producer} may not emit {payload.event_type}")
        envelope = new_envelope(payload, order_id=order_id, causation_id=causation_id)
        with tracing.span(
            f"emit {envelope.event_type}",
            kind=SpanKind.PRODUCER,
            attributes={"saga.order_id": str(order_id), "saga.event_id": str(envelope.event_id)},
        ):
            await outbox.add(self.conn, envelope)  # stores this span's context with the row
            for hook in self._emit_hooks:
                await hook(self.conn, envelope)
        self.emitted.append(envelope)
        self.outbox_rows += 1
        return envelope

    async def emit_raw(self, *, topic: str, key: bytes | None, value: bytes, headers: Headers) -> None:
        """Queue bytes that are not a domain event (a dead letter) for publishing."""
        await outbox.add_raw(
            self.conn, event_id=uuid.uuid4(), topic=topic, key=key, value=value, headers=headers
        )
        self.outbox_rows += 1

    async def lock_saga(self, order_id: uuid.UUID) -> None:
        """Serialize this transaction with every other one of the same saga in this
        database (a transaction-scoped advisory lock on the order id). The consumer takes
        it before any handler runs, so events of one order arriving from different topics
        are applied one after the other, never interleaved."""
        await self.conn.execute(
            text("SELECT pg_advisory_xact_lock(:ns, :k)"),
            {"ns": _SAGA_LOCK_NAMESPACE, "k": _int32(order_id)},
        )

    async def reply(self, payload: EventPayload, *, to: Envelope[Any]) -> Envelope[Any]:
        """Emit ``payload`` as the reaction to ``to``: same saga, caused by it."""
        return await self.emit(payload, order_id=to.order_id, causation_id=to.event_id)


class Database:
    """The service's database: hands out units of work and tells the relay about commits."""

    def __init__(
        self,
        engine: AsyncEngine,
        producer: str,
        *,
        emit_hooks: Sequence[EmitHook] = (),
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.producer = producer
        self._emit_hooks = tuple(emit_hooks)
        self._on_commit = on_commit

    def set_on_commit(self, callback: Callable[[], None]) -> None:
        self._on_commit = callback

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[UnitOfWork]:
        """Commit on clean exit, roll back on any exception."""
        async with self.engine.connect() as conn:
            async with conn.begin():
                uow = UnitOfWork(conn, self.producer, self._emit_hooks)
                yield uow
            if uow.outbox_rows and self._on_commit is not None:
                self._on_commit()

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
