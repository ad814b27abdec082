"""faust hard-codes its consumers' fetch wait; ours must reach the aiokafka consumer (a
faust or aiokafka upgrade that breaks the override fails here, not silently)."""

from __future__ import annotations

import pytest

from saga_kit.consumer import ConsumerPipeline, Subscription
from saga_kit.faust_app import DEFAULT_FETCH_MAX_WAIT_MS, build_faust_app
from saga_kit.reactions import Reactions


@pytest.mark.parametrize("wait", [DEFAULT_FETCH_MAX_WAIT_MS, 250])
async def test_the_fetch_wait_reaches_the_kafka_consumer(wait: int) -> None:
    reactions: Reactions[None] = Reactions(load=None, save=None)  # type: ignore[arg-type]
    pipeline = ConsumerPipeline("wiring", None, Subscription(("t",), reactions))  # type: ignore[arg-type]
    app = build_faust_app("wiring", "127.0.0.1:1", ("t",), pipeline, fetch_max_wait_ms=wait)
    kafka_consumer = app.consumer._thread._create_worker_consumer(app.transport)
    try:
        assert kafka_consumer._fetch_max_wait_ms == wait
        # and that is where aiokafka keeps its own setting (an upgrade renaming it fails here)
        import aiokafka

        plain = aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", fetch_max_wait_ms=123)
        assert plain._fetch_max_wait_ms == 123
        await plain.stop()
    finally:
        await kafka_consumer.stop()
