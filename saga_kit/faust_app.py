"""Faust wiring: one app per service, one thin agent per subscribed topic.

Agents receive raw bytes (``value_serializer="raw"``) so the shared codec in ``events``
is the only deserializer, and an undecodable message reaches the processor to be
dead-lettered instead of being dropped inside the client library. Faust acks an event
when the agent asks for the next one, i.e. after ``MessageProcessor.process`` returned
(after the handler's transaction committed), and commits acked offsets periodically.

Settings follow the measured behaviour of the embedded broker (DESIGN §2): short session
timeouts for quick group joins, ``earliest`` offset reset, no faust tables, no leader
topic, topics created by us, not by faust.
"""

from __future__ import annotations

from typing import Any

import faust

from saga_kit.consumer import MessageProcessor, Record


def build_faust_app(
    service: str, bootstrap: str, topics: tuple[str, ...], processor: MessageProcessor
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
    )
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
        async for event in stream.events():
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

    app.agent(topic, name=f"{processor.service}.{topic_name}")(consume)
