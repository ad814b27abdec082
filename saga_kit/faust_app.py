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
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import faust
from faust.sensors import Monitor
from faust.transport.drivers import aiokafka as faust_aiokafka

from saga_kit.consumer import ConsumerPipeline, Record
from saga_kit.kafka_security import KafkaSecurity
from saga_kit.settings import DEFAULT_FETCH_MAX_WAIT_MS


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this when the consumer starts its fetcher; faust offers no setting
        consumer._fetch_max_wait_ms = getattr(self.app, "saga_fetch_max_wait_ms", DEFAULT_FETCH_MAX_WAIT_MS)
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> Any:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    """faust's aiokafka transport, with our consumers' fetch wait."""

    Consumer = _Consumer


class QuietMonitor(Monitor):
    """faust's Monitor keeps statistics of every message and stream event for its web
    views (disabled here); this one skips that per-record bookkeeping (measured: about a
    tenth of faust's cost per record on this project's machine)."""

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        pass

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> dict[str, Any] | None:
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

    def _new_transport(self) -> Any:
        return Transport(self.conf.broker_consumer, self)


def build_faust_app(
    service: str,
    bootstrap: str,
    topics: tuple[str, ...],
    pipeline: ConsumerPipeline,
    fetch_max_wait_ms: int = DEFAULT_FETCH_MAX_WAIT_MS,
    batch_max: int = 500,
    batch_linger: float = 0.005,
    data_dir: str | None = None,
    security: KafkaSecurity | None = None,
) -> faust.App:
    """The service's faust app: one agent over ``topics`` feeding ``pipeline`` in batches
    (module doc), connecting as ``security`` says (default ``PLAINTEXT``)."""
    if data_dir:
        # faust creates only the last level of its datadir (mkdir without parents)
        Path(data_dir).mkdir(parents=True, exist_ok=True)
    app = SagaApp(
        service,
        # faust creates "<id>-data" under its datadir; the default is the working directory
        datadir=data_dir or tempfile.mkdtemp(prefix=f"{service}-faust-"),
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
    topic = app.topic(*topics, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    async def consume(stream: Any) -> None:
        await consume_batches(stream, pipeline, batch_max, batch_linger)

    app.agent(topic, name=f"{service}.consume")(consume)
    return app


async def consume_batches(
    stream: Any, pipeline: ConsumerPipeline, batch_max: int, batch_linger: float
) -> None:
    """The agent: each batch is acked after ``process_batch`` returned, never before,
    and not at all if it raises (a faust stream, or anything with ``noack_take`` and
    ``ack``)."""
    async for events in stream.noack_take(batch_max, within=batch_linger):
        await pipeline.process_batch([_record(event.message) for event in events])
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
