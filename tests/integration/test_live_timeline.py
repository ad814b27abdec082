"""The live timeline (order_svc.live) against the real PostgreSQL: one poller for every open
stream, catch-up then live without a gap or a repeat, late commits, a stream that falls
behind."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text

from order_svc import live, timeline
from order_svc.live import Away, Ended, Item, LiveTimeline
from tests.integration.conftest import ServiceUnderTest
from tests.polling import until

#: Fast enough for a test to see several reads; the product's default is 0.5 s.
INTERVAL = 0.05


async def insert(conn: Any, n: int = 1) -> list[int]:
    seqs: list[int] = []
    for _ in range(n):
        seqs.append(
            await conn.scalar(
                text(
                    "INSERT INTO saga_events (event_id, order_id, event_type, producer, occurred_at, payload)"
                    " VALUES (:e, :o, 'LiveTest', 'order_svc', now(), '{}') RETURNING seq"
                ),
                {"e": uuid.uuid4(), "o": uuid.uuid4()},
            )
        )
    return seqs


async def committed(order: ServiceUnderTest, n: int = 1) -> list[int]:
    async with order.db.engine.begin() as conn:
        return await insert(conn, n)


async def collect(stream: AsyncIterator[Item], want: set[int], got: list[int]) -> None:
    """Read ``stream`` into ``got`` until every seq in ``want`` arrived (at most 30 s)."""
    async with asyncio.timeout(30):
        await _collect(stream, want, got)


async def _collect(stream: AsyncIterator[Item], want: set[int], got: list[int]) -> None:
    if want <= set(got):
        return
    async for item in stream:
        assert not isinstance(item, (Away, Ended)), item
        got.extend(r["seq"] for r in item)
        if want <= set(got):
            return


class CountingReads(LiveTimeline):
    """Counts the timeline reads, the hub's apart from the streams' own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads = {"hub": 0, "streams": 0}
        self.hub_follower: timeline.Follower | None = None

    async def _run(self, follower: timeline.Follower) -> None:
        self.hub_follower = follower
        await super()._run(follower)

    async def _read(self, follower: timeline.Follower, page: int = live.PAGE) -> list[dict[str, Any]] | None:
        self.reads["hub" if follower is self.hub_follower else "streams"] += 1
        return await super()._read(follower, page)


async def test_open_streams_share_one_reader_and_each_gets_every_event_once(order: ServiceUnderTest) -> None:
    hub = CountingReads(order.db.engine, max_streams=50, poll_interval=INTERVAL)
    streams = [hub.follow(await hub.start(None)) for _ in range(20)]
    # each stream catches up on its own once (nothing to catch up: it starts now) ...
    first = [asyncio.ensure_future(anext(s)) for s in streams]
    await until(lambda: hub.reads["streams"] >= 20 and hub.open_streams >= 20, "every stream caught up")
    assert hub.reads["streams"] == 20 and hub.open_streams == 20
    # ... and from then on only the hub reads, however many streams are open
    made = await committed(order, 3)
    got: list[list[int]] = [[] for _ in streams]
    for i, f in enumerate(first):
        got[i] += [r["seq"] for r in await f]
    await asyncio.gather(*(collect(s, set(made), g) for s, g in zip(streams, got, strict=True)))
    assert all(g == made for g in got), got
    assert hub.reads["streams"] == 20 and hub.reads["hub"] >= 1
    for s in streams:
        await s.aclose()
    assert hub.open_streams == 0
    await until(lambda: hub._task is None, "the hub stops with its last stream")


async def test_a_stream_from_the_past_catches_up_then_follows_without_a_gap_or_a_repeat(
    order: ServiceUnderTest,
) -> None:
    """More than two pages behind, while events keep coming during the catch-up."""
    hub = LiveTimeline(order.db.engine, max_streams=5, poll_interval=INTERVAL)
    before = await committed(order, 2 * live.CATCH_UP_PAGE + 50)
    stream = hub.follow(timeline.Follower(before[0] - 1))
    got: list[int] = []

    async def keep_writing() -> list[int]:
        made: list[int] = []
        for _ in range(20):
            made += await committed(order, 7)
            await asyncio.sleep(0.01)
        return made

    during = asyncio.ensure_future(keep_writing())
    reader = asyncio.ensure_future(collect(stream, set(before), got))
    made = await during
    await reader
    await collect(stream, set(made), got)
    await stream.aclose()
    ours = [s for s in got if s >= before[0]]
    assert len(ours) == len(set(ours)), "an event came twice"
    assert set(ours) >= set(before) | set(made)


async def test_an_event_that_commits_late_reaches_a_stream_that_follows_live(order: ServiceUnderTest) -> None:
    hub = LiveTimeline(order.db.engine, max_streams=5, poll_interval=INTERVAL)
    async with order.db.engine.connect() as slow:
        await slow.begin()
        [low] = await insert(slow)  # the lower seq, still uncommitted
        stream = hub.follow(await hub.start(None))
        pending = asyncio.ensure_future(anext(stream))
        [high] = await committed(order)
        got = [r["seq"] for r in await pending]
        await collect(stream, {high}, got)
        await slow.commit()
    await collect(stream, {low}, got)
    await stream.aclose()
    assert got == [high, low]


async def test_a_stream_that_falls_behind_ends_after_what_it_was_sent(order: ServiceUnderTest) -> None:
    """Its queue holds two reads; a third ends it, with nothing sent after a gap: what it
    was sent, then ``Ended``. Resuming after the last event it got misses nothing."""
    hub = LiveTimeline(order.db.engine, max_streams=5, queue_depth=2, poll_interval=INTERVAL)
    slow = hub.follow(await hub.start(None))
    lively = hub.follow(await hub.start(None))  # keeps the hub reading and shows each read
    first = asyncio.ensure_future(anext(slow))
    seen: list[int] = []
    reads = 0
    # reads with rows, while the slow stream takes none, until the hub ends it: its queue
    # of two overflows on the fourth read it is handed — or later, when the hub's first
    # read came after the lively stream's own and took two commits at once (a loaded
    # machine: the loop stopped at four reads, and the test waited for ever)
    async with asyncio.timeout(60):
        while reads < 4 or hub.open_streams > 1:
            assert reads < 50, "the slow stream was never ended"
            made = await committed(order)
            item = await anext(lively)
            assert isinstance(item, list)
            seen += [r["seq"] for r in item]
            reads += 1
    got = [r["seq"] for r in await first]  # the read it was waiting for when it stopped
    async with asyncio.timeout(30):
        rest = [item async for item in slow]
    assert isinstance(rest[-1], Ended) and "fell behind" in rest[-1].why
    assert all(isinstance(i, list) for i in rest[:-1]) and not rest[:-1], rest
    assert hub.open_streams == 1  # the slow one no longer counts
    resumed = hub.follow(timeline.Follower(got[-1]))
    after: list[int] = []
    await collect(resumed, set(seen) - set(got), after)
    assert set(got) | set(after) >= set(seen) and made[0] in after
    for s in (lively, resumed):
        await s.aclose()


async def test_full_counts_open_streams(order: ServiceUnderTest) -> None:
    hub = LiveTimeline(order.db.engine, max_streams=2, poll_interval=INTERVAL)
    streams = [hub.follow(await hub.start(None)) for _ in range(2)]
    assert not hub.full  # a stream counts once it runs
    first = [asyncio.ensure_future(anext(s)) for s in streams]
    await asyncio.sleep(0.2)
    assert hub.full and hub.open_streams == 2
    for f in first:  # a client goes away: its response's task is cancelled
        f.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await f
        assert not hub.full
    assert hub.open_streams == 0


async def test_an_outage_does_not_fill_a_streams_queue(order: ServiceUnderTest) -> None:
    """The hub says the database is away every second; a stream's queue holds a minute of
    reads, so a two-minute outage would have ended every stream for falling behind."""
    hub = LiveTimeline(order.db.engine, max_streams=5, queue_depth=2)
    queue = hub.subscribe()
    for _ in range(10):
        hub._hand(Away())
    assert hub.open_streams == 1 and queue.qsize() == 1
    hub._hand([{"seq": 1}])
    hub._hand([{"seq": 2}])  # but rows that find it full still do
    assert hub.open_streams == 0 and isinstance(queue.get_nowait(), Ended)


async def test_a_stream_resumed_past_every_event_starts_now(order: ServiceUnderTest) -> None:
    """A browser's Last-Event-ID from a database since wiped is past every event: the
    stream waited, silent, for the timeline to pass it."""
    hub = LiveTimeline(order.db.engine, max_streams=5, poll_interval=INTERVAL)
    stream = hub.follow(await hub.start(10**15))
    [made] = await committed(order)
    got: list[int] = []
    await collect(stream, {made}, got)
    await stream.aclose()
    assert got == [made]


async def test_a_stream_whose_client_leaves_mid_read_gives_its_connection_back_quietly(
    order: ServiceUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that leaves has its stream's task cancelled, and cancelled again until it
    ends (anyio's cancel scopes, under sse-starlette). A catch-up read under way was
    interrupted twice: psycopg gave up cancelling its query, closed the connection and
    logged a WARNING (an operator trial's ``sagactl tail --from-start --count 1``). The
    read is held here by a lock on the timeline, so that both cancellations find it."""
    # the hub reads once as it starts, before the lock (not the read held here), then waits
    hub = CountingReads(order.db.engine, max_streams=5, poll_interval=3600)
    pool = order.db.engine.pool
    before = await committed(order, 3)
    stream = hub.follow(timeline.Follower(before[0] - 1), hub.subscribe())
    await hub._hub_running()
    await until(lambda: hub.reads["hub"] == 1 and pool.checkedout() == 0, "the hub's first read")  # type: ignore[attr-defined]
    async with order.db.engine.connect() as holder:
        await holder.execute(text("LOCK TABLE saga_events IN ACCESS EXCLUSIVE MODE"))
        reading = asyncio.ensure_future(anext(stream))

        async def waiting_on_the_lock() -> bool:
            async with order.db.engine.connect() as conn:
                return bool(
                    await conn.scalar(
                        text(
                            "SELECT count(*) FROM pg_stat_activity"
                            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                        )
                    )
                )

        await until(waiting_on_the_lock, "the stream's read waiting on the lock", within=30)
        with caplog.at_level(logging.WARNING):
            reading.cancel()
            await asyncio.sleep(0)  # its cancellation under way, as anyio's next one comes
            reading.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reading
            await holder.rollback()  # the read goes on, and ends
    await until(lambda: pool.checkedout() == 0, "the read's connection given back")  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    await stream.aclose()
    assert hub._task is not None
    hub._task.cancel()


async def test_a_stream_resumed_gets_a_late_commit_below_its_last_event_id(order: ServiceUnderTest) -> None:
    """An attack trial held a timeline row open (seq 6) while a client read 7 to 11, left,
    and resumed from Last-Event-ID 11 after the row committed: the resumed stream never
    sent 6. It starts below, at the last event older than the late-commit window; what
    the client had comes again (it tells it by the ids), with any other recent event."""
    hub = LiveTimeline(order.db.engine, max_streams=5, poll_interval=INTERVAL)
    async with order.db.engine.connect() as late:
        [held] = await insert(late)  # its seq is taken, its row not yet committed
        after = await committed(order, 3)
        first = hub.follow(await hub.start(held - 1))
        got: list[int] = []
        await collect(first, set(after), got)
        assert held not in got
        await first.aclose()  # the client leaves ...
        await late.commit()  # ... and the row commits meanwhile
    resumed = hub.follow(await hub.start(after[-1]))  # Last-Event-ID: the last one it had
    again: list[int] = []
    await collect(resumed, {held}, again)
    await resumed.aclose()
    assert held in again
