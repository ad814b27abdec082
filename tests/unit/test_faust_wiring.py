"""faust hard-codes its consumers' fetch wait; ours must reach the aiokafka consumer, its
consumer thread must run on uvloop, and the pacer must set each fetch's wait (a faust or
aiokafka upgrade that breaks an override fails here, not silently)."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest

from saga_kit.consumer import ConsumerPipeline, Subscription
from saga_kit.faust_app import (
    BUSY_RECORDS_PER_SECOND,
    DEFAULT_FETCH_MAX_WAIT_MS,
    FetchPacer,
    _ConsumerThread,
    build_faust_app,
)
from saga_kit.reactions import Reactions


def _app(**settings: Any) -> faust.App:
    """A service's faust app over a pipeline that is never called (nothing is consumed)."""
    reactions: Reactions[None] = Reactions(load=None, save=None)  # type: ignore[arg-type]
    pipeline = ConsumerPipeline("wiring", None, Subscription(("t",), reactions))  # type: ignore[arg-type]
    return build_faust_app("wiring", "127.0.0.1:1", ("t",), pipeline, **settings)


@pytest.mark.parametrize("wait", [DEFAULT_FETCH_MAX_WAIT_MS, 250])
async def test_the_fetch_wait_reaches_the_kafka_consumer(wait: int) -> None:
    app = _app(fetch_max_wait_ms=wait)
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


async def test_the_consumer_thread_runs_on_uvloop() -> None:
    """faust's consumer thread would make a standard asyncio loop; ours hands it uvloop's,
    and mode closes it when the thread stops (an upgrade that drops either fails here)."""
    import uvloop

    app = _app()
    thread = app.consumer._thread
    assert isinstance(thread.thread_loop, uvloop.Loop)
    assert thread._close_thread_loop_on_stop
    thread.thread_loop.close()


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_pacer_waits_short_while_idle_and_long_while_busy() -> None:
    clock = _Clock()
    pacer = FetchPacer(busy_wait_ms=100, idle_wait_ms=20, busy_records=50, clock=clock)
    assert pacer.observe(0) == 20
    assert pacer.observe(3) == 20  # an idle saga's few records
    clock.now = 0.5
    assert pacer.observe(47) == 100  # 50 within this second: busy at once
    clock.now = 1.0
    assert pacer.observe(0) == 100  # a new second: the last one's rate (50/s) keeps it busy
    clock.now = 1.5
    assert pacer.observe(10) == 100
    clock.now = 2.0
    assert pacer.observe(0) == 20  # 10 records in the last second: idle again
    clock.now = 5.0
    assert pacer.observe(0) == 20


async def test_the_pacer_sets_the_wait_of_the_next_fetch() -> None:
    """Our consumer thread wraps faust's take of fetched records (``_fetch_records``) and
    writes the wait aiokafka's fetcher builds its next request from: an upgrade that
    renames either fails here."""
    import inspect
    from contextlib import nullcontext
    from types import SimpleNamespace

    from aiokafka.consumer.fetcher import Fetcher
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    assert "FetchRequest(\n                self._fetch_max_wait_ms," in inspect.getsource(Fetcher)
    ours = inspect.signature(_ConsumerThread._fetch_records).parameters
    assert list(ours) == list(inspect.signature(AIOKafkaConsumerThread._fetch_records).parameters)

    app = _app(fetch_max_wait_ms=100, fetch_idle_wait_ms=20)
    thread = app.consumer._thread
    taken: dict[str, list[int]] = {}

    async def fetched_records(
        partitions: object,
        timeout: object,  # noqa: ASYNC109 (aiokafka's signature)
        max_records: object,
    ) -> dict[str, list[int]]:
        return taken

    fetcher = SimpleNamespace(
        _closed=False,
        _fetch_max_wait_ms=100,
        _subscriptions=SimpleNamespace(fetch_context=nullcontext),
        fetched_records=fetched_records,
    )
    kafka_consumer = SimpleNamespace(_closed=False, _fetcher=fetcher)
    try:
        await thread._fetch_records(kafka_consumer, set(), timeout=0.0)
        assert fetcher._fetch_max_wait_ms == 20  # nothing taken: idle
        taken = {"t-0": list(range(BUSY_RECORDS_PER_SECOND))}
        assert await thread._fetch_records(kafka_consumer, set(), timeout=0.0) == taken
        assert fetcher._fetch_max_wait_ms == 100  # busy: records gather into batches
    finally:
        thread.thread_loop.close()


async def test_a_stream_taking_an_event_is_seen_by_fausts_liveness_check() -> None:
    """faust's consumer thread logs "Stream has not started processing" as an ERROR for a
    partition with a backlog whose stream never took an event (by its monitor's
    ``stream_inbound_time``); the quiet monitor still records that time, or busy
    partitions were reported idle after 5 minutes of load."""
    import inspect
    import time

    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
    from faust.types import TP

    app = _app()
    tp = TP("t", 3)
    before = time.monotonic()
    app.monitor.on_stream_event_in(tp, 7, None, None)  # type: ignore[arg-type]  # as a stream does
    assert app.monitor.stream_inbound_time[tp] >= before
    # where faust looks (an upgrade that moves the check away from it fails here)
    assert "monitor.stream_inbound_time" in inspect.getsource(AIOKafkaConsumerThread.verify_event_path)


class _Unanswered:
    """An aiokafka consumer whose broker does not answer: its offset lookups wait until
    ``answer`` is set (on the consumer thread's loop)."""

    def __init__(self) -> None:
        self.answer = asyncio.Event()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def _unanswered(self, *args: object) -> dict[object, int]:
        await self.answer.wait()
        return {}

    end_offsets = beginning_offsets = position = _unanswered


async def test_offset_lookups_hold_no_worker_of_the_method_queue_and_give_up() -> None:
    """The progress watch's lookups (``highwaters``, ``earliest_offsets``, ``position``)
    asked while the broker cannot answer: faust's method queue, through which every
    fetch goes, still serves calls, and each lookup gives up after ``lookup_timeout``
    (it held one of the queue's two workers for aiokafka's 90 s request timeout, and two
    held every fetch back: a Kafka crash test's stall)."""
    from faust.types import TP

    app = _app()
    thread = app.consumer._thread
    kafka = _Unanswered()
    thread._create_consumer = lambda loop: kafka
    thread.lookup_timeout = 0.5
    await thread.start()
    try:
        tp = TP("t", 0)
        lookups = [
            asyncio.ensure_future(thread.highwaters(tp)),
            asyncio.ensure_future(thread.earliest_offsets(tp)),
            asyncio.ensure_future(thread.position(tp)),
        ]

        async def fetch() -> str:
            return "served"

        assert await asyncio.wait_for(thread.call_thread(fetch), 30) == "served"
        for lookup in lookups:
            with pytest.raises(TimeoutError, match=r"^no answer from the broker within 0\.5 s$"):
                await asyncio.wait_for(lookup, 30)
    finally:
        thread.thread_loop.call_soon_threadsafe(kafka.answer.set)
        await thread.stop()
