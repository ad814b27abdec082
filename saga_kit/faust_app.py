"""Faust wiring: one app per service, one thin agent over every topic it subscribes to,
taking records a batch at a time.

The agent receives raw bytes (``value_serializer="raw"``) so the shared codec in
``events`` is the only deserializer, and an undecodable record reaches the pipeline to
be dead-lettered instead of being dropped inside the client library. It takes batches
with ``noack_take(batch_max, within=batch_linger)``: up to ``batch_max`` records, or
whatever arrived within ``batch_linger`` seconds. Acks are manual: a batch is acked only
after ``ConsumerPipeline.process_batch`` returned, i.e. after every record of it was
handled or dead-lettered and that transaction committed; faust commits acked offsets
periodically. A batch whose processing raises is never acked.

Settings follow the measured behaviour of the embedded broker (``docs/design.md``):
short session timeouts for quick group joins, ``earliest`` offset reset, no faust tables,
no leader topic, topics created by us, not by faust. faust hard-codes its consumers'
fetch wait (1500 ms); ``SagaApp`` sets it through a transport of its own
(``fetch_max_wait_ms``), and a test fails if a faust or aiokafka upgrade breaks that.

With ``fetch_idle_wait_ms`` the wait follows the load (``FetchPacer``): the short idle
wait while the consumer took fewer than ``BUSY_RECORDS_PER_SECOND`` records in the last
second, ``fetch_max_wait_ms`` above. It is for brokers that answer a fetch only when its
wait ends, never when a record arrives (Tansu; ``sagastack.system``): there a short wait
makes an idle saga fast, while under load a long one lets records gather into the big
batches that keep the CPU per saga low. Measured on Tansu, in alternating ``make bench``
runs: a fixed 20 ms wait took an idle saga from ~135 to ~90 ms at p50 but cost 10-20%
more CPU per saga under load; following the load keeps both (~90 ms, 9.4-9.9 ms/saga
against 9.2-9.9 at a fixed 100 ms). Apache Kafka answers when data arrives: no idle wait.

faust runs the Kafka consumer in a thread of its own, on an event loop it makes with
``asyncio.new_event_loop()``: the standard loop, while the service runs on uvloop. The
same transport hands that thread a uvloop loop (``ServiceThread``'s ``thread_loop``):
5% less CPU per saga (9.5 against 10.0 ms in three alternating pairs of closed-loop runs
at a fixed fetch wait). The progress watch's offset lookups run on that loop beside
faust's method queue, bounded, so that a broker that cannot answer them holds up no fetch
(``_ConsumerThread``).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import faust
import uvloop
from faust.sensors import Monitor
from faust.transport.drivers import aiokafka as faust_aiokafka

from saga_kit.consumer import ConsumerPipeline, Record
from saga_kit.kafka_security import KafkaSecurity
from saga_kit.progress import ProgressWatchdog, fetched_end
from saga_kit.settings import DEFAULT_FETCH_MAX_WAIT_MS
from saga_kit.unreadable import install as read_what_can_be_read

log = logging.getLogger(__name__)
# a record aiokafka cannot read is a stand-in the pipeline dead-letters, not a crash
read_what_can_be_read()

#: Seconds the progress watch's offset lookups may take (``_ConsumerThread``): a broker
#: answers ListOffsets in milliseconds; 10 s leaves room for a loaded machine, and a look
#: that gives up is repeated at the next one (at most 5 s later, ``saga_kit.progress``).
OFFSET_LOOKUP_SECONDS = 10.0

#: Records per second (per consumer) from which it counts as busy (``FetchPacer``). An
#: idle saga brings each consumer a few records a second; a loaded stack, hundreds.
BUSY_RECORDS_PER_SECOND = 50


class FetchPacer:
    """The wait of a consumer's next fetch, from the records it took in the last second:
    ``idle_wait_ms`` under ``busy_records`` per second, ``busy_wait_ms`` from there on.

    ``observe`` is told the records of every take (0 included) and returns the wait for
    the next fetch, in ms. The count restarts each second; the consumer is busy while
    either the last full second's rate or the current second's count reaches
    ``busy_records``, so a burst turns it busy at once and one to two seconds of quiet
    turn it idle."""

    def __init__(
        self,
        busy_wait_ms: int,
        idle_wait_ms: int,
        busy_records: int = BUSY_RECORDS_PER_SECOND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.busy_wait_ms, self.idle_wait_ms, self.busy_records = busy_wait_ms, idle_wait_ms, busy_records
        self._clock = clock
        self._since = clock()
        self._count = 0
        self._rate = 0.0

    def observe(self, records: int) -> int:
        now = self._clock()
        if now - self._since >= 1.0:
            self._rate = self._count / (now - self._since)
            self._count, self._since = 0, now
        self._count += records
        busy = max(self._rate, self._count) >= self.busy_records
        return self.busy_wait_ms if busy else self.idle_wait_ms


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's consumer thread, with our fetch wait, on uvloop, and the progress watch's
    offset lookups (``highwaters``, ``earliest_offsets``, ``position``) run beside its
    method queue, bounded (``OFFSET_LOOKUP_SECONDS``).

    faust hands every call to its consumer thread to one method queue served by two
    workers, the fetches that feed the agent included. A lookup asked while the broker
    cannot answer waits for aiokafka's request timeout (faust's ``broker_request_timeout``,
    90 s): two of them, or one beside a commit waiting for the group's coordinator, and
    no fetch is served until they end. A fresh-clone run on Apache Kafka saw it: after a
    crash of the broker, the payment service took nothing for 90 s after the broker was
    back, until the watch's ``end_offsets`` gave up ("Failed to get offsets by times in
    90000 ms"). Run as tasks of the thread's loop instead, they hold no worker; bounded,
    a look gives up within seconds and the next one asks again."""

    #: seconds a lookup may take before the look gives it up (``OFFSET_LOOKUP_SECONDS``)
    lookup_timeout: float

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        super().__init__(consumer, thread_loop=uvloop.new_event_loop(), **kwargs)
        # mode closes only a loop it made itself; this one is ours to close, at the same time
        self._close_thread_loop_on_stop = True
        self.lookup_timeout = OFFSET_LOOKUP_SECONDS

    async def highwaters(self, *partitions: Any) -> Any:
        return await self._beside_queue(self._highwaters(list(partitions)))

    async def _highwaters(self, partitions: list[Any]) -> Any:
        """Each partition's end offset: the larger of the broker's answer to ListOffsets
        (faust's lookup) and the high watermark its last fetch response gave (aiokafka's
        ``highwater``; None before one). Both are at most the end, so the larger is the
        nearer. The embedded Tansu answers ListOffsets with its last batch's first
        offset + 1, short of the end by the rest of that batch (measured: 45 records in
        one batch, end 1), and its fetch's high watermark is exact; Apache Kafka's two
        agree. The lag counted from it (``saga_consumer_lag``) read 0 while a service was
        a batch behind on Tansu (an operator trial)."""
        ends = dict(await super()._highwaters(partitions))
        consumer = self._ensure_consumer()
        for tp, end in ends.items():
            fetched = fetched_end(consumer, tp)
            if fetched is not None and (end is None or fetched > end):
                ends[tp] = fetched
        return ends

    async def earliest_offsets(self, *partitions: Any) -> Any:
        return await self._beside_queue(self._ensure_consumer().beginning_offsets(partitions))

    async def position(self, tp: Any) -> Any:
        return await self._beside_queue(self._ensure_consumer().position(tp))

    async def _beside_queue(self, lookup: Coroutine[Any, Any, Any]) -> Any:
        """``lookup``'s result, awaited on the consumer thread's loop as a task of its
        own (aiokafka's calls may run side by side there), not through the method queue;
        raises TimeoutError after ``lookup_timeout`` seconds, and RuntimeError when the
        thread's loop no longer runs."""
        bounded = asyncio.wait_for(lookup, self.lookup_timeout)
        try:
            future = asyncio.run_coroutine_threadsafe(bounded, self.thread_loop)
        except BaseException:
            bounded.close()
            lookup.close()
            raise
        try:
            return await asyncio.wrap_future(future)
        except TimeoutError:  # said, not "TimeoutError: " (an operator trial's log)
            raise TimeoutError(f"no answer from the broker within {self.lookup_timeout:g} s") from None

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this when the consumer starts its fetcher; faust offers no setting
        consumer._fetch_max_wait_ms = getattr(self.app, "saga_fetch_max_wait_ms", DEFAULT_FETCH_MAX_WAIT_MS)
        return consumer

    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: Any,
        timeout: float | None = None,  # noqa: ASYNC109 (faust's signature)
        max_records: int | None = None,
    ) -> Any:
        """faust's take of fetched records; with a pacer, the wait of the next fetch
        follows what was taken (the fetcher reads its wait for every request it builds)."""
        records = await super()._fetch_records(
            consumer, active_partitions, timeout=timeout, max_records=max_records
        )
        pacer: FetchPacer | None = getattr(self.app, "saga_fetch_pacer", None)
        if pacer is not None:
            consumer._fetcher._fetch_max_wait_ms = pacer.observe(sum(map(len, records.values())))
        return records


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> Any:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    """faust's aiokafka transport, with our consumers' fetch wait, on uvloop, the
    progress watch's lookups beside its consumer thread's method queue."""

    Consumer = _Consumer


class QuietMonitor(Monitor):
    """faust's Monitor keeps statistics of every message and stream event for its web
    views (disabled here); this one skips that per-record bookkeeping (measured: about a
    tenth of faust's cost per record on this project's machine), except the time a
    partition's stream last took an event: faust's liveness check reads it, and without
    it logged "Stream has not started processing …" as an ERROR for partitions that were
    busy, once a service had run 5 minutes with a fetch backlog (an attack trial's load)."""

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        pass

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> dict[str, Any] | None:
        self.stream_inbound_time[tp] = time.monotonic()
        return None

    def on_stream_event_out(
        self, tp: Any, offset: int, stream: Any, event: Any, state: dict[str, Any] | None = None
    ) -> None:
        pass

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        pass


class SagaApp(faust.App):
    """A faust app on ``Transport``."""

    #: Set by ``build_faust_app``; read by the consumer thread.
    saga_fetch_max_wait_ms: int = DEFAULT_FETCH_MAX_WAIT_MS
    #: Set by ``build_faust_app`` with an idle wait; None: the wait is fixed.
    saga_fetch_pacer: FetchPacer | None = None
    #: Set by ``build_faust_app``: the watch over its consumer's progress.
    saga_progress: ProgressWatchdog

    def _new_transport(self) -> Any:
        return Transport(self.conf.broker_consumer, self)


def build_faust_app(
    service: str,
    bootstrap: str,
    topics: tuple[str, ...],
    pipeline: ConsumerPipeline,
    fetch_max_wait_ms: int = DEFAULT_FETCH_MAX_WAIT_MS,
    fetch_idle_wait_ms: int | None = None,
    batch_max: int = 500,
    batch_linger: float = 0.005,
    data_dir: str | None = None,
    security: KafkaSecurity | None = None,
    stall_seconds: float = 20.0,
    fault: str | None = None,
) -> SagaApp:
    """The service's faust app: one agent over ``topics`` feeding ``pipeline`` in batches
    (module doc), connecting as ``security`` says (default ``PLAINTEXT``). Its consumer's
    progress is watched (``saga_progress``, ``saga_kit.progress``; ``stall_seconds``:
    ``CONSUMER_STALL_SECONDS``); the service runs the watch."""
    if data_dir:
        # faust creates only the last level of its datadir (mkdir without parents)
        Path(data_dir).mkdir(parents=True, exist_ok=True)
    else:  # a directory of this process's own, gone when it exits
        data_dir = tempfile.mkdtemp(prefix=f"{service}-faust-")
        atexit.register(shutil.rmtree, data_dir, ignore_errors=True)
    app = SagaApp(
        service,
        # faust creates "<id>-data" under its datadir; the default is the working directory
        datadir=data_dir,
        monitor=QuietMonitor(),
        broker=",".join(f"kafka://{b.strip()}" for b in bootstrap.split(",")),
        broker_credentials=(security or KafkaSecurity()).faust_credentials(),
        web_enabled=False,
        store="memory://",
        autodiscover=False,
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=6,
        broker_heartbeat_interval=1.2,
        broker_rebalance_timeout=6,
        broker_commit_interval=1.0,
        producer_acks=-1,
        # A rebalance or a stop must not wait for a batch still in processing: one that
        # cannot get through (saga_kit.consumer) would hold up the whole consumer group.
        # Only acked offsets are committed, so an unacked batch is redelivered to whoever
        # owns its partitions next, and the inbox keeps its effects single.
        stream_wait_empty=False,
    )
    app.saga_fetch_max_wait_ms = fetch_max_wait_ms
    if fetch_idle_wait_ms is not None:
        app.saga_fetch_pacer = FetchPacer(fetch_max_wait_ms, fetch_idle_wait_ms)
    topic = app.topic(*topics, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    app.saga_progress = progress = ProgressWatchdog(app.consumer, pipeline.stats, stall_seconds)
    drop_first: bool | bytes = False
    if fault == "consumer.drop_first_record":
        drop_first = True
    elif fault and fault.startswith("consumer.drop_first_record="):
        drop_first = fault.partition("=")[2].encode()

    async def consume(stream: Any) -> None:
        await consume_batches(stream, pipeline, batch_max, batch_linger, progress, drop_first)

    app.agent(topic, name=f"{service}.consume")(consume)
    return app


async def consume_batches(
    stream: Any,
    pipeline: ConsumerPipeline,
    batch_max: int,
    batch_linger: float,
    progress: ProgressWatchdog | None = None,
    drop_first: bool | bytes = False,
) -> None:
    """The agent: each batch is acked after ``process_batch`` returned, never before,
    and not at all if it raises (a faust stream, or anything with ``noack_take`` and
    ``ack``). With ``progress``, a batch that shows records skipped on the way has them
    read again (``saga_kit.progress``).

    ``drop_first`` (fault injection, ``SAGA_FAULT=consumer.drop_first_record``, or
    ``…=<key>`` for the first record with that key) loses the first record taken,
    neither processed nor acked, as the client library's known defects do
    (``saga_kit.progress``)."""
    async for events in stream.noack_take(batch_max, within=batch_linger):
        if drop_first is not False:
            lost = next(
                (i for i, e in enumerate(events) if drop_first is True or e.message.key == drop_first), None
            )
            if lost is not None:
                where = _record(events[lost].message).where()
                log.error("fault injection: the record at %s is dropped", where)
                events, drop_first = [*events[:lost], *events[lost + 1 :]], False
                if not events:
                    continue
        records = [_record(event.message) for event in events]
        if progress is not None:
            progress.batch_taken(records)
        await pipeline.process_batch(records)
        for event in events:
            await stream.ack(event)


def _record(message: Any) -> Record:
    return Record(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        headers=list(message.headers or ()),
    )
