"""The consumer loop shared by every service.

``MessageProcessor.process`` handles one Kafka record and is the whole contract. It
returns only once the record is *accounted for* — handled, ignored, a duplicate, or
dead-lettered with a reason — and only then does the caller ack it:

1. Decode with the shared codec. Invalid bytes → dead letter (row + dead-letter topic,
   with reason, source topic, partition and offset), then return: the partition moves on.
2. Events with no handler in this service are skipped.
3. In one unit of work: take the saga's lock (events of one order from different topics
   never interleave), claim the event in the inbox (a duplicate is a no-op), run the
   handler, commit. Only after ``process`` returns does the caller (a faust agent) ack
   the record, so the offset is committed after the transaction.
4. Transient failures (database or broker away) are retried with capped exponential
   backoff, forever: an event is never skipped because a dependency is down.
5. Any other exception from a handler is a bug or a poison event: it is dead-lettered
   with the exception as the reason, so one bad event never halts the partition; the
   dead letter keeps the original bytes and headers for replay.
6. An unexpected error in the pipeline itself (not in a handler: storing the dead letter,
   reading the headers …) is never acked past: ``process`` retries the record with
   backoff until it goes through, ``stats.stuck`` names the record and the error (so
   ``/health/ready`` answers 503 with it), and consumption of that stream waits. A fixed
   build, once deployed, gets the record again from the last committed offset.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import SpanKind
from sqlalchemy import text

from events.codec import InvalidEvent, decode
from events.envelope import Envelope
from events.topics import dead_letter_topic
from events.values import printable
from saga_kit import headers as kafka_headers
from saga_kit import inbox, logs, tracing
from saga_kit.db import Database, UnitOfWork
from saga_kit.errors import is_transient
from saga_kit.headers import Headers
from saga_kit.histogram import Histogram

log = logging.getLogger(__name__)

Handler = Callable[[UnitOfWork, Envelope[Any]], Awaitable[None]]


@dataclass(frozen=True)
class Record:
    """A Kafka record, independent of the client library that fetched it. Any field
    may be anything Kafka allows: no key, no value (a tombstone), header values that are
    null or not text."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()

    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


class Outcome(enum.Enum):
    HANDLED = "handled"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    DEAD_LETTERED = "dead_lettered"


@dataclass(frozen=True)
class Attempt:
    """What processing one record came to; ``reason`` is set when it must be dead-lettered."""

    event_type: str
    outcome: Outcome
    reason: str | None = None


@dataclass(frozen=True)
class Subscription:
    """What a service consumes: topics, and one handler per event type it reacts to.

    ``observer`` (optional) runs first, in the same transaction, for every event on the
    subscribed topics — the order service uses it to keep the saga timeline.
    """

    topics: tuple[str, ...]
    handlers: Mapping[str, Handler]
    observer: Handler | None = None


@dataclass
class ConsumerStats:
    #: (event_type or "<invalid>", outcome) → count, exported on /metrics.
    outcomes: dict[tuple[str, str], int] = field(default_factory=dict)
    #: event_type → seconds spent in the handler's transaction (inbox, handler, commit).
    latency: dict[str, Histogram] = field(default_factory=dict)
    retrying: bool = False
    #: (topic, partition) → the record that cannot get through the pipeline itself and
    #: the error (module doc, 6); empty when everything flows.
    stuck: dict[tuple[str, int], str] = field(default_factory=dict)
    #: (topic, partition) → the next offset to process (last processed + 1).
    positions: dict[tuple[str, int], int] = field(default_factory=dict)

    def count(self, event_type: str, outcome: Outcome) -> None:
        key = (event_type, outcome.value)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1

    def observe(self, event_type: str, seconds: float) -> None:
        self.latency.setdefault(event_type, Histogram()).observe(seconds)


class MessageProcessor:
    def __init__(
        self,
        service: str,
        db: Database,
        subscription: Subscription,
        *,
        max_backoff: float = 5.0,
        fault: str | None = None,
    ) -> None:
        self.service = service
        self._db = db
        self._sub = subscription
        self._max_backoff = max_backoff
        #: Fault injection (tests): ``consumer.pipeline_error`` makes every record fail
        #: inside the pipeline, as a bug in it would.
        self._fault = fault
        self.stats = ConsumerStats()

    async def process(self, record: Record) -> Outcome:
        """Handle one record, or dead-letter it; return only when it is accounted for
        (module doc, 6: an error of the pipeline itself is retried, never skipped)."""
        delay = 0.1
        while True:
            try:
                outcome = await self._process_once(record)
            except Exception as exc:  # the record must not be acked: see module doc, 6
                self.stats.stuck[(record.topic, record.partition)] = (
                    f"{record.where()}: {type(exc).__name__}: {printable(str(exc), 300)}"
                )
                log.exception("pipeline failed on %s; retrying in %.1fs", record.where(), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_backoff)
                continue
            self.stats.stuck.pop((record.topic, record.partition), None)
            return outcome

    async def _process_once(self, record: Record) -> Outcome:
        if self._fault == "consumer.pipeline_error":
            raise RuntimeError("fault injection: consumer.pipeline_error")
        attempt = await self.attempt(record)
        if attempt.outcome is Outcome.DEAD_LETTERED:
            reason = attempt.reason or "unknown"
            await self._retrying(lambda: self._dead_letter(record, reason))
        self.stats.count(attempt.event_type, attempt.outcome)
        self.stats.positions[(record.topic, record.partition)] = record.offset + 1
        return attempt.outcome

    async def attempt(self, record: Record) -> Attempt:
        """Decode and handle ``record`` without dead-lettering it: an outcome of
        DEAD_LETTERED carries the reason instead. Replaying a dead letter uses this.

        Runs in a CONSUMER span that continues the trace of the message's producer."""
        with tracing.span(
            f"handle {record.topic}",
            kind=SpanKind.CONSUMER,
            parent=tracing.extract(record.headers),
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": record.topic,
                "messaging.kafka.destination.partition": record.partition,
                "messaging.kafka.message.offset": record.offset,
            },
        ) as span:
            try:
                envelope = decode(record.value)
            except InvalidEvent as exc:
                span.set_attribute("saga.outcome", Outcome.DEAD_LETTERED.value)
                return Attempt("<invalid>", Outcome.DEAD_LETTERED, exc.reason)
            span.update_name(f"handle {envelope.event_type}")
            span.set_attribute("saga.order_id", str(envelope.order_id))
            span.set_attribute("saga.event_id", str(envelope.event_id))
            with logs.bind(order_id=envelope.order_id, event_type=envelope.event_type):
                started = time.perf_counter()
                attempt = await self._handle(envelope)
                log.info(
                    "%s %s from %s[%d]@%d in %.1f ms",
                    attempt.outcome.value,
                    envelope.event_type,
                    record.topic,
                    record.partition,
                    record.offset,
                    (time.perf_counter() - started) * 1000,
                )
            span.set_attribute("saga.outcome", attempt.outcome.value)
            return attempt

    async def _handle(self, envelope: Envelope[Any]) -> Attempt:
        handler = self._sub.handlers.get(envelope.event_type)
        if handler is None and self._sub.observer is None:
            return Attempt(envelope.event_type, Outcome.IGNORED)

        async def apply() -> Outcome:
            started = time.perf_counter()
            async with self._db.unit_of_work() as uow:
                await uow.lock_saga(envelope.order_id)
                if not await inbox.claim(uow.conn, self.service, envelope):
                    return Outcome.DUPLICATE
                if self._sub.observer is not None:
                    await self._sub.observer(uow, envelope)
                if handler is not None:
                    await handler(uow, envelope)
            self.stats.observe(envelope.event_type, time.perf_counter() - started)
            return Outcome.HANDLED

        try:
            return Attempt(envelope.event_type, await self._retrying(apply))
        except InvalidEvent as exc:
            reason = exc.reason
        except Exception as exc:  # a poison event must not halt the partition: see module doc
            log.exception("handler for %s failed; dead-lettering", envelope.event_type)
            reason = f"handler error: {type(exc).__name__}: {printable(str(exc), 1000)}"
        return Attempt(envelope.event_type, Outcome.DEAD_LETTERED, reason)

    async def _retrying(self, work: Callable[[], Awaitable[Outcome]]) -> Outcome:
        delay = 0.05
        while True:
            try:
                outcome = await work()
                self.stats.retrying = False
                return outcome
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self.stats.retrying = True
                log.warning("transient failure, retrying in %.2fs: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_backoff)

    async def _dead_letter(self, record: Record, reason: str) -> Outcome:
        """Keep the original bytes and headers with the reason, in the table and the
        dead-letter topic."""
        reason = dead_letter_reason(reason)
        log.error("dead letter from %s: %s", record.where(), reason)
        headers = [
            *record.headers,
            ("dlq.reason", reason.encode()),
            ("dlq.source_topic", record.topic.encode()),
            ("dlq.source_partition", str(record.partition).encode()),
            ("dlq.source_offset", str(record.offset).encode()),
            ("dlq.service", self.service.encode()),
        ]
        header_keys, header_values = kafka_headers.to_columns(record.headers)
        async with self._db.unit_of_work() as uow:
            inserted = await uow.conn.scalar(
                text(
                    "INSERT INTO dead_letters (source_topic, source_partition, source_offset,"
                    " key, value, header_keys, header_values, reason)"
                    " VALUES (:t, :p, :o, :k, :v, CAST(:hk AS BYTEA[]), CAST(:hv AS BYTEA[]), :r)"
                    " ON CONFLICT DO NOTHING RETURNING id"
                ),
                {
                    "t": record.topic,
                    "p": record.partition,
                    "o": record.offset,
                    "k": record.key,
                    "v": record.value,
                    "hk": header_keys,
                    "hv": header_values,
                    "r": reason,
                },
            )
            if inserted is not None:
                await uow.emit_raw(
                    topic=dead_letter_topic(self.service),
                    key=record.key,
                    value=record.value or b"",
                    headers=headers,
                )
        return Outcome.DEAD_LETTERED


def dead_letter_reason(reason: str) -> str:
    """A reason as stored and sent: printable and bounded, whatever the error said."""
    return printable(reason, 2000) or "unknown"
