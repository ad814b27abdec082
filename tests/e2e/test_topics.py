"""Topics exist because a service made them (``ensure_topics``, with its partitions),
never because a client asked for one by name: on Apache Kafka the development broker, as
compose's and production ones, does not create a topic on a producer's request."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import UnknownTopicOrPartitionError

from sagastack.system import System


async def test_a_record_for_a_topic_nobody_made_is_refused_not_a_new_topic(system: System) -> None:
    if system.broker_kind != "kafka":
        pytest.skip("Apache Kafka's setting: runs in make test's Kafka phase")
    kwargs = system.kafka_security.client_kwargs()
    mistyped = f"orders.event-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=system.bootstrap, request_timeout_ms=3000, **kwargs)
    await producer.start()
    try:
        with pytest.raises(UnknownTopicOrPartitionError):  # not made on the way
            await producer.send_and_wait(mistyped, b"lost in a typo")
    finally:
        await producer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=system.bootstrap, **kwargs)
    await admin.start()
    try:
        topics = set(await admin.list_topics())
    finally:
        await admin.close()
    assert "orders.events" in topics and mistyped not in topics
