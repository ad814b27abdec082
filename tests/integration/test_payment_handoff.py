"""A new charge or refund is claimed by the consumer transaction that made it due and
handed to the payment worker (``payment_svc.worker.HandOff``): the claim's guarantees hold
with no claim transaction of the worker's own — a crash after the hand-off leaves the
payment to the lease, a cancellation waits for the call, retries are not starved."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest

from events import OrderCancelled
from payment_svc.provider import PaymentProvider
from payment_svc.runtime import HANDOFF
from payment_svc.worker import PaymentWorker, claim, release
from saga_kit.retry import RetryPolicy
from tests.integration.conftest import ServiceUnderTest, add_account, event
from tests.integration.test_compensation import (
    balance,
    charged_at_provider,
    due_now,
    emitted_types,
    payment_row,
    provider_failing,
)
from tests.unit.samples import reserved_payload


def _handing_off(payment: ServiceUnderTest, concurrency: int) -> Iterator[PaymentWorker]:
    """A worker that opened the process's hand-off (as the service's does), claiming from
    the table at most hourly while something was handed off; the hand-off closed after."""
    assert payment.provider is not None
    yield PaymentWorker(
        payment.db,
        payment.provider,
        RetryPolicy(0.01, 0.2, 0.01),
        batch=64,
        concurrency=concurrency,
        handoff=HANDOFF,
        claim_every=3600.0,
    )
    HANDOFF.close()


@pytest.fixture
def handed(payment: ServiceUnderTest) -> Iterator[PaymentWorker]:
    """A worker taking the hand-off, 8 calls at a time."""
    yield from _handing_off(payment, 8)


@pytest.fixture
def serial(payment: ServiceUnderTest) -> Iterator[PaymentWorker]:
    """A worker taking the hand-off one call at a time: a round's second call waits for its first."""
    yield from _handing_off(payment, 1)


async def charge_intended(payment: ServiceUnderTest) -> tuple[str, uuid.UUID]:
    """A customer with 10.00 at the provider and an order of 5.00 whose InventoryReserved
    was delivered, the worker not run: (customer id, order id)."""
    cid, oid = await add_account(payment, "10.00"), uuid.uuid4()
    await payment.deliver(event(reserved_payload(cid, "p", qty=2), oid), work=False)
    return cid, oid


async def leased_for(payment: ServiceUnderTest, oid: uuid.UUID) -> float:
    """Seconds until the payment's next call is due (negative: due)."""
    value = await payment.scalar(
        "SELECT EXTRACT(EPOCH FROM next_attempt_at - clock_timestamp()) FROM payments WHERE order_id = :o",
        o=oid,
    )
    return float(value)


async def test_a_new_charge_is_claimed_in_its_transaction_and_called_from_the_hand_off(
    payment: ServiceUnderTest, handed: PaymentWorker
) -> None:
    cid, oid = await charge_intended(payment)
    assert await payment_row(payment, oid) == ("PENDING", 1)  # claimed: one attempt, leased
    assert await leased_for(payment, oid) > handed.lease - 5
    assert len(HANDOFF) == 1
    assert await handed.round() >= 1
    # called from the hand-off: still one attempt (a claim of the table's would be a second)
    assert await payment_row(payment, oid) == ("CHARGED", 1)
    assert await emitted_types(payment, oid) == ["PaymentCompleted"]
    assert await balance(payment, cid) == Decimal("5.00")


async def test_a_hand_off_lost_in_a_crash_is_called_when_its_lease_ends(
    payment: ServiceUnderTest, handed: PaymentWorker
) -> None:
    cid, oid = await charge_intended(payment)
    HANDOFF.clear()  # the process died after the commit, before the call
    assert oid not in {d.order_id for d in await claim(payment.db, 64, 60.0)}  # leased
    await due_now(payment, oid)  # the lease ends
    await payment.work()
    assert await payment_row(payment, oid) == ("CHARGED", 2)
    assert await balance(payment, cid) == Decimal("5.00")


async def test_a_cancel_takes_back_a_hand_off_not_yet_called_and_voids_it(
    payment: ServiceUnderTest, handed: PaymentWorker
) -> None:
    """Handed off and not yet taken by the worker, the charge has not been called: the
    cancellation takes it back (``HandOff.withdraw``), undoes its claim and voids it. It
    used to wait for the call, which charged, and then refund (a trial: cancelled while
    the worker's round was out, such charges were made after their cancellation)."""
    cid, oid = await charge_intended(payment)
    await payment.deliver(event(OrderCancelled(customer_id=cid, reason="timeout"), oid), work=False)
    assert await emitted_types(payment, oid) == ["PaymentVoided"]
    assert await payment_row(payment, oid) == ("VOIDED", 0)
    assert len(HANDOFF) == 0
    assert await handed.round() == 0
    assert not await charged_at_provider(payment, oid)
    assert await balance(payment, cid) == Decimal("10.00")


async def test_a_cancel_while_the_call_is_out_waits_for_it_then_refunds(
    payment: ServiceUnderTest, handed: PaymentWorker
) -> None:
    """Taken by the worker means the call may be out: the cancellation must not void (a
    charge could follow); the worker finishes the charge and refunds it."""
    cid, oid = await charge_intended(payment)
    async with provider_failing(payment, latency_ms=500):
        running = asyncio.create_task(handed.round())
        await asyncio.sleep(0.2)  # taken, its call out
        await payment.deliver(event(OrderCancelled(customer_id=cid, reason="timeout"), oid), work=False)
        assert await emitted_types(payment, oid) == []
        assert await asyncio.wait_for(running, 10) >= 1
    await payment.work()
    assert await emitted_types(payment, oid) == ["PaymentCompleted", "PaymentRefunded"]
    assert await balance(payment, cid) == Decimal("10.00")


async def test_a_charge_handed_off_while_a_slow_call_is_out_is_called_and_recorded_first(
    payment: ServiceUnderTest, handed: PaymentWorker
) -> None:
    """A round keeps its call slots full: a charge handed off while another call is out
    is called at once, and its answer recorded as it comes, not when the slow call
    answers. The round called a batch and recorded it when the batch's last call was
    answered: behind a provider answering in 1.5 s, a saga took ~3 s (a trial)."""
    (_, slow), (fast_customer, fast) = (
        await charge_intended(payment),
        (await add_account(payment, "10.00"), uuid.uuid4()),
    )
    provider = payment.provider
    assert provider is not None
    async with provider_failing(payment, latency_ms=1500):
        running = asyncio.create_task(handed.round())
        await asyncio.sleep(0.3)  # the slow call is out
        assert (await provider.request("PUT", "/v1/faults", {})).status_code == 200  # the next is fast
        await payment.deliver(event(reserved_payload(fast_customer, "p", qty=2), fast), work=False)
        await asyncio.sleep(0.6)  # the fast call answered long since, the slow one not yet
        assert not running.done()  # recorded while the slow call is still out
        assert await payment_row(payment, fast) == ("CHARGED", 1)
        assert await emitted_types(payment, fast) == ["PaymentCompleted"]
        assert await payment_row(payment, slow) == ("PENDING", 1)
        assert await asyncio.wait_for(running, 10) == 2  # one round called both
    assert await payment_row(payment, slow) == ("CHARGED", 1)
    assert await balance(payment, fast_customer) == Decimal("5.00")


async def test_a_refund_is_claimed_and_handed_off_by_the_cancellation(
    payment: ServiceUnderTest, handed: PaymentWorker
) -> None:
    cid, oid = await charge_intended(payment)
    await handed.round()
    assert await payment_row(payment, oid) == ("CHARGED", 1)
    await payment.deliver(event(OrderCancelled(customer_id=cid, reason="timeout"), oid), work=False)
    assert await payment_row(payment, oid) == ("REFUND_PENDING", 2)
    assert await leased_for(payment, oid) > handed.lease - 5
    assert len(HANDOFF) == 1
    assert await handed.round() >= 1
    assert await payment_row(payment, oid) == ("REFUNDED", 2)
    assert await balance(payment, cid) == Decimal("10.00")


async def test_retries_due_in_the_table_are_claimed_beside_the_hand_off(
    payment: ServiceUnderTest, handed: PaymentWorker
) -> None:
    """A round that has payments handed off claims from the table too, at most every
    ``claim_every`` s: a steady stream of new charges does not starve the retries."""
    cid = await add_account(payment, "100.00")
    waiting, first, second = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    HANDOFF.close()
    await payment.deliver(event(reserved_payload(cid, "p"), waiting), work=False)  # due in the table
    assert await payment_row(payment, waiting) == ("PENDING", 0)
    HANDOFF.open(handed.lease, handed.batch, lambda: True)
    await payment.deliver(event(reserved_payload(cid, "p"), first), work=False)
    assert await handed.round() >= 2  # its first round claims the table as well
    assert await payment_row(payment, waiting) == ("CHARGED", 1)
    assert await payment_row(payment, first) == ("CHARGED", 1)
    HANDOFF.close()
    await payment.deliver(event(reserved_payload(cid, "p"), waiting := uuid.uuid4()), work=False)
    HANDOFF.open(handed.lease, handed.batch, lambda: True)
    await payment.deliver(event(reserved_payload(cid, "p"), second), work=False)
    assert await handed.round() == 1  # the table was claimed less than an hour ago
    assert await payment_row(payment, second) == ("CHARGED", 1)
    assert await payment_row(payment, waiting) == ("PENDING", 0)
    assert await handed.round() >= 1  # nothing handed off: the table is claimed
    assert await payment_row(payment, waiting) == ("CHARGED", 1)


async def test_a_retry_due_in_the_table_is_not_starved_by_charges_handed_off(
    payment: ServiceUnderTest,
) -> None:
    """A round that holds 2 payments and calls one at a time, new charges handed off
    faster than it calls them: a charge due in the table (a retry, a refund owed, a
    payment released) has half the room whenever the table's claim is due, so it is
    called second, not after every charge handed off (the round took all its room from
    the hand-off, and the table waited for the stream to pause: a review)."""
    assert payment.provider is not None
    worker = PaymentWorker(
        payment.db, payment.provider, RetryPolicy(0.01, 0.2, 0.01), batch=2, concurrency=1, handoff=HANDOFF
    )
    try:
        cid = await add_account(payment, "100.00")
        retry, handed = uuid.uuid4(), [uuid.uuid4() for _ in range(4)]
        HANDOFF.close()
        await payment.deliver(event(reserved_payload(cid, "p"), retry), work=False)  # due in the table
        HANDOFF.open(worker.lease, 8, lambda: True)  # more waiting than the round holds
        for oid in handed:
            await payment.deliver(event(reserved_payload(cid, "p"), oid), work=False)
        assert len(HANDOFF) == 4
        assert await worker.round() == 5
        called = await payment.rows(
            "SELECT order_id FROM payments WHERE customer_id = :c AND status = 'CHARGED' ORDER BY updated_at",
            c=cid,
        )
        assert len(called) == 5
        assert [r.order_id for r in called].index(retry) == 1
    finally:
        HANDOFF.close()


async def test_a_charge_that_lands_after_the_cancel_wakes_the_worker_for_its_refund(
    payment: ServiceUnderTest, handed: PaymentWorker
) -> None:
    """The refund is owed at once: the worker's next round follows now, not at its next
    poll."""
    woken: list[int] = []
    handed.wake = lambda: woken.append(1)
    cid, oid = await charge_intended(payment)
    async with provider_failing(payment, latency_ms=500):
        running = asyncio.create_task(handed.round())
        await asyncio.sleep(0.2)  # taken, its call out: the cancellation waits for it
        await payment.deliver(event(OrderCancelled(customer_id=cid, reason="timeout"), oid), work=False)
        assert await asyncio.wait_for(running, 10) >= 1
    assert await payment_row(payment, oid) == ("REFUND_PENDING", 1)
    assert woken == [1]
    assert await handed.round() >= 1  # nothing handed off: the table is claimed, the refund made
    assert await payment_row(payment, oid) == ("REFUNDED", 2)
    assert await balance(payment, cid) == Decimal("10.00")
    assert woken == [1]  # a refund made leaves nothing due


async def test_a_hand_off_the_open_breaker_stopped_is_released_said_to_wait_and_voided_by_a_cancel(
    payment: ServiceUnderTest, handed: PaymentWorker
) -> None:
    """Claimed and handed off, then the breaker opened before the worker took it: it was
    dropped still claimed — in doubt though never called, silent until its lease ended,
    and a cancellation then charged and refunded it instead of voiding it (a re-check
    trial). Released, it is said to wait at once, and a cancellation voids it."""
    provider = payment.provider
    assert provider is not None
    cid, oid = await charge_intended(payment)
    assert len(HANDOFF) == 1 and await payment_row(payment, oid) == ("PENDING", 1)
    assert (await provider.request("PUT", "/v1/faults", {"outage": True})).status_code == 200
    try:
        for _ in range(5):  # PAYMENT_PROVIDER_BREAKER_FAILURES in the fixture
            await provider.probe()
        assert provider.state == "open"
        assert await handed.round() == 1  # released, and answered by the open breaker
        assert len(HANDOFF) == 0 and await emitted_types(payment, oid) == ["PaymentPending"]
        rows = await payment.rows(
            "SELECT attempts, nothing_done_calls FROM payments WHERE order_id = :o", o=oid
        )
        assert [(r.attempts, r.nothing_done_calls) for r in rows] == [(1, 1)]
        await payment.deliver(event(OrderCancelled(customer_id=cid, reason="timeout"), oid), work=False)
        assert await emitted_types(payment, oid) == ["PaymentPending", "PaymentVoided"]
        assert await payment_row(payment, oid) == ("VOIDED", 1)
    finally:
        assert (await provider.request("PUT", "/v1/faults", {})).status_code == 200
        await asyncio.sleep(provider.retry_after() + 0.2)  # the fixture's recovery: 1 s
        await provider.probe()
    assert provider.state == "closed"
    assert not await charged_at_provider(payment, oid)
    assert await balance(payment, cid) == Decimal("10.00")


async def test_a_hand_off_not_taken_when_the_service_stops_is_released(
    payment: ServiceUnderTest, handed: PaymentWorker
) -> None:
    """At a stop, the payments handed off and not called are released: left claimed,
    each waited out its lease in doubt, and a cancellation meanwhile charged and refunded
    it instead of voiding it."""
    cid, oid = await charge_intended(payment)
    assert len(HANDOFF) == 1 and await payment_row(payment, oid) == ("PENDING", 1)
    await handed.stop()
    assert len(HANDOFF) == 0 and await payment_row(payment, oid) == ("PENDING", 0)
    assert await leased_for(payment, oid) <= 0  # due now, for the next process's worker
    await payment.deliver(event(OrderCancelled(customer_id=cid, reason="timeout"), oid), work=False)
    assert await emitted_types(payment, oid) == ["PaymentVoided"]
    assert not await charged_at_provider(payment, oid)
    assert await balance(payment, cid) == Decimal("10.00")


async def test_a_hand_off_too_old_to_call_is_released_and_claimed_again_at_once(
    payment: ServiceUnderTest, handed: PaymentWorker
) -> None:
    """A payment that waited in the hand-off past the time its call could still end within
    its lease is passed over, not called: its claim is released, so it is due at once
    instead of waiting out its lease in doubt though never called (a trial)."""
    cid, oid = await charge_intended(payment)
    (waiting,) = HANDOFF.drain()
    HANDOFF.give([waiting], time.monotonic() - handed.lease)  # claimed a lease ago
    assert await handed.round() == 1  # passed over and released; claimed from the table, charged
    assert await payment_row(payment, oid) == ("CHARGED", 1)
    assert await balance(payment, cid) == Decimal("5.00")


async def test_a_round_at_a_graceful_stop_records_the_calls_out_and_releases_the_rest(
    payment: ServiceUnderTest, serial: PaymentWorker
) -> None:
    """At a graceful stop the round in progress is not cancelled (``PaymentWorker.finish``,
    the job's grace): the call already out is answered and recorded, and the payment whose
    call had not begun is released, due at once (by the round, or by ``PaymentWorker.stop``
    at the service's close if it was still handed off). Cancelled, the round lost both: each
    stayed claimed, in doubt, until its lease ended, and a cancellation meanwhile charged
    and refunded it instead of voiding it (a trial)."""
    first, second = await charge_intended(payment), await charge_intended(payment)
    async with provider_failing(payment, latency_ms=800):
        running = asyncio.create_task(serial.round())
        await asyncio.sleep(0.3)  # the first call is out
        serial.finish()
        assert await asyncio.wait_for(running, 10) == 1
    await serial.stop()
    rows = {oid: await payment_row(payment, oid) for _, oid in (first, second)}
    assert sorted(rows.values()) == [("CHARGED", 1), ("PENDING", 0)]
    (called,) = [(cid, oid) for cid, oid in (first, second) if rows[oid][0] == "CHARGED"]
    (released,) = [(cid, oid) for cid, oid in (first, second) if rows[oid][0] == "PENDING"]
    assert await emitted_types(payment, called[1]) == ["PaymentCompleted"]
    assert await balance(payment, called[0]) == Decimal("5.00")
    assert await leased_for(payment, released[1]) <= 0  # due now, for the next process's worker
    await payment.deliver(event(OrderCancelled(customer_id=released[0], reason="timeout"), released[1]))
    assert await emitted_types(payment, released[1]) == ["PaymentVoided"]
    assert await balance(payment, released[0]) == Decimal("10.00")


async def test_a_cancel_takes_back_a_charge_its_round_took_and_has_not_called(
    payment: ServiceUnderTest, serial: PaymentWorker
) -> None:
    """A round calls ``concurrency`` at a time: a payment waiting for a call slot has not
    been called, and a cancellation takes it back (``HandOff.withdraw``) and voids it.
    Taken by a round of old, it was charged when its slot came, after the cancellation,
    then refunded (a re-check trial: 8 of 24)."""
    (_, out), (cid, waiting) = await charge_intended(payment), await charge_intended(payment)
    async with provider_failing(payment, latency_ms=800):
        running = asyncio.create_task(serial.round())
        await asyncio.sleep(0.3)  # the first's call out, the second waiting for its slot
        await payment.deliver(event(OrderCancelled(customer_id=cid, reason="timeout"), waiting), work=False)
        assert await emitted_types(payment, waiting) == ["PaymentVoided"]
        assert await asyncio.wait_for(running, 10) == 1  # the first only
    assert await payment_row(payment, out) == ("CHARGED", 1)
    assert await payment_row(payment, waiting) == ("VOIDED", 0)
    assert not await charged_at_provider(payment, waiting)
    assert await balance(payment, cid) == Decimal("10.00")


async def test_a_release_voids_a_charge_cancelled_meanwhile(
    payment: ServiceUnderTest, handed: PaymentWorker
) -> None:
    """A charge claimed, not called, and cancelled where its claim could not be taken back
    (the cancellation read by another instance after a rebalance, say: it found the
    charge claimed, in doubt): ``release`` undoes the claim, the provider cannot have
    charged it, so it voids it. Released only, the next claim charged it, and the refund
    followed (a trial: 6 of 6 cancelled before a stop)."""
    cid, oid = await charge_intended(payment)
    (claimed,) = HANDOFF.drain()  # held by a worker this process's consumer cannot reach
    await payment.deliver(event(OrderCancelled(customer_id=cid, reason="timeout"), oid), work=False)
    assert await emitted_types(payment, oid) == []  # in doubt: marked, left to the call
    assert await release(payment.db, [claimed], handed.lease) == 1
    assert await payment_row(payment, oid) == ("VOIDED", 0)
    assert await emitted_types(payment, oid) == ["PaymentVoided"]
    assert await handed.round() == 0
    assert not await charged_at_provider(payment, oid)
    assert await balance(payment, cid) == Decimal("10.00")


async def test_behind_a_backlog_in_the_table_each_payment_is_called_once_and_those_handed_off_early(
    payment: ServiceUnderTest, provider_endpoint: str
) -> None:
    """One call at a time, 4 payments held, 40 charges due in the table and 3 handed off:
    the table's claim is due at every answer, and at one slot free it took the slot every
    time, so the charges handed off were not taken until the backlog was gone — one waited
    out its lease in the hand-off, was claimed again and counted in doubt; and claims put
    at the front of the round's line overtook those taken before them, which then waited
    out their leases too and were called twice (an attack trial: 33 calls for 30 orders,
    the first orders charged last). The odd slot goes to each in turn, the line is first
    come first called: every payment is charged with one claim, one call, and those handed
    off among the first."""
    provider = PaymentProvider(provider_endpoint, timeout=0.5, breaker_failures=5, breaker_recovery=1.0)
    worker = PaymentWorker(
        payment.db, provider, RetryPolicy(0.01, 0.2, 0.01), batch=4, concurrency=1, handoff=HANDOFF
    )
    try:
        cid = await add_account(payment, "1000.00")
        backlog, handed = [uuid.uuid4() for _ in range(40)], [uuid.uuid4() for _ in range(3)]
        HANDOFF.close()
        for oid in backlog:
            await payment.deliver(event(reserved_payload(cid, "p"), oid), work=False)  # due in the table
        calling = provider.timeout * 4  # as the worker opened it: 4 held, 1 at a time
        HANDOFF.open(worker.lease, 4, lambda: True, calling)
        for oid in handed:
            await payment.deliver(event(reserved_payload(cid, "p"), oid), work=False)
        assert len(HANDOFF) == 3
        query = (
            "SELECT order_id, attempts FROM payments WHERE customer_id = :c AND status = 'CHARGED'"
            " ORDER BY updated_at"
        )
        async with provider_failing(payment, latency_ms=100):  # 40 calls: 4 s, past the 3.5 s lease
            deadline = time.monotonic() + 60
            while len(charged := await payment.rows(query, c=cid)) < 43 and time.monotonic() < deadline:
                await worker.round()
        assert len(charged) == 43
        assert [r.order_id for r in charged if r.attempts != 1] == []  # one claim, one call each
        first = [r.order_id for r in charged[:8]]
        assert set(handed) <= set(first), [r.order_id in handed for r in charged]
    finally:
        HANDOFF.close()
        await provider.aclose()


async def test_a_payment_released_keeps_its_place_in_the_line(
    payment: ServiceUnderTest, handed: PaymentWorker
) -> None:
    """Handed off, then released uncalled (it waited too long), a charge is due from when it
    was claimed, before one that came due after it: due from its release, it went behind
    every payment due since, and the first orders of a burst were charged last (a
    re-check trial)."""
    cid, first = await charge_intended(payment)
    (claimed,) = HANDOFF.drain()
    HANDOFF.close()
    later = uuid.uuid4()
    await payment.deliver(event(reserved_payload(cid, "p"), later), work=False)  # due in the table
    await release(payment.db, [claimed], handed.lease)
    assert await leased_for(payment, first) < await leased_for(payment, later) <= 0
    rows = await payment.rows(
        "SELECT order_id FROM payments WHERE customer_id = :c AND next_attempt_at <= clock_timestamp()"
        " ORDER BY next_attempt_at",
        c=cid,
    )
    assert [r.order_id for r in rows] == [first, later]


async def test_nothing_is_handed_off_while_the_table_holds_more_than_a_round_takes(
    payment: ServiceUnderTest,
) -> None:
    """A claim of the table that took all it asked for says a backlog waits there: a new
    charge is left due behind it, not handed off past it (a re-check trial: handed off,
    the 29th order of a burst was charged 9th); once a claim finds less, the hand-off
    takes new charges again."""
    assert payment.provider is not None
    cid = await add_account(payment, "100.00")
    HANDOFF.close()
    for _ in range(4):
        await payment.deliver(event(reserved_payload(cid, "p"), uuid.uuid4()), work=False)  # the backlog
    worker = PaymentWorker(
        payment.db, payment.provider, RetryPolicy(0.01, 0.2, 0.01), batch=2, concurrency=1, handoff=HANDOFF
    )
    try:
        assert HANDOFF.room()[0] == 2
        async with provider_failing(payment, latency_ms=200):
            running = asyncio.create_task(worker.round())
            deadline = time.monotonic() + 5
            while HANDOFF.room() != (0, 0.0):  # its first claim took the 2 it asked for
                assert time.monotonic() < deadline and not running.done(), "handed off past the backlog"
                await asyncio.sleep(0.01)
            behind = uuid.uuid4()
            await payment.deliver(event(reserved_payload(cid, "p"), behind), work=False)
            assert len(HANDOFF) == 0 and await payment_row(payment, behind) == ("PENDING", 0)
            await asyncio.wait_for(running, 30)  # the backlog, and the one behind it
        assert await payment_row(payment, behind) == ("CHARGED", 1)
        assert HANDOFF.room()[0] == 2  # its last claim found less than it asked for
        await payment.deliver(event(reserved_payload(cid, "p"), uuid.uuid4()), work=False)
        assert len(HANDOFF) == 1
    finally:
        HANDOFF.close()


async def test_a_charge_left_in_the_table_for_want_of_room_is_not_passed_by_one_handed_off(
    payment: ServiceUnderTest, handed: PaymentWorker
) -> None:
    """The hand-off full, a new charge is left due in the table; one that comes after it is
    left there too, behind it, though the worker has taken from the hand-off meanwhile:
    handed off, it was called before the one in the table (a re-check trial: orders 8 and
    9 of a burst charged before 5, 6 and 7)."""
    HANDOFF.open(handed.lease, 1, lambda: True)
    cid, first = await charge_intended(payment)
    assert len(HANDOFF) == 1
    second, third = uuid.uuid4(), uuid.uuid4()
    await payment.deliver(event(reserved_payload(cid, "p"), second), work=False)
    assert len(HANDOFF) == 1 and await payment_row(payment, second) == ("PENDING", 0)  # no room
    assert [d.order_id for d in HANDOFF.take(1)] == [first]  # a round took it: there is room
    await payment.deliver(event(reserved_payload(cid, "p"), third), work=False)
    assert len(HANDOFF) == 0 and await payment_row(payment, third) == ("PENDING", 0)  # behind the second
    claimed = await claim(payment.db, 10, handed.lease)
    mine = [d.order_id for d in claimed if d.customer_id == cid]
    assert mine == [second, third]  # the table's line, in order
    await release(payment.db, claimed, handed.lease)
