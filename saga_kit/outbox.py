"""Transactional outbox: events are rows written in the handler's transaction; a relay
publishes them afterwards.

Contract of the relay:

* Publishes rows in ``id`` order with ``acks=all`` and marks them sent only after the
  broker acknowledged every one of them. A crash between publish and mark re-publishes
  the rows on restart (at-least-once); consumers deduplicate by ``event_id``.
* One active relay per database (an advisory lock), so per-order ordering holds even
  with several instances of a service.
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
from collections.abc import Awaitable
from typing import Any

from aiokafka import AIOKafkaProducer
from opentelemetry import trace
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


async def add(conn: AsyncConnection, envelope: Envelope[Any]) -> None:
    """Queue a domain event on its producer's topic, keyed by ``order_id``."""
    await add_raw(
        conn,
        event_id=envelope.event_id,
        topic=TOPIC_OF_PRODUCER[envelope.producer],
        key=str(envelope.order_id).encode(),
        value=encode(envelope),
        headers=tracing.inject(envelope_headers(envelope)),
    )


async def add_raw(
    conn: AsyncConnection,
    *,
    event_id: uuid.UUID,
    topic: str,
    key: bytes | None,
    value: bytes,
    headers: Headers,
) -> None:
    header_keys, header_values = kafka_headers.to_columns(headers)
    await conn.execute(
        text(
            "INSERT INTO outbox (event_id, topic, key, value, header_keys, header_values)"
            " VALUES (:event_id, :topic, :key, :value, CAST(:hk AS BYTEA[]), CAST(:hv AS BYTEA[]))"
        ),
        {
            "event_id": event_id,
            "topic": topic,
            "key": key,
            "value": value,
            "hk": header_keys,
            "hv": header_values,
        },
    )


class OutboxRelay:
    """Publishes unsent outbox rows; see the module docstring for the contract."""

    def __init__(
        self,
        engine: AsyncEngine,
        producer: AIOKafkaProducer,
        *,
        batch_size: int = 500,
        poll_interval: float = 0.5,
        fault: str | None = None,
    ) -> None:
        self._engine = engine
        self._producer = producer
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._fault = fault
        self._wakeup = asyncio.Event()
        self.published = 0
        #: (topic, event_type) → rows published by this process; event_type "<raw>" for
        #: rows that are not domain events (dead letters).
        self.published_by_type: dict[tuple[str, str], int] = {}
        self.healthy = True

    def wake(self) -> None:
        self._wakeup.set()

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                sent = await self.publish_batch()
                self.healthy = True
                backoff = 0.1
            except Exception as exc:
                if not is_transient(exc) and not is_kafka_error(exc):
                    raise
                self.healthy = False
                log.warning("outbox relay: %s; retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if sent < self._batch_size:
                await self._wait_for_work()

    async def _wait_for_work(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), self._poll_interval)
        self._wakeup.clear()

    async def publish_batch(self) -> int:
        """Publish up to one batch of unsent rows; return how many were published."""
        async with self._engine.begin() as conn:
            locked = await conn.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _RELAY_LOCK_KEY})
            if not locked:
                return 0
            rows = (
                await conn.execute(
                    text(
                        "SELECT id, topic, key, value, header_keys, header_values FROM outbox"
                        " WHERE sent_at IS NULL ORDER BY id LIMIT :n"
                    ),
                    {"n": self._batch_size},
                )
            ).all()
            if not rows:
                return 0
            await self._maybe_delay()
            self._inject("relay.before_publish")
            futures: list[Awaitable[Any]] = []
            spans = []
            for row in rows:
                headers = kafka_headers.from_columns(row.header_keys, row.header_values)
                span = tracing.start_span(
                    f"publish {row.topic}",
                    kind=SpanKind.PRODUCER,
                    parent=tracing.extract(headers),
                    attributes={"messaging.system": "kafka", "messaging.destination.name": row.topic},
                )
                with trace.use_span(span, end_on_exit=False):
                    headers = tracing.inject(headers)  # consumers continue from this span
                spans.append(span)
                futures.append(
                    await self._producer.send(
                        row.topic, value=bytes(row.value), key=_bytes(row.key), headers=headers
                    )
                )
            try:
                await asyncio.gather(*futures)
            finally:
                for span in spans:
                    span.end()
            self._inject("relay.after_publish")
            await conn.execute(
                text("UPDATE outbox SET sent_at = now() WHERE id = ANY(:ids)"),
                {"ids": [row.id for row in rows]},
            )
        self.published += len(rows)
        for row in rows:
            stored = kafka_headers.from_columns(row.header_keys, row.header_values)
            event_type = kafka_headers.text(stored, "event_type") or "<raw>"
            key = (row.topic, event_type)
            self.published_by_type[key] = self.published_by_type.get(key, 0) + 1
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


def _bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)
