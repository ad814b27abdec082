"""Transactional outbox: events are rows written in the handler's transaction; a relay
publishes them afterwards.

Contract of the relay:

* Publishes rows in ``id`` order with ``acks=all`` and marks them sent only after the
  broker acknowledged every one of them. A crash between publish and mark re-publishes
  the rows on restart (at-least-once); consumers deduplicate by ``event_id``.
* Never holds a database transaction open across a Kafka send: it reads a batch of
  unsent rows, sends them all (the producer batches and compresses them), waits for
  every acknowledgement, then marks the whole batch sent in one statement.
* One active relay per database: the relay that holds a session-level advisory lock on a
  connection of its own publishes; the others stand by and take over when that
  connection goes (its process died, or the database restarted). Within a service, the
  events of one order are written by transactions serialized on the saga's lock, so
  their ``id`` order is their commit order and one relay keeps them in order per key.
* Woken immediately after a commit that emitted events, and polls as a fallback so rows
  left by a crash are published after restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events.codec import encode
from events.envelope import Envelope
from events.topics import TOPIC_OF_PRODUCER
from saga_kit import headers as kafka_headers
from saga_kit import tracing
from saga_kit.errors import is_kafka_error, is_transient
from saga_kit.headers import Headers
from saga_kit.retry import RetryPolicy

log = logging.getLogger(__name__)

_RELAY_LOCK_KEY = 7_301_002  # arbitrary, constant: "outbox relay" advisory lock


def envelope_headers(envelope: Envelope[Any]) -> list[tuple[str, bytes | None]]:
    """Headers that let tools route and filter without decoding the body."""
    return [
        ("event_type", envelope.event_type.encode()),
        ("schema_version", str(envelope.schema_version).encode()),
        ("producer", envelope.producer.encode()),
        ("event_id", str(envelope.event_id).encode()),
    ]


@dataclass(frozen=True)
class Row:
    """An outbox row before it is written."""

    event_id: uuid.UUID
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers


def row_of(envelope: Envelope[Any], trace: otel_context.Context | None = None) -> Row:
    """A domain event on its producer's topic, keyed by ``order_id``, carrying the trace
    context ``trace`` (default: the current one) as W3C ``traceparent``."""
    return Row(
        envelope.event_id,
        TOPIC_OF_PRODUCER[envelope.producer],
        str(envelope.order_id).encode(),
        encode(envelope),
        tuple(tracing.inject(envelope_headers(envelope), trace)),
    )


async def add_many(conn: AsyncConnection, rows: Sequence[Row]) -> None:
    """Insert ``rows`` (in order, so ``id`` follows the emit order) in one round trip."""
    params = []
    for row in rows:
        keys, values = kafka_headers.to_columns(row.headers)
        params.append(
            {"e": row.event_id, "t": row.topic, "k": row.key, "v": row.value, "hk": keys, "hv": values}
        )
    await conn.execute(
        text(
            "INSERT INTO outbox (event_id, topic, key, value, header_keys, header_values)"
            " VALUES (:e, :t, :k, :v, CAST(:hk AS BYTEA[]), CAST(:hv AS BYTEA[]))"
        ),
        params,
    )


class OutboxRelay:
    """Publishes unsent outbox rows; see the module docstring for the contract."""

    def __init__(
        self,
        engine: AsyncEngine,
        producer: AIOKafkaProducer,
        *,
        batch_size: int = 1000,
        poll_interval: float = 0.5,
        retry: RetryPolicy | None = None,
        fault: str | None = None,
    ) -> None:
        self._engine = engine
        self._producer = producer
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._retry = retry or RetryPolicy()
        self._fault = fault
        self._wakeup = asyncio.Event()
        self._lock_conn: AsyncConnection | None = None
        self.published = 0
        #: (topic, event_type) → rows published by this process; event_type "<raw>" for
        #: rows that are not domain events (dead letters).
        self.published_by_type: Counter[tuple[str, str]] = Counter()
        self.healthy = True
        #: True while this instance holds the relay lock of its database.
        self.active = False

    def wake(self) -> None:
        self._wakeup.set()

    async def run(self) -> None:
        """Publish forever; transient failures (database, broker) are retried, anything
        else ends the relay (and the service, which a supervisor restarts)."""
        try:
            while True:
                sent = await self._retry.forever(self._step, _relay_retries, self._unhealthy)
                self.healthy = True
                if sent < self._batch_size:
                    await self._wait_for_work()
        finally:
            await self._release()

    def _unhealthy(self, exc: BaseException) -> None:
        self.healthy = False
        log.warning("outbox relay: %s; retrying", exc)

    async def _step(self) -> int:
        if not await self._lead():
            return 0
        try:
            return await self.publish_batch()
        except BaseException:
            await self._release()  # the lock connection may be the broken part
            raise

    async def _lead(self) -> bool:
        """Hold the relay lock on a connection of our own; False while another holds it."""
        if self._lock_conn is not None:
            return True
        conn = await self._engine.connect()
        try:
            got = await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": _RELAY_LOCK_KEY})
            await conn.commit()  # a session lock outlives the transaction
        except BaseException:
            await conn.close()
            raise
        if not got:
            await conn.close()
            self.active = False
            return False
        self._lock_conn, self.active = conn, True
        log.info("outbox relay active")
        return True

    async def _release(self) -> None:
        conn, self._lock_conn, self.active = self._lock_conn, None, False
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()  # closing the session releases its advisory lock

    async def _wait_for_work(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), self._poll_interval)
        self._wakeup.clear()
        if self._lock_conn is not None:  # idle: make sure we still hold the lock
            try:
                await self._lock_conn.execute(text("SELECT 1"))
                await self._lock_conn.commit()
            except Exception as exc:
                log.warning("outbox relay lost its lock connection: %s", exc)
                await self._release()

    async def publish_batch(self) -> int:
        """Publish up to one batch of unsent rows; return how many were published."""
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT id, topic, key, value, header_keys, header_values FROM outbox"
                        " WHERE sent_at IS NULL ORDER BY id LIMIT :n"
                    ),
                    {"n": self._batch_size},
                )
            ).all()
            await conn.commit()
        if not rows:
            return 0
        await self._maybe_delay()
        self._inject("relay.before_publish")
        with tracing.span(
            "publish outbox batch",
            kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "kafka", "messaging.batch.message_count": len(rows)},
        ):
            futures = []
            published: list[tuple[str, str]] = []
            for row in rows:
                headers = kafka_headers.from_columns(row.header_keys, row.header_values)
                published.append((row.topic, kafka_headers.text(headers, "event_type") or "<raw>"))
                futures.append(
                    await self._producer.send(
                        row.topic, value=bytes(row.value), key=_bytes(row.key), headers=headers
                    )
                )
            await asyncio.gather(*futures)
        self._inject("relay.after_publish")
        async with self._engine.begin() as conn:
            await conn.execute(
                text("UPDATE outbox SET sent_at = now() WHERE id = ANY(:ids)"),
                {"ids": [row.id for row in rows]},
            )
        self.published += len(rows)
        self.published_by_type.update(published)
        return len(rows)

    async def _maybe_delay(self) -> None:
        """Fault injection ``relay.delay=<seconds>``: hold each batch back a random time up to
        that long, as a slow network or an overloaded broker would (chaos runs)."""
        if self._fault and self._fault.startswith("relay.delay="):
            await asyncio.sleep(random.uniform(0, float(self._fault.partition("=")[2])))

    def _inject(self, point: str) -> None:
        """Fault injection: die like a crashed process at ``point`` (tests, chaos)."""
        if self._fault == point:
            log.error("fault injection: SIGKILL at %s", point)
            os.kill(os.getpid(), signal.SIGKILL)


def _relay_retries(exc: BaseException) -> bool:
    return is_transient(exc) or is_kafka_error(exc)


def _bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)
