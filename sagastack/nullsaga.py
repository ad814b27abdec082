"""The "null saga": the benchmark's same-run ceiling.

A real saga is ``HOPS`` events in a row, each produced to a topic and consumed from it
by ``FANOUT`` consumer groups (one reacts, the others only read — as inventory and
payment both read orders.events). The null saga does exactly that through the same
broker, with no database, no decoding and no handlers: stage *i* forwards each record of
``null.<run>.<i>`` to ``null.<run>.<i+1>`` at once, and extra groups read every topic.
What it achieves is what Kafka and the Python clients alone allow on this machine, so
the benchmark can state the saga's cost as a ratio measured in one run.

Run as a process of its own (``python -m sagastack.nullsaga``) so its CPU is measured
apart from the load generator; it prints one JSON line with the result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from saga_kit.kafka import raise_topic_errors
from saga_kit.kafka_security import KafkaClientSettings, KafkaSecurity

#: Events in a row per saga: OrderCreated, InventoryReserved, PaymentCompleted,
#: OrderApproved, InventoryCommitted.
HOPS = 5
#: Consumer groups per topic: each domain topic is read by the two other services.
FANOUT = 2


async def _consumer(bootstrap: str, topic: str, group: str, security: KafkaSecurity) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        **security.client_kwargs(),
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=True,
        session_timeout_ms=6000,
        heartbeat_interval_ms=2000,
        fetch_max_wait_ms=100,
    )
    await consumer.start()
    return consumer


async def run(
    bootstrap: str, sagas: int, rate: float, partitions: int, security: KafkaSecurity | None = None
) -> dict[str, float]:
    security = security or KafkaSecurity()
    run_id = uuid.uuid4().hex[:8]
    topics = [f"null.{run_id}.{i}" for i in range(HOPS)]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **security.client_kwargs())
    await admin.start()
    try:
        answer = await admin.create_topics([NewTopic(t, partitions, 1) for t in topics])
        raise_topic_errors(answer.topic_errors)
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, **security.client_kwargs()
    )
    await producer.start()
    done: dict[bytes, float] = {}
    started: dict[bytes, float] = {}
    finished = asyncio.Event()

    async def forward(source: str, target: str | None, group: str) -> None:
        consumer = await _consumer(bootstrap, source, group, security)
        try:
            while not finished.is_set():
                batches = await consumer.getmany(timeout_ms=100, max_records=500)
                for records in batches.values():
                    for r in records:
                        if target is not None:
                            await producer.send(target, r.value, key=r.key)
                        elif r.key is not None and r.key in started:
                            done.setdefault(r.key, time.monotonic())
                if len(done) >= sagas:
                    finished.set()
        finally:
            await consumer.stop()

    last = HOPS - 1

    async def read(source: str, group: str) -> None:
        consumer = await _consumer(bootstrap, source, group, security)
        try:
            while not finished.is_set():
                await consumer.getmany(timeout_ms=100, max_records=500)
        finally:
            await consumer.stop()

    tasks = [
        asyncio.create_task(forward(topics[i], topics[i + 1] if i < last else None, f"null-{run_id}-{i}"))
        for i in range(HOPS)
    ]
    readers = [
        asyncio.create_task(read(topics[i], f"null-{run_id}-{i}-read{k}"))
        for i in range(HOPS)
        for k in range(FANOUT - 1)
    ]
    await asyncio.sleep(8)  # groups joined (the embedded broker takes half a session timeout)
    t0 = time.monotonic()
    for i in range(sagas):
        target = t0 + i / rate
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        key = f"saga-{i}".encode()
        started[key] = target
        await producer.send(topics[0], b"{}", key=key)
    try:
        await asyncio.wait_for(finished.wait(), 120 + sagas / rate)
    finally:
        finished.set()
        await asyncio.gather(*tasks, *readers, return_exceptions=True)
        await producer.stop()
    latencies = sorted((done[k] - started[k]) * 1000 for k in started if k in done)
    elapsed = max(done.values()) - t0
    return {
        "sagas": len(latencies),
        "throughput": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2],
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m sagastack.nullsaga")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--sagas", type=int, default=2000)
    p.add_argument("--rate", type=float, default=400.0)
    p.add_argument("--partitions", type=int, default=6)
    args = p.parse_args()
    # the broker's security from the environment, as the services read it
    security = KafkaClientSettings().kafka_security()
    result = asyncio.run(run(args.bootstrap, args.sagas, args.rate, args.partitions, security))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
