"""The chaos run's check that every consumer group consumed its topics to the end
(``sagastack.chaos.unconsumed``), against the running system's broker: a group short of
a partition's end is named, with its committed and end offsets; one at every end is not.
The records are one producer batch: the embedded Tansu's answer to ListOffsets is that
batch's first offset + 1, and a group one record in passed as at the end."""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from saga_kit.kafka import ensure_topics
from sagastack.chaos import unconsumed
from sagastack.system import System


async def test_a_group_short_of_a_partitions_end_is_named_until_it_commits_the_end(system: System) -> None:
    kwargs = system.kafka_security.client_kwargs()
    topic, group = f"unconsumed-{uuid.uuid4().hex[:8]}", f"unconsumed-{uuid.uuid4().hex[:8]}"
    await ensure_topics(
        system.bootstrap, [topic], partitions=1, replication=1, security=system.kafka_security
    )
    producer = AIOKafkaProducer(bootstrap_servers=system.bootstrap, acks="all", **kwargs)
    await producer.start()
    try:
        batch = producer.create_batch()
        for i in range(3):
            assert batch.append(key=b"k", value=f"record {i}".encode(), timestamp=None) is not None
        await (await producer.send_batch(batch, topic, partition=0))
    finally:
        await producer.stop()

    # the group has read one record of three
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=system.bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **kwargs,
    )
    await consumer.start()
    try:
        assert len((await consumer.getmany(timeout_ms=10_000, max_records=1)).popitem()[1]) == 1
        await consumer.commit()
        assert await unconsumed(system.bootstrap, kwargs, {group: [topic]}, wait=0) == [
            f"{group} has not consumed {topic}/0 to its end: committed offset 1, end offset 3"
        ]
        while (await consumer.position(next(iter(consumer.assignment())))) < 3:
            await consumer.getmany(timeout_ms=1_000)
        await consumer.commit()
    finally:
        await consumer.stop()
    assert await unconsumed(system.bootstrap, kwargs, {group: [topic]}, wait=0) == []
