"""The consumer pipeline shared by every service: a batch of Kafka records at a time.

``ConsumerPipeline.process_batch`` is the whole contract. It returns only once every
record of the batch is *accounted for* — handled, ignored, a duplicate, or dead-lettered
with a reason — and only then does the caller ack the batch (so offsets advance only
after the batch's transaction committed). The steps, each one job, in order:

1. **route** — the ``event_type`` header says whether this service does anything with
   the record; if not, it is ignored without decoding the body;
2. **verify** — the signature (``saga_kit.signing``), before any byte is decoded: an
   unsigned, forged or tampered record is a dead letter (``bad_signature``);
3. **decode** — the shared codec; bytes that are not a valid event of a known type and
   version become a dead letter with the reason; a valid event signed by a service that
   may not produce its type is one too;
4. **dedupe** — the same event twice in one batch: the later copies are duplicates;
   then the reactions' ``prepare``, if the service has one, with no transaction open:
   what may wait on the network (the order service verifies its commands' tokens);
5. **lock and claim** — the advisory locks of the batch's sagas, in key order (events of
   one order from different topics, batches or instances never interleave; no
   deadlocks), then the inbox claims of every event, in one statement; an event claimed
   before is a duplicate (a redelivery). The statement goes in the round trip of the
   reactions' load, ahead of it: ``BEGIN``, claims with load, writes with ``COMMIT`` —
   three round trips a batch;
6. **apply** — the service's reactions (``saga_kit.reactions``): load, decide each event
   in arrival order, save; an event a decide function refuses is dead-lettered and its
   claim released;
7. **commit** — state, inbox claims, outgoing events (outbox) and dead letters (table and
   dead-letter topic, with the original bytes and headers) in one transaction.

Failures are typed:

* **transient** (database or broker away): the batch is retried with the one retry
  policy (``saga_kit.retry``), forever: an event is never skipped because a dependency
  is down;
* **a failing reaction** (an exception in load, decide, save or the observer): the batch
  is split in two and each half applied in its own transaction, in order, recursively,
  until the one bad event is alone; only it is dead-lettered (reason: the error), the
  rest commit. Such dead letters are capped (``HandlerErrorLimit``, as arroyo's
  ``DlqLimit``): a bug deployed on valid events would otherwise dead-letter the whole
  stream. Past the cap the batch is held like a pipeline error (below) until the fix is
  deployed, or an operator resumes (``POST /consumer/resume``);
* **an error of the pipeline itself** (storing a dead letter, reading the records …):
  nothing is acked — the batch is retried with backoff until it goes through,
  ``stats.stuck`` names its partitions and the error (``/health/ready`` answers 503 with
  it), consumption waits, and a fixed build gets the records again from the last
  committed offset.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.record.default_records import DefaultRecordBatchBuilder
from opentelemetry import context as otel_context
from opentelemetry.trace import Link, SpanKind

from events.codec import InvalidEvent, WrongProducer, coded_reason, decode
from events.envelope import Envelope
from events.topics import dead_letter_topic
from events.values import printable
from saga_kit import headers as kafka_headers
from saga_kit import inbox, signing, tracing
from saga_kit.db import Database, Delivery, UnitOfWork
from saga_kit.errors import is_transient
from saga_kit.fault_injection import crash_at
from saga_kit.headers import Headers
from saga_kit.histogram import Histogram
from saga_kit.labels import INVALID, record_label
from saga_kit.reactions import Reactions
from saga_kit.retry import RetryPolicy
from saga_kit.signing import BadSignature, Verifier
from saga_kit.unreadable import UNREADABLE, held_headers

log = logging.getLogger(__name__)


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


def _sources(records: Sequence[Record], shown: int = 4) -> str:
    """Where a batch came from, for its log line: each partition with its first offset
    (``payment.events[2]@17, orders.commands[5]@3``), the first ``shown`` and a count of
    the rest."""
    first: dict[tuple[str, int], Record] = {}
    for r in records:
        first.setdefault((r.topic, r.partition), r)
    parts = [r.where() for r in list(first.values())[:shown]]
    more = len(first) - shown
    return ", ".join(parts) + (f" and {more} more partitions" if more > 0 else "")


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


#: A record → its envelope, or ``InvalidEvent`` with the reason.
Decoder = Callable[[Record], Envelope[Any]]


@dataclass(frozen=True)
class Subscription:
    """What a service consumes: its topics, what it does with their events, and — for a
    topic that does not carry domain events (``orders.commands``) — how to decode it. Such a
    topic's records come from outside the services: they are not signed, and their trace
    is linked, not continued (``saga_kit.tracing.received``)."""

    topics: tuple[str, ...]
    reactions: Reactions[Any]
    decoders: Mapping[str, Decoder] = field(default_factory=dict)


@dataclass
class ConsumerStats:
    #: (``record_label`` of the record, outcome) → count, exported on /metrics
    #: (the batch's log line names an unknown type as it came).
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: seconds per batch transaction, and events per batch
    batch_seconds: Histogram = field(default_factory=Histogram)
    batch_size: Histogram = field(
        default_factory=lambda: Histogram(buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
    )
    retrying: bool = False
    #: (topic, partition) → the batch that cannot get through the pipeline itself and the
    #: error (module doc); empty when everything flows.
    stuck: dict[tuple[str, int], str] = field(default_factory=dict)
    #: (topic, partition) → the next offset to process (last processed + 1).
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    #: when (``time.monotonic``) the batch being processed reached the pipeline; None
    #: between batches. A batch in flight for long is the pipeline waiting on its own
    #: work — a database that hangs rather than refuses, a lock held elsewhere — which the
    #: progress watch (``saga_kit.progress``) must not take for records lost on the way.
    batch_since: float | None = None

    def batch_age(self, now: float | None = None) -> float:
        """Seconds the batch in flight has been in the pipeline (0.0 between batches);
        ``now`` from ``time.monotonic``."""
        if self.batch_since is None:
            return 0.0
        return max(0.0, (time.monotonic() if now is None else now) - self.batch_since)


class HandlerError(Exception):
    """A reaction failed (not transiently): the batch is split to isolate the event."""


class HandlerErrorLimitReached(Exception):
    """Too many valid events made a reaction fail: hold instead of dead-lettering more."""


@dataclass
class HandlerErrorLimit:
    """How many events a failing reaction may dead-letter before the consumer stops:
    at most ``max_consecutive`` in a row, and at most ``max_ratio`` of the last ``window``
    events once ``min_sample`` have been seen. Decoding failures and refusals are poison
    *messages* and always dead-lettered; this caps failures of the *code* on valid ones."""

    max_consecutive: int = 10
    max_ratio: float = 0.05
    window: int = 1000
    min_sample: int = 100
    consecutive: int = 0
    recent: collections.deque[bool] = field(default_factory=collections.deque)

    def handled(self, n: int) -> None:
        if n:
            self.consecutive = 0
            self._remember([False] * n)

    def admit(self) -> str | None:
        """Record one more failed event and return None, or say why it is one too many."""
        if self.consecutive + 1 > self.max_consecutive:
            return f"{self.consecutive} events in a row made a reaction fail (limit {self.max_consecutive})"
        errors = sum(self.recent) + 1
        seen = len(self.recent) + 1
        if seen >= self.min_sample and errors / seen > self.max_ratio:
            return f"{errors} of the last {seen} events made a reaction fail (limit {self.max_ratio:.0%})"
        self.consecutive += 1
        self._remember([True])
        return None

    def resume(self) -> None:
        """An operator decided: forget the failures counted so far."""
        self.consecutive = 0
        self.recent.clear()

    def _remember(self, outcomes: list[bool]) -> None:
        self.recent.extend(outcomes)
        while len(self.recent) > self.window:
            self.recent.popleft()


@dataclass(eq=False)
class _Item:
    """One record on its way through the pipeline."""

    record: Record
    envelope: Envelope[Any] | None = None
    event_type: str = INVALID
    #: the service whose key signed the record (verified), when signatures are checked
    signer: str | None = None
    #: the trace context its headers carry, extracted once (``saga_kit.db.Delivery.trace``)
    context: otel_context.Context | None = None
    #: Decided before the transaction (ignored, invalid, duplicate in the batch) or after it.
    outcome: Outcome | None = None
    reason: str | None = None


#: Largest body (plus headers) a dead letter's copy on the dead-letter topic carries: a
#: record as large as the broker accepts would not fit once the ``dlq.*`` headers are added,
#: and a copy that can never be sent would hold up the outbox behind it. The table keeps
#: the full bytes either way.
DLQ_COPY_LIMIT = 256 * 1024
#: Characters of the credential headers' names a copy lists (``dlq.credentials_omitted``).
CREDENTIALS_NAMED = 1024
#: A Kafka record with no key, value or header, in bytes (aiokafka's producer's estimate).
_NO_HEADERS = DefaultRecordBatchBuilder.estimate_size_in_bytes(None, None, [])
#: Seconds an ``attempt`` (an operator's replay of a dead letter) retries a transient
#: failure before it gives up: the request then answers 503 instead of waiting on.
ATTEMPT_GIVE_UP_SECONDS = 10.0


def _retrying_an_attempt(exc: BaseException) -> None:
    log.warning("transient failure, retrying an attempt: %s", exc)


def _copy_for_topic(record: Record, reason: str, service: str) -> dict[str, Any]:
    """Key, value and headers of the copy published to the dead-letter topic: the original
    ones with ``dlq.*`` headers, or without the body and headers that do not fit
    (``dlq.value_omitted`` / ``dlq.headers_omitted`` give their sizes). Headers that carry
    a credential (``saga_kit.headers.is_credential``: a command's bearer token) are left
    out and named in ``dlq.credentials_omitted``: whoever reads the topic must not be able
    to act as the sender; the dead letter's row keeps them for its replay. A stand-in's
    ``UNREADABLE`` header is left out: its name is no text a producer can send (a lone
    surrogate: the relay crashed on it), and ``dlq.reason`` says what it said."""
    value, headers = record.value or b"", held_headers(record.headers)
    extra: list[tuple[str, bytes | None]] = []
    # too many or too large, the headers are left out first: none is looked at one by one
    # (half a million took the consumer seconds: a trial)
    if _on_the_wire(headers) > DLQ_COPY_LIMIT // 4:
        header_bytes = sum(len(k.encode("utf-8", "surrogatepass")) + len(v or b"") for k, v in headers)
        extra.append(("dlq.headers_omitted", f"{len(headers)} headers, {header_bytes} bytes".encode()))
        headers = []
    credentials = [k for k, _ in headers if kafka_headers.is_credential(k)]
    if credentials:
        headers = [(k, v) for k, v in headers if not kafka_headers.is_credential(k)]
        # each name once, and a bounded list: thousands of credential headers named in full
        # (they fit: their values are empty) would make the copy as large again
        named = ",".join(dict.fromkeys(credentials))
        if len(named) > CREDENTIALS_NAMED:
            named = f"{named[:CREDENTIALS_NAMED]}… ({len(credentials)} headers)"
        extra.append(("dlq.credentials_omitted", named.encode("utf-8", "surrogatepass")))
    if len(value) > DLQ_COPY_LIMIT:
        extra.append(("dlq.value_omitted", f"{len(value)} bytes".encode()))
        value = b""
    return {
        "key": None if record.key is not None and len(record.key) > DLQ_COPY_LIMIT // 4 else record.key,
        "value": value,
        "headers": [
            *headers,
            *extra,
            ("dlq.reason", reason.encode()),
            ("dlq.source_topic", record.topic.encode()),
            ("dlq.source_partition", str(record.partition).encode()),
            ("dlq.source_offset", str(record.offset).encode()),
            ("dlq.service", service.encode()),
        ],
    }


def _on_the_wire(headers: Sequence[tuple[str, bytes | None]]) -> float:
    """Bytes ``headers`` take in a Kafka record, as aiokafka's producer counts them against
    its ``max_request_size``: names and values, and each header's two length varints
    (infinite if a name cannot be sent). Half a million headers with an empty name and no
    value are 0 bytes of names and values and ~1 MiB on the wire: their dead letter's copy
    exceeded the limit, the relay could not send it, and the service stopped on it at every
    restart (an attack trial)."""
    try:
        return float(
            DefaultRecordBatchBuilder.estimate_size_in_bytes(None, None, list(headers)) - _NO_HEADERS
        )
    except UnicodeEncodeError:
        return math.inf


def _not_theirs(signer: str, rightful: str, event_type: str) -> str:
    """The reason of a record signed by a service that may not emit its type."""
    return coded_reason(signing.REASON, f"signed by {signer}, but only {rightful} may emit {event_type}")


def dead_letter_reason(reason: str) -> str:
    """A reason as stored and sent: printable and bounded, whatever the error said."""
    return printable(reason, 2000) or "unknown"


@contextlib.contextmanager
def _reaction_failures() -> Iterator[None]:
    """A failure of the reactions' own work (prepare, load, decide, save, the observer) is a
    ``HandlerError``, which splits the batch to find the event that caused it; a transient
    one is let through, and the batch retried."""
    try:
        yield
    except Exception as exc:
        if is_transient(exc):
            raise
        raise HandlerError(str(exc)) from exc


class ConsumerPipeline:
    def __init__(
        self,
        service: str,
        db: Database,
        subscription: Subscription,
        *,
        retry: RetryPolicy | None = None,
        handler_errors: HandlerErrorLimit | None = None,
        verifier: Verifier | None = None,
        fault: str | None = None,
    ) -> None:
        self.service = service
        self.handler_errors = handler_errors or HandlerErrorLimit()
        self._db = db
        self._reactions = subscription.reactions
        self._decoders = subscription.decoders
        #: checks the signatures of domain events (None: unsigned, development only); a
        #: topic with a decoder of its own (commands from clients) is not signed by services
        self._verifier = verifier
        self._retry = retry or RetryPolicy()
        #: Fault injection (tests): ``consumer.pipeline_error`` makes every batch fail
        #: inside the pipeline, as a bug in it would; ``consumer.crash_before_commit``
        #: kills the process with a batch applied but not committed.
        self._fault = fault
        self.stats = ConsumerStats()

    # -- the contract ----------------------------------------------------------------------
    async def process_batch(self, records: Sequence[Record]) -> list[Outcome]:
        """Account for every record (module doc); return their outcomes, in order.
        Returns only when all are handled, ignored, duplicates or dead-lettered."""
        first: dict[tuple[str, int], Record] = {}
        for r in records:
            first.setdefault((r.topic, r.partition), r)
        self.stats.batch_since = time.monotonic()
        try:
            return await self._account(records, first)
        finally:
            self.stats.batch_since = None

    async def _account(
        self, records: Sequence[Record], first: Mapping[tuple[str, int], Record]
    ) -> list[Outcome]:
        delay = self._retry.initial
        while True:
            try:
                items = await self._run(records, store_dead_letters=True)
            except Exception as exc:  # nothing is acked: see module doc
                problem = f"{type(exc).__name__}: {printable(str(exc), 300)}"
                for tp, r in first.items():
                    self.stats.stuck[tp] = f"{r.where()}: {problem}"
                log.exception(
                    "pipeline failed on a batch from %s; retrying in %.1fs", records[0].where(), delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry.maximum)
                continue
            for tp in first:
                self.stats.stuck.pop(tp, None)
            for item in items:
                assert item.outcome is not None
                payload = item.envelope.payload if item.envelope is not None else None
                self.stats.outcomes[(record_label(item.event_type, payload), item.outcome.value)] += 1
                key = (item.record.topic, item.record.partition)
                self.stats.positions[key] = max(self.stats.positions.get(key, 0), item.record.offset + 1)
            return [item.outcome for item in items if item.outcome is not None]

    async def process(self, record: Record) -> Outcome:
        """``process_batch`` of one record."""
        return (await self.process_batch([record]))[0]

    async def attempt(self, record: Record, *, give_up_after: float = ATTEMPT_GIVE_UP_SECONDS) -> Attempt:
        """Run ``record`` through the pipeline without storing a dead letter: an outcome of
        DEAD_LETTERED carries the reason instead. Replaying a dead letter uses this. A
        transient failure is retried for ``give_up_after`` seconds, then raised (an
        operator's request waits that long at most; the consumer's own state is untouched)."""
        (item,) = await self._run([record], store_dead_letters=False, give_up_after=give_up_after)
        assert item.outcome is not None
        return Attempt(item.event_type, item.outcome, item.reason)

    # -- the steps -------------------------------------------------------------------------
    async def _run(
        self, records: Sequence[Record], *, store_dead_letters: bool, give_up_after: float | None = None
    ) -> list[_Item]:
        if self._fault == "consumer.pipeline_error":
            raise RuntimeError("fault injection: consumer.pipeline_error")
        items = [_Item(r) for r in records]
        self._route(items)
        self._verify(items)
        self._decode(items)
        self._dedupe(items)
        started = time.perf_counter()
        for it in items:
            if it.envelope is None:
                continue
            if it.record.topic in self._decoders:  # from outside the services: linked, not continued
                it.context = tracing.received(
                    it.record.headers,
                    f"receive {it.event_type}",
                    {"messaging.system": "kafka", "messaging.destination.name": it.record.topic},
                )
            else:
                it.context = tracing.extract(it.record.headers)  # once: Delivery.trace
        links = [Link(ctx) for it in items if it.context and (ctx := tracing.span_context(it.context))]
        with tracing.span(
            f"consume {self.service}",
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={"messaging.system": "kafka", "messaging.batch.message_count": len(items)},
        ):
            await self._isolating(items, store_dead_letters, give_up_after)
        self.stats.batch_seconds.observe(time.perf_counter() - started)
        self.stats.batch_size.observe(len(items))
        counts = Counter((it.event_type, it.outcome.value) for it in items if it.outcome)
        log.info(
            "batch of %d from %s: %s in %.1f ms",
            len(items),
            _sources(records),
            ", ".join(f"{t} {o} {n}" for (t, o), n in sorted(counts.items())),
            (time.perf_counter() - started) * 1000,
        )
        return items

    def _route(self, items: list[_Item]) -> None:
        """Dead-letter the stand-in of a record the Kafka client could not read
        (``saga_kit.unreadable``), with its reason; ignore, without decoding, what the
        ``event_type`` header says we never use."""
        for item in items:
            unreadable = kafka_headers.text(item.record.headers, UNREADABLE)
            if unreadable is not None:
                item.outcome, item.reason = Outcome.DEAD_LETTERED, unreadable
                continue
            named = kafka_headers.text(item.record.headers, "event_type")
            if named is not None and not self._reactions.consumes(named):
                shown = named if len(named) <= 100 and named.isidentifier() else printable(named, 100)
                item.event_type, item.outcome = shown, Outcome.IGNORED

    def _verify(self, items: list[_Item]) -> None:
        if self._verifier is None:
            return
        for item in items:
            if item.outcome is not None or item.record.topic in self._decoders:
                continue
            r = item.record
            try:
                item.signer = self._verifier.signer(r.topic, r.key, r.value, r.headers)
            except BadSignature as exc:
                item.outcome, item.reason = Outcome.DEAD_LETTERED, exc.reason

    def _decode(self, items: list[_Item]) -> None:
        for item in items:
            if item.outcome is not None:
                continue
            try:
                decoder = self._decoders.get(item.record.topic)
                item.envelope = decode(item.record.value) if decoder is None else decoder(item.record)
            except WrongProducer as exc:
                # whatever producer its envelope names, a signer that may not emit its type
                # is said, as below (an attack trial got invalid_event for naming the signer)
                signer, item.outcome = item.signer, Outcome.DEAD_LETTERED
                item.reason = (
                    _not_theirs(signer, exc.rightful, exc.event_type)
                    if signer is not None and signer != exc.rightful
                    else exc.reason
                )
                continue
            except InvalidEvent as exc:
                item.outcome, item.reason = Outcome.DEAD_LETTERED, exc.reason
                continue
            item.event_type = item.envelope.event_type
            if item.signer is not None and item.signer != item.envelope.producer:
                item.outcome = Outcome.DEAD_LETTERED
                item.reason = _not_theirs(item.signer, item.envelope.producer, item.event_type)
                item.envelope = None  # nothing in it is believed, not even the order it names
                continue
            if decoder is None and item.record.key != str(item.envelope.order_id).encode():
                item.outcome = Outcome.DEAD_LETTERED
                item.reason = coded_reason(
                    "key_mismatch",
                    f"{item.event_type} of order {item.envelope.order_id} came under the key"
                    f" {printable(repr(item.record.key), 100)}: a saga's events are keyed by its"
                    " order id, which keeps them in order on one partition",
                )
                continue
            if not self._reactions.consumes(item.event_type):
                item.outcome = Outcome.IGNORED

    def _dedupe(self, items: list[_Item]) -> None:
        seen: set[uuid.UUID] = set()
        for item in items:
            if item.outcome is None and item.envelope is not None:
                if item.envelope.event_id in seen:
                    item.outcome = Outcome.DUPLICATE
                seen.add(item.envelope.event_id)

    async def _isolating(self, items: list[_Item], store: bool, give_up_after: float | None = None) -> None:
        """Apply ``items`` in one transaction; if a reaction fails, split and recurse. A
        transient failure is retried until it passes, or for ``give_up_after`` seconds
        (an ``attempt``: then raised, and not the consumer's ``retrying``)."""
        consuming = give_up_after is None  # else an attempt: not the consumer's state
        try:
            await self._retry.until(
                lambda: self._apply(items, store),
                is_transient,
                self._retrying if consuming else _retrying_an_attempt,
                give_up_after=give_up_after,
            )
            if consuming:
                self.stats.retrying = False
            self.handler_errors.handled(sum(1 for it in items if it.outcome is Outcome.HANDLED))
        except HandlerError as exc:
            if consuming:
                self.stats.retrying = False
            live = [i for i, it in enumerate(items) if it.outcome is None]
            if len(live) == 1:
                poison = items[live[0]]
                cause = exc.__cause__ or exc
                too_many = self.handler_errors.admit() if store else None
                if too_many is not None:
                    raise HandlerErrorLimitReached(
                        f"{too_many}; last: {type(cause).__name__}: {printable(str(cause), 200)}"
                    ) from exc
                log.error(
                    "reaction to %s failed; dead-lettering it", poison.event_type, exc_info=exc.__cause__
                )
                poison.outcome = Outcome.DEAD_LETTERED
                why = f"{type(cause).__name__}: {printable(str(cause), 1000)}"
                poison.reason = coded_reason("handler_error", why)
                # stores it (and the batch's other letters)
                await self._isolating(items, store, give_up_after)
                return
            cut = live[len(live) // 2]
            await self._isolating(items[:cut], store, give_up_after)
            await self._isolating(items[cut:], store, give_up_after)

    def _retrying(self, exc: BaseException) -> None:
        self.stats.retrying = True
        log.warning("transient failure, retrying the batch: %s", exc)

    async def _apply(self, items: list[_Item], store: bool) -> None:
        """The reactions' ``prepare``, then one transaction: lock, claim, react, dead
        letters, commit. Outcomes are set on
        the items only once it committed. Without dead letters to store, ``COMMIT`` goes in
        the round trip of the reactions' writes (``UnitOfWork.flush(commit=True)``); a
        failure at ``COMMIT`` (a deferred constraint) is then the reactions' failure, and
        splitting the batch finds the event that caused it."""
        live = [(it, it.envelope) for it in items if it.outcome is None and it.envelope is not None]
        if not live and not (store and any(it.outcome is Outcome.DEAD_LETTERED for it in items)):
            return  # ignored records and duplicates within the batch: no transaction at all
        results: dict[int, tuple[Outcome, str | None]] = {}
        committed = False  # COMMIT went with the last flush
        if live:  # what may wait on the network, with no transaction open
            with _reaction_failures():
                await self._reactions.prepare([envelope for _, envelope in live])
        async with self._db.unit_of_work() as uow:
            if live:
                # the claims are queued and go in the load's round trip, ahead of it: the
                # load reads (and locks) the rows of every live event's saga, redeliveries'
                # too, under the saga locks the claims take first
                claims = inbox.claim(
                    uow, self.service, [envelope for _, envelope in live], self._reactions.also_locks
                )
                deliveries = {id(it): Delivery(e, it.record.headers, it.context) for it, e in live}
                with _reaction_failures():
                    state = await self._reactions.load(uow, list(deliveries.values()))
                    claimed = await claims.fresh()
                    fresh = [(it, envelope) for it, envelope in live if envelope.event_id in claimed]
                    for it, envelope in live:
                        if envelope.event_id not in claimed:
                            results[id(it)] = (Outcome.DUPLICATE, None)
                    refused = self._reactions.apply(uow, state, [deliveries[id(it)] for it, _ in fresh])
                    if refused:
                        inbox.release(uow, self.service, [fresh[i][1].event_id for i in refused])
                    # the reactions' writes and replies in one round trip, and COMMIT in it
                    # too unless dead letters are still to be stored in this transaction
                    committed = not (
                        store and (bool(refused) or any(it.outcome is Outcome.DEAD_LETTERED for it in items))
                    )
                    if committed:  # tests: die with the work undone
                        crash_at(self._fault, "consumer.crash_before_commit")
                    await uow.flush(commit=committed)
                for i, (it, _) in enumerate(fresh):
                    results[id(it)] = (
                        (Outcome.DEAD_LETTERED, refused[i]) if i in refused else (Outcome.HANDLED, None)
                    )
            if not committed:  # dead letters to store (or nothing written), then the commit
                crash_at(self._fault, "consumer.crash_before_commit")
                if store:
                    letters = [
                        (it, it.reason if it.outcome is Outcome.DEAD_LETTERED else results[id(it)][1])
                        for it in items
                        if it.outcome is Outcome.DEAD_LETTERED
                        or (id(it) in results and results[id(it)][0] is Outcome.DEAD_LETTERED)
                    ]
                    for it, reason in letters:
                        order_id = it.envelope.order_id if it.envelope is not None else None
                        await self._store_dead_letter(uow, it.record, reason or "unknown", order_id)
        for it, _ in live:
            it.outcome, it.reason = results[id(it)]

    async def _store_dead_letter(
        self, uow: UnitOfWork, record: Record, reason: str, order_id: uuid.UUID | None = None
    ) -> None:
        """Keep the original bytes and headers with the reason, in the table and the
        dead-letter topic (once: a redelivered record is not stored twice); ``order_id``:
        the saga it belongs to, when its envelope was read."""
        reason = dead_letter_reason(reason)
        header_keys, header_values = kafka_headers.to_columns(record.headers)
        # the header arrays in binary (%b): as text, psycopg took seconds over a record's
        # half a million empty headers, each service's consumer stalled meanwhile (a trial)
        (stored,) = await uow.read(
            (
                "INSERT INTO dead_letters (source_topic, source_partition, source_offset,"
                " key, value, header_keys, header_values, reason, order_id)"
                " VALUES (%(t)s, %(p)s, %(o)s, %(k)s, %(v)s, CAST(%(hk)b AS BYTEA[]),"
                " CAST(%(hv)b AS BYTEA[]), %(r)s, %(oid)s)"
                " ON CONFLICT DO NOTHING RETURNING id",
                {
                    "t": record.topic,
                    "p": record.partition,
                    "o": record.offset,
                    "k": record.key,
                    "v": record.value,
                    "hk": header_keys,
                    "hv": header_values,
                    "r": reason,
                    "oid": order_id,
                },
            )
        )
        inserted = stored[0].id if stored else None
        # its id, as sagactl dlq show and replay take it (an operator trial matched the
        # line to its letter by the topic, partition and offset)
        if inserted is None:
            log.error("dead letter from %s (kept already): %s", record.where(), reason)
        else:
            log.error("dead letter %d from %s: %s", inserted, record.where(), reason)
            uow.emit_raw(
                topic=dead_letter_topic(self.service), **_copy_for_topic(record, reason, self.service)
            )
