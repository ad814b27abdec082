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
  connection goes (its process died, or the database restarted). A process that is
  frozen (stopped, a paused VM) keeps its connection and its lock: a standby ends that
  session (``pg_terminate_backend``) once it has been idle ``lease_seconds`` — the active
  relay uses it every poll, and no send outlasts the producer's own timeouts — and takes
  over (an attack trial: a frozen instance held its service's events back for 1,000 s
  while the standby said all was well). The frozen one, woken, finds its session gone
  and stands by; what it was sending is sent twice at most, and duplicates are dropped
  by the consumers' inbox. Within a service, the
  events of one order are written by transactions serialized on the saga's lock, so
  their ``id`` order is their commit order and one relay keeps them in order per key.
* Woken immediately after a commit that emitted events, and polls as a fallback so rows
  left by a crash are published after restart.
* A broker whose log is not the one the rows were published to — another cluster, or the
  embedded Tansu started again, empty — gets them again (``on_broker``, at start).
* A broker whose ACLs refuse this service's user a topic (``saga_kit.kafka_acls``): the
  rows wait, the relay says so (ERROR, and readiness) and retries — an operator may grant
  it while the service runs. A refused batch leaves an idempotent producer's sequence
  numbers out of step with the broker's (aiokafka does not bump its epoch as the Java
  client does), so the relay replaces its producer (``new_producer``) before trying again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError
from opentelemetry import context as otel_context
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events.codec import encode
from events.envelope import Envelope
from events.topics import DOMAIN_TOPICS, TOPIC_OF_PRODUCER, is_dead_letter_topic
from events.values import printable
from saga_kit import headers as kafka_headers
from saga_kit import sql, tracing
from saga_kit.errors import described, is_kafka_authorization_error, is_transient, is_transient_kafka_error
from saga_kit.fault_injection import crash_at
from saga_kit.headers import Headers
from saga_kit.kafka import is_producer_state_lost
from saga_kit.labels import event_type_label
from saga_kit.retry import RetryPolicy
from saga_kit.signing import Signer

log = logging.getLogger(__name__)

_RELAY_LOCK_KEY = 7_301_002  # arbitrary, constant: "outbox relay" advisory lock

#: Seconds the active relay's session may stay idle before a standby ends it (its process
#: is taken to be frozen): well past the poll interval, and past the ~90 s a batch may
#: wait for acknowledgements from a broker that takes connections but never answers.
RELAY_LEASE_SECONDS = 120.0

#: One round trip of a relay that does not hold the lock: try to take it, and end the
#: session of a holder idle past the lease (:k the lock's key, :lease seconds). A lock on
#: one bigint key is classid 0, objid the key, objsubid 1 in ``pg_locks``.
_LEAD_SQL = (
    "SELECT pg_try_advisory_lock(:k) AS got,"
    " (SELECT count(*) FILTER (WHERE pg_terminate_backend(a.pid)) FROM pg_locks l"
    "  JOIN pg_stat_activity a ON a.pid = l.pid"
    "  WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objid = :k"
    "  AND l.objsubid = 1 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    "  AND a.pid <> pg_backend_pid() AND a.state = 'idle'"
    "  AND a.state_change < clock_timestamp() - make_interval(secs => :lease)) AS fenced"
)


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


def row_of(
    envelope: Envelope[Any],
    trace: otel_context.Context | None = None,
    extra: Headers = (),
    signer: Signer | None = None,
) -> Row:
    """A domain event on its producer's topic, keyed by ``order_id``, carrying the trace
    context ``trace`` (default: the current one) as W3C ``traceparent``, ``extra``, and the
    producer's signature (``saga_kit.signing``) when it has a key."""
    topic, key, value = (
        TOPIC_OF_PRODUCER[envelope.producer],
        str(envelope.order_id).encode(),
        encode(envelope),
    )
    headers = tracing.inject([*envelope_headers(envelope), *extra], trace)
    if signer is not None:
        headers += signer.headers(topic, key, value)
    return Row(envelope.event_id, topic, key, value, tuple(headers))


def insert_statement(rows: Sequence[Row]) -> tuple[str, dict[str, str]]:
    """The statement inserting ``rows`` in order (``id`` follows the emit order), for
    ``UnitOfWork.write``."""
    return (
        "INSERT INTO outbox (event_id, topic, key, value, headers)"
        " SELECT e, t, decode(k, 'base64'), decode(v, 'base64'), decode(h, 'base64')"
        " FROM ROWS FROM (json_to_recordset(CAST(%(rows)s AS json))"
        "   AS (e uuid, t text, k text, v text, h text)) WITH ORDINALITY AS r(e, t, k, v, h, n)"
        " ORDER BY n",
        {
            "rows": sql.rows(
                {
                    "e": r.event_id,
                    "t": r.topic,
                    "k": r.key,
                    "v": r.value,
                    "h": kafka_headers.to_blob(r.headers),
                }
                for r in rows
            )
        },
    )


async def on_broker(engine: AsyncEngine, cluster: str) -> int:
    """Record that this service publishes to broker cluster ``cluster`` (its id:
    ``saga_kit.kafka.cluster_id``); if it published to another before, mark every sent
    domain event it still keeps unsent, so that the relay publishes them again, oldest
    first, before anything newer. Returns how many (0: the same cluster, or the first).

    The log those events went to is not the one this service's consumers read now: the
    embedded Tansu keeps its log in memory and every start is a new, empty one, and a
    deployment may move to a new cluster. An event sent before, and lost with the log
    before a consumer took it, would otherwise never arrive — a saga stuck for good (an
    attack trial: a reservation held after ``OrderApproved`` was lost so). Consumers
    drop what they had already processed (their inbox), so publishing again is harmless;
    the sent rows still kept are those of the last ``<SVC>_OUTBOX_RETENTION_SECONDS`` (1 hour;
    older ones are pruned). Dead letters' copies are not published again: the
    ``dead_letters`` table is their record. Concurrent starts serialize on the row."""
    async with engine.begin() as conn:
        known = await conn.scalar(text("SELECT cluster_id FROM outbox_broker FOR UPDATE"))
        if known is None:
            await conn.execute(
                text("INSERT INTO outbox_broker (cluster_id) VALUES (:c) ON CONFLICT (one_row) DO NOTHING"),
                {"c": cluster},
            )
            return 0
        if known == cluster:
            return 0
        again = await conn.execute(
            text("UPDATE outbox SET sent_at = NULL WHERE sent_at IS NOT NULL AND topic = ANY(:topics)"),
            {"topics": list(DOMAIN_TOPICS)},
        )
        await conn.execute(text("UPDATE outbox_broker SET cluster_id = :c, since = now()"), {"c": cluster})
        return int(again.rowcount)


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
        ack_warning_seconds: float = 10.0,
        lease_seconds: float = RELAY_LEASE_SECONDS,
        new_producer: Callable[[], AIOKafkaProducer] | None = None,
    ) -> None:
        self._engine = engine
        self._lease_seconds = lease_seconds
        #: How long a batch may wait for the broker's acknowledgements before the relay
        #: says so (once per batch, then waits on: the producer retries until its own
        #: timeouts, ~90 s against a broker that takes connections but never answers).
        self._ack_warning_seconds = ack_warning_seconds
        #: When the batch the relay last warned about was sent (None: no warning stands).
        self._unacknowledged_since: float | None = None
        self._producer = producer
        #: Makes an unstarted producer like the first; None: the relay keeps its one.
        self._new_producer = new_producer
        #: The producer sent a batch the broker's ACLs refused: replace it before the next.
        self._renew_producer = False
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._retry = retry or RetryPolicy()
        self._fault = fault
        self._wakeup = asyncio.Event()
        self._lock_conn: AsyncConnection | None = None
        self.published = 0
        #: (topic, event_type label) → rows published by this process: the row's
        #: ``event_type`` header as ``saga_kit.labels.event_type_label`` bounds it — a dead
        #: letter's copy carries the header its record came with, whatever it said.
        self.published_by_type: Counter[tuple[str, str]] = Counter()
        self.healthy = True
        #: What the relay is retrying, in a sentence (None while healthy).
        self.failure: str | None = None
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
                self.healthy, self.failure = True, None
                if sent < self._batch_size:
                    await self._wait_for_work()
        finally:
            await self._release()

    def _unhealthy(self, exc: BaseException) -> None:
        self.healthy, self.failure = False, described(exc)
        if is_kafka_authorization_error(exc):
            log.error(
                "outbox relay: the broker refuses this service's Kafka user (its ACLs: %s); the events"
                " wait in the outbox until it is granted what 'sagactl kafka-acls' lists; retrying",
                exc,
            )
            return
        log.warning("outbox relay: %s; retrying", exc)

    @property
    def producer(self) -> AIOKafkaProducer:
        """The producer the relay publishes with now (it may replace it: module doc)."""
        return self._producer

    async def _step(self) -> int:
        if self._renew_producer and self._new_producer is not None:
            await self._replace_producer(self._new_producer)
        if not await self._lead():
            return 0
        try:
            return await self.publish_batch()
        except BaseException as exc:
            await self._release()  # the lock connection may be the broken part
            self._renew_producer = is_kafka_authorization_error(exc)
            raise

    async def _replace_producer(self, new_producer: Callable[[], AIOKafkaProducer]) -> None:
        """Start a new producer (a new producer id: sequence numbers from zero) and stop the
        old one; if the new one cannot start, the old one stays and this raises."""
        fresh = new_producer()
        try:
            await fresh.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await fresh.stop()
            raise
        old, self._producer, self._renew_producer = self._producer, fresh, False
        with contextlib.suppress(Exception):
            await asyncio.wait_for(old.stop(), 10)
        log.info("outbox relay: a new producer replaces the one whose batch the broker refused")

    async def _lead(self) -> bool:
        """Hold the relay lock on a connection of our own (autocommit: the relay's reads
        and writes ride on it too); False while another holds it — and if that one's
        session has been idle past the lease, end it: the next try takes the lock."""
        if self._lock_conn is not None:
            return True
        conn = await self._engine.connect()
        try:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            row = (
                await conn.execute(text(_LEAD_SQL), {"k": _RELAY_LOCK_KEY, "lease": self._lease_seconds})
            ).one()
        except BaseException:
            await conn.close()
            raise
        if not row.got:
            await conn.close()
            self.active = False
            if row.fenced:
                log.warning(
                    "outbox relay: the active relay's session was idle over %g s (its process"
                    " frozen?); ended it, taking over",
                    self._lease_seconds,
                )
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

    async def _cycle(self, sent: Sequence[int]) -> list[Any]:
        """Mark ``sent`` rows sent and read the next unsent ones, in one round trip."""
        assert self._lock_conn is not None
        driver = (await self._lock_conn.get_raw_connection()).driver_connection
        assert driver is not None
        async with driver.pipeline():
            if sent:
                await driver.execute(
                    "UPDATE outbox SET sent_at = now() WHERE id = ANY(%(ids)s)", {"ids": list(sent)}
                )
            cursor = await driver.execute(
                "SELECT id, topic, key, value, headers, header_keys, header_values FROM outbox"
                " WHERE sent_at IS NULL ORDER BY id LIMIT %(n)s",
                {"n": self._batch_size},
            )
        return list(await cursor.fetchall())

    async def _acknowledged(self, futures: Sequence[asyncio.Future[Any]]) -> None:
        """Wait for every acknowledgement (the first failure raises); past
        ``ack_warning_seconds``, log once that the broker has not answered yet, and once
        a later batch is acknowledged — this one, or one sent again after the producer
        gave up on it — that the broker answers again."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        _, pending = await asyncio.wait(futures, timeout=self._ack_warning_seconds)
        if pending:
            log.warning(
                "outbox relay: %d of %d events sent %.0f s ago not acknowledged by the broker"
                " yet; still waiting (is the broker up and answering?)",
                len(pending),
                len(futures),
                loop.time() - started,
            )
            if self._unacknowledged_since is None:
                self._unacknowledged_since = started
        await asyncio.gather(*futures)
        if self._unacknowledged_since is not None:
            log.info(
                "outbox relay: the broker acknowledged them after %.0f s",
                loop.time() - self._unacknowledged_since,
            )
            self._unacknowledged_since = None

    async def publish_batch(self) -> int:
        """Publish unsent rows, batch after batch, marking each batch sent with the read
        of the next; return how many were published (0: there were none)."""
        published = 0
        sent: list[int] = []
        while True:
            rows = await self._cycle(sent)
            if not rows:
                return published
            await self._maybe_delay()
            crash_at(self._fault, "relay.before_publish")
            await self._send(rows)
            crash_at(self._fault, "relay.after_publish")
            sent = [row[0] for row in rows]
            published += len(rows)
            if len(rows) < self._batch_size and not self._wakeup.is_set():
                await self._cycle(sent)  # mark them now: nothing more is waiting
                return published

    async def _send(self, rows: Sequence[Any]) -> None:
        """Send every row (the producer batches them) and wait for every acknowledgement."""
        futures = []
        counts: list[tuple[str, str]] = []
        for _, topic, key, value, blob, keys, values in rows:
            headers = (
                kafka_headers.from_blob(bytes(blob))
                if blob is not None
                else kafka_headers.from_columns(keys, values)
            )
            counts.append((topic, event_type_label(kafka_headers.text(headers, "event_type"))))
            if is_dead_letter_topic(topic):
                futures.append(await self._send_copy(topic, _bytes(key), bytes(value), headers))
            else:
                futures.append(
                    await self._producer.send(topic, value=bytes(value), key=_bytes(key), headers=headers)
                )
        await self._acknowledged(futures)
        self.published += len(rows)
        self.published_by_type.update(counts)

    async def _send_copy(
        self, topic: str, key: bytes | None, value: bytes, headers: Headers
    ) -> asyncio.Future[Any]:
        """Send a dead letter's copy; one the producer or the broker refuses for its size
        is sent again as its ``dlq.*`` headers alone (``_less``). The consumer sizes each
        copy to fit (``saga_kit.consumer``), but a broker whose ``message.max.bytes`` is
        lower refuses it all the same, and a row that can never be sent stopped the relay,
        then the service, at every restart, every event behind it waiting (an attack
        trial's record, before the copies were sized). The dead letter's row keeps every
        byte. Any other row the broker refuses for its size is a bug here, and stops it."""
        try:
            sent = await self._producer.send(topic, value=value, key=key, headers=headers)
        except MessageSizeTooLargeError as exc:
            lesser: asyncio.Future[Any] = await self._producer.send(topic, **_less(value, headers, exc))
            return lesser

        async def acknowledged() -> Any:
            try:
                return await sent
            except MessageSizeTooLargeError as exc:
                return await (await self._producer.send(topic, **_less(value, headers, exc)))

        return asyncio.ensure_future(acknowledged())

    async def _maybe_delay(self) -> None:
        """Fault injection ``relay.delay=<seconds>``: hold each batch back a random time up to
        that long, as a slow network or an overloaded broker would (chaos runs)."""
        if self._fault and self._fault.startswith("relay.delay="):
            await asyncio.sleep(random.uniform(0, float(self._fault.partition("=")[2])))


def _relay_retries(exc: BaseException) -> bool:
    """Retry database and broker trouble, and the broker's ACLs refusing a topic (an
    operator may grant it while the service runs; until then the rows wait, and readiness
    says the relay is failing), but not a producer whose idempotence state the broker lost
    (``saga_kit.kafka.is_producer_state_lost``): it would fail forever. The relay then ends,
    which takes the service down for its supervisor to restart it with a new producer; the
    rows it had not marked sent are published again (§4.1)."""
    if is_producer_state_lost(exc):
        log.error("outbox relay: the producer cannot continue (%r); stopping the service", exc)
        return False
    return is_transient(exc) or is_transient_kafka_error(exc) or is_kafka_authorization_error(exc)


def _less(value: bytes, headers: Headers, refused: Exception) -> dict[str, Any]:
    """A dead letter's copy refused for its size, as ``send`` takes it again: no key, no
    body, and of its headers only those the consumer added (``DEAD_LETTER_HEADERS``, the
    last of each name: the record's own came first and may use the same names), each
    value cut to 2 KiB, with ``dlq.copy_refused`` saying why and where the rest is. It is
    unsigned: the copy's signature covered what it leaves out."""
    why = (
        f"{printable(str(refused), 300)}; its body ({len(value)} bytes), key and other"
        " headers are in the dead letter's row"
    )
    last = {k: v for k, v in headers if k in kafka_headers.DEAD_LETTER_HEADERS}
    kept = [(k, None if v is None else v[:2048]) for k, v in last.items()]
    return {"value": b"", "key": None, "headers": [*kept, ("dlq.copy_refused", why.encode())]}


def _bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)
