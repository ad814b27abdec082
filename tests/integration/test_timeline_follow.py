"""Following the timeline live never skips an event whose transaction commits late."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import text

from order_svc import timeline
from tests.integration.conftest import ServiceUnderTest


async def insert(conn: Any, event_type: str) -> int:
    seq: int = await conn.scalar(
        text(
            "INSERT INTO saga_events (event_id, order_id, event_type, producer, occurred_at, payload)"
            " VALUES (:e, :o, :t, 'order_svc', now(), '{}') RETURNING seq"
        ),
        {"e": uuid.uuid4(), "o": uuid.uuid4(), "t": event_type},
    )
    return seq


async def test_an_event_committed_after_a_higher_seq_is_still_delivered(order: ServiceUnderTest) -> None:
    engine = order.db.engine
    async with engine.connect() as conn:
        follower = await timeline.Follower.starting_now(conn)
        assert await follower.poll(conn) == []  # what existed before is not replayed

    async with engine.connect() as slow, engine.connect() as fast:
        await slow.begin()
        low = await insert(slow, "SlowToCommit")  # gets the lower seq, commits last
        async with fast.begin():
            high = await insert(fast, "QuickToCommit")
        assert low < high
        async with engine.connect() as conn:
            assert [r["seq"] for r in await follower.poll(conn)] == [high]
        await slow.commit()

    async with engine.connect() as conn:
        assert [r["seq"] for r in await follower.poll(conn)] == [low]
        assert await follower.poll(conn) == []  # and each is delivered once


async def test_a_follower_keeps_going_past_a_full_page_of_events_it_has_returned(
    order: ServiceUnderTest,
) -> None:
    """More events within the late-commit window than one page holds: each poll returns
    the next ones (the feed stood still once a page above the floor was all seen)."""
    engine = order.db.engine
    async with engine.connect() as conn:
        follower = await timeline.Follower.starting_now(conn)
    async with engine.begin() as conn:
        made = [await insert(conn, "Burst") for _ in range(12)]
    got: list[int] = []
    async with engine.connect() as conn:
        for _ in range(4):
            got += [r["seq"] for r in await follower.poll(conn, limit=5)]
    assert got == made  # 5, 5, 2, then nothing more: each once, in order
