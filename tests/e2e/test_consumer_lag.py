"""The end offset a consumer's lag is counted from (``saga_consumer_lag``), on the real
broker: the embedded Tansu answers ListOffsets with its last batch's first offset + 1,
short of the partition's end by the rest of that batch, and the lag read 0 while a
service was a batch behind (an operator trial). The progress watch's lookup
(``saga_kit.faust_app._ConsumerThread.highwaters``) takes the fetch's high watermark
when it is further."""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from saga_kit.consumer import ConsumerPipeline, Subscription
from saga_kit.faust_app import build_faust_app
from saga_kit.kafka import ensure_topics
from saga_kit.reactions import Reactions
from sagastack.system import System

RECORDS = 40


async def test_a_partitions_end_after_a_fetch_is_past_its_last_batch(system: System) -> None:
    topic = f"lag-probe-{uuid.uuid4().hex[:8]}"
    security = system.kafka_security
    await ensure_topics(system.bootstrap, [topic], partitions=1, replication=1, security=security)
    producer = AIOKafkaProducer(bootstrap_servers=system.bootstrap, **security.client_kwargs())
    await producer.start()
    try:
        batch = producer.create_batch()
        for i in range(RECORDS):  # one producer batch: one batch in the log
            assert batch.append(key=b"k", value=str(i).encode(), timestamp=None) is not None
        await (await producer.send_batch(batch, topic, partition=0))
    finally:
        await producer.stop()

    reactions: Reactions[None] = Reactions(load=None, save=None)  # type: ignore[arg-type]
    pipeline = ConsumerPipeline("lag", None, Subscription((topic,), reactions))  # type: ignore[arg-type]
    app = build_faust_app("lag-test", system.bootstrap, (topic,), pipeline, security=security)
    thread = app.consumer._thread
    thread._create_consumer = lambda loop: AIOKafkaConsumer(
        bootstrap_servers=system.bootstrap, enable_auto_commit=False, **security.client_kwargs()
    )
    tp = TopicPartition(topic, 0)
    await thread.start()
    try:

        async def fetch_some() -> int:
            kafka = thread._ensure_consumer()
            kafka.assign([tp])
            await kafka.seek_to_beginning(tp)
            taken = await kafka.getmany(tp, timeout_ms=10_000, max_records=5)
            return sum(map(len, taken.values()))

        assert await thread.call_thread(fetch_some) >= 1
        assert await thread.highwaters(tp) == {tp: RECORDS}
    finally:
        await thread.stop()
