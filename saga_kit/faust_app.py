"""Faust wiring: one app per service, one thin agent per subscribed topic.

Agents receive raw bytes (``value_serializer="raw"``) so the shared codec in ``events``
is the only deserializer, and an undecodable message reaches the processor to be
dead-lettered instead of being dropped inside the client library. Acks are manual
(``noack``): an event is acked only after ``MessageProcessor.process`` returned, i.e. after
it was handled or dead-lettered and that transaction committed; faust commits acked
offsets periodically. (faust's default acks in a ``finally``, so an exception or a
cancellation at shutdown would ack a record that was never applied.)

Settings follow the measured behaviour of the embedded broker (DESIGN §2): short session
timeouts for quick group joins, ``earliest`` offset reset, no faust tables, no leader
topic, topics created by us, not by faust.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from saga_kit.consumer import MessageProcessor, Record

#: Default of ``KAFKA_FETCH_MAX_WAIT_MS`` (Apache Kafka's own default). faust hard-codes
#: 1500 ms, with which an idle saga waits ~450 ms per hop on the embedded broker; lower
#: is faster per hop but costs throughput (measured: README, Benchmark).
DEFAULT_FETCH_MAX_WAIT_MS = 500


def _create_worker_consumer(self: Any, transport: Any) -> Any:
    """faust's consumer factory, with our fetch wait (faust offers no setting for it)."""
    consumer = _faust_create_worker_consumer(self, transport)
    wait = getattr(self.app, "saga_fetch_max_wait_ms", None)
    if wait is not None:
        consumer._fetch_max_wait_ms = wait  # read when the consumer starts its fetcher
    return consumer


_faust_create_worker_consumer = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer
faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]


def build_faust_app(
    service: str,
    bootstrap: str,
    topics: tuple[str, ...],
    processor: MessageProcessor,
    fetch_max_wait_ms: int = DEFAULT_FETCH_MAX_WAIT_MS,
) -> faust.App:
    app = faust.App(
        service,
        broker=",".join(f"kafka://{b.strip()}" for b in bootstrap.split(",")),
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
        # A rebalance or a stop must not wait for a record still in processing: one that
        # cannot get through (saga_kit.consumer, 6) would hold up the whole consumer
        # group. Only acked offsets are committed, so an in-flight record is redelivered
        # to whoever owns its partition next, and the inbox keeps its effect single.
        stream_wait_empty=False,
    )
    app.saga_fetch_max_wait_ms = fetch_max_wait_ms  # type: ignore[attr-defined]
    for topic_name in topics:
        _add_agent(app, topic_name, processor)
    return app


def _add_agent(app: faust.App, topic_name: str, processor: MessageProcessor) -> None:
    topic = app.topic(
        topic_name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )

    async def consume(stream: Any) -> None:
        manual = stream.noack()
        async for event in manual.events():
            message = event.message
            await processor.process(
                Record(
                    topic=message.topic,
                    partition=message.partition,
                    offset=message.offset,
                    key=message.key,
                    value=message.value,
                    headers=list(message.headers or ()),
                )
            )
            await manual.ack(event)

    app.agent(topic, name=f"{processor.service}.{topic_name}")(consume)
