"""Admission control: an order that cannot finish before its deadline is refused at once."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import text

from order_svc.admission import Admission
from saga_kit.outbox import on_broker
from tests.integration.conftest import ServiceUnderTest


@pytest.fixture(autouse=True)
async def published(order: ServiceUnderTest) -> None:
    """The outbox as a running relay leaves it: no test here runs one, and the events the
    other tests' orders emitted would read as a broker away for minutes."""
    await order.relay_caught_up()


async def _outbox_row(order: ServiceUnderTest, written_ago: float, sent_ago: float | None = None) -> None:
    """An event in the order service's outbox, written ``written_ago`` seconds ago and sent
    ``sent_ago`` seconds ago (None: not yet)."""
    async with order.db.unit_of_work() as uow:
        await uow.conn.execute(
            text(
                "INSERT INTO outbox (event_id, topic, key, value, created_at, sent_at)"
                " VALUES (gen_random_uuid(), 'orders.events', 'k', 'v',"
                " clock_timestamp() - make_interval(secs => :w),"
                " clock_timestamp() - make_interval(secs => CAST(:s AS double precision)))"
            ),
            {"w": written_ago, "s": sent_ago},
        )


async def _pending_orders(order: ServiceUnderTest, n: int, waiting_seconds: float) -> list[uuid.UUID]:
    """``n`` PENDING orders placed ``waiting_seconds`` ago."""
    ids = [uuid.uuid4() for _ in range(n)]
    async with order.db.unit_of_work() as uow:
        await uow.conn.execute(
            text(
                "INSERT INTO orders (order_id, customer_id, status, created_at, deadline_at)"
                " SELECT o, 'c', 'PENDING', clock_timestamp() - make_interval(secs => :w),"
                " clock_timestamp() + interval '1 hour' FROM unnest(CAST(:o AS UUID[])) o"
            ),
            {"o": ids, "w": waiting_seconds},
        )
    return ids


async def _finish(order: ServiceUnderTest, ids: list[uuid.UUID]) -> None:
    async with order.db.unit_of_work() as uow:  # leave them finished for the other tests
        await uow.conn.execute(
            text("UPDATE orders SET status = 'CANCELLED', reason = 'timeout' WHERE order_id = ANY(:o)"),
            {"o": ids},
        )


async def test_a_backlog_that_cannot_finish_in_time_is_refused_with_retry_after(
    order: ServiceUnderTest,
) -> None:
    admission = Admission(order.db, headroom=0.5, min_pending=50, refresh_seconds=0)
    assert await admission.check(30) is None  # a quiet system never refuses
    burst = await _pending_orders(order, 60, waiting_seconds=0.5)
    try:
        assert await admission.check(30) is None  # a burst that just arrived is no backlog
    finally:
        await _finish(order, burst)
    queued = await _pending_orders(order, 60, waiting_seconds=40)
    try:
        refusal = await admission.check(30)  # sagas waiting 40 s: a new one would wait ~80 s
        assert refusal is not None and refusal.retry_after >= 1 and "overloaded" in refusal.detail
        assert await admission.check(3600) is None  # a patient order is still taken
        assert admission.refused == 1
    finally:
        await _finish(order, queued)
    assert await admission.check(30) is None  # drained: accepted again


async def test_one_stuck_saga_refuses_nobody(order: ServiceUnderTest) -> None:
    admission = Admission(order.db, headroom=0.5, min_pending=1, refresh_seconds=0)
    stuck = await _pending_orders(order, 1, waiting_seconds=600)
    flowing = await _pending_orders(order, 20, waiting_seconds=0.2)
    try:
        assert await admission.check(30) is None  # the median, not the oldest, decides
    finally:
        await _finish(order, stuck + flowing)


async def test_the_backlog_is_read_off_the_requests_path(
    order: ServiceUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Figures past ``refresh_seconds``: the request is answered on them at once and one
    read starts behind it; past ``max_stale_seconds``: the request waits for the read."""
    admission = Admission(order.db, min_pending=10_000, refresh_seconds=0.25, max_stale_seconds=5)
    assert await admission.check(30) is None  # no figures yet: read on the request's path
    pending = admission._backlog.pending
    read, reads, held = admission._read, 0, asyncio.Event()

    async def held_read() -> None:
        nonlocal reads
        reads += 1
        await held.wait()
        await read()

    monkeypatch.setattr(admission, "_read", held_read)
    queued = await _pending_orders(order, 3, waiting_seconds=40)
    try:
        admission._read_at -= 1  # a second old: stale, not too stale
        assert await asyncio.wait_for(admission.check(30), 1) is None  # not waiting for the read
        assert await asyncio.wait_for(admission.check(30), 1) is None
        assert reads == 1  # one read behind, not one per request
        held.set()
        assert admission._reading is not None
        await admission._reading
        assert admission._backlog.pending == pending + 3  # the read behind brought the new figures
        held.clear()
        admission._read_at -= 10  # too stale: the request waits
        waiting = asyncio.create_task(admission.check(30))
        await asyncio.sleep(0.1)
        assert not waiting.done() and reads == 2
        held.set()
        assert await waiting is None
    finally:
        await _finish(order, queued)


async def test_orders_are_refused_while_the_broker_has_taken_no_event_for_half_their_deadline(
    order: ServiceUnderTest,
) -> None:
    """A broker away for longer than an order's deadline allows: no saga moves, and the few
    in flight do not show it to the backlog gate (an operator trial: every order accepted
    during a 45 s outage was cancelled for its deadline). A blip refuses nobody."""
    admission = Admission(order.db, headroom=0.5, min_pending=100, refresh_seconds=0)
    await _outbox_row(order, written_ago=2)
    assert await admission.check(30) is None  # a blip
    assert await admission.check(2) is None  # not an outage, whatever the deadline
    await order.relay_caught_up()
    await _outbox_row(order, written_ago=20)
    refusal = await admission.check(30)
    assert refusal is not None and refusal.broker and refusal.expected_wait >= 20
    assert "the broker has taken none of the order service's events for 20 s" in refusal.detail
    assert refusal.retry_after >= 1
    assert await admission.check(60) is None  # an order that may wait 30 s is taken
    await order.relay_caught_up()  # the broker is back
    assert await admission.check(30) is None


async def test_events_published_again_for_a_new_broker_are_not_an_outage(order: ServiceUnderTest) -> None:
    """After a restart on a new broker the outbox's last hour is unsent again, rows written
    up to an hour ago: that read as a broker away for an hour and refused every order
    while they drained (an attack trial). Their wait counts from the new broker."""
    admission = Admission(order.db, headroom=0.5, min_pending=100, refresh_seconds=0)
    await _outbox_row(order, written_ago=50 * 60, sent_ago=49 * 60)
    assert await on_broker(order.db.engine, f"first-{uuid.uuid4()}") >= 0
    assert await on_broker(order.db.engine, f"second-{uuid.uuid4()}") >= 1  # unsent again
    try:
        assert await admission.check(30) is None
    finally:
        await order.relay_caught_up()
