"""The payment worker's hand-off (``payment_svc.worker.HandOff``), pure: when the consumer
may claim for the worker, how many, and what the worker takes."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from payment_svc import worker
from payment_svc.provider import PaymentProvider
from payment_svc.worker import Due, HandOff
from saga_kit.retry import RetryPolicy


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The hand-off's ``time.monotonic``, read from ``clock[0]`` (1000.0 at first): a test
    moves it on."""
    now = [1000.0]
    monkeypatch.setattr(worker.time, "monotonic", lambda: now[0])
    return now


def due(n: int) -> Due:
    return Due(uuid.UUID(int=n), "c", Decimal("1.00"), "PENDING", 1)


def test_nothing_is_handed_off_before_the_worker_opens_it_or_after_it_closes() -> None:
    handoff = HandOff()
    assert handoff.room() == (0, 0.0)
    handoff.open(11.0, 4, lambda: True)
    assert handoff.room() == (4, 11.0)
    handoff.give([due(1)], worker.time.monotonic())
    handoff.close()
    assert handoff.room() == (0, 0.0)
    assert handoff.take(10) == []  # the process's claims are forgotten: their leases end
    handoff.give([due(2)], worker.time.monotonic())  # committed after the close
    assert len(handoff) == 0


def test_nothing_is_handed_off_while_the_worker_would_not_call_at_once() -> None:
    """The breaker open or half-open: the payment is left due, for the worker's claim."""
    closed = [False]
    handoff = HandOff()
    handoff.open(11.0, 4, lambda: closed[0])
    assert handoff.room() == (0, 0.0)
    closed[0] = True
    assert handoff.room() == (4, 11.0)


def test_at_most_a_round_waits_and_the_worker_takes_the_oldest_first() -> None:
    handoff = HandOff()
    handoff.open(11.0, 3, lambda: True)
    handoff.give([due(1), due(2)], worker.time.monotonic())
    assert handoff.room() == (1, 11.0)
    handoff.give([due(3)], worker.time.monotonic())
    assert handoff.room() == (0, 11.0)
    assert [d.order_id.int for d in handoff.take(2)] == [1, 2]
    assert handoff.room() == (2, 11.0)
    assert [d.order_id.int for d in handoff.take(5)] == [3]
    assert handoff.take(5) == []


def test_a_payment_whose_lease_could_end_in_its_calls_is_not_called(clock: list[float]) -> None:
    """Its claim is too old to be sure of a call within the lease (10 s, of which a round's
    calls may take 6): it is passed over, for the worker to release its claim (left
    claimed, it waited out its lease in doubt though never called: a trial), once."""
    handoff = HandOff()
    handoff.open(10.0, 8, lambda: True, calling=6.0)
    handoff.give([due(1)], worker.time.monotonic())
    clock[0] += 4.0
    handoff.give([due(2)], worker.time.monotonic())
    clock[0] += 1.5  # the first waited 5.5 s of its 10 s lease, more than 10 - 6; the second 1.5 s
    assert [d.order_id.int for d in handoff.take(8)] == [2]
    assert len(handoff) == 0
    assert [d.order_id.int for d in handoff.passed_over()] == [1]
    assert handoff.passed_over() == []


def test_one_that_waited_too_long_is_passed_over_though_none_is_taken(
    clock: list[float],
) -> None:
    """A round with no room takes none, and looks all the same: one left until its lease
    ended was claimed again, counted in doubt, and a cancellation charged and refunded it
    (an attack trial). Those not yet too old stay, in order."""
    handoff = HandOff()
    handoff.open(10.0, 8, lambda: True, calling=6.0)
    handoff.give([due(1), due(2)], worker.time.monotonic())
    clock[0] += 2.0
    handoff.give([due(3)], worker.time.monotonic())
    assert handoff.take(0) == [] and handoff.passed_over() == []
    clock[0] += 2.5  # the first two waited 4.5 s, more than 10 - 6 - the margin; the third 2.5 s
    assert handoff.take(0) == []
    assert [d.order_id.int for d in handoff.passed_over()] == [1, 2]
    assert [d.order_id.int for d in handoff.take(8)] == [3]


def test_nothing_is_handed_off_past_a_payment_left_in_the_table_until_the_worker_claims_it() -> None:
    """A payment left due for want of room (``spill``) is a backlog: none is handed off
    past it, whatever room there is, until the worker's claim of the table finds less
    than it asked for (it clears ``backlog``). A new worker's first look claims the table."""
    handoff = HandOff()
    handoff.open(11.0, 1, lambda: True)
    handoff.give([due(1)], worker.time.monotonic())
    handoff.spill()  # a second, left in the table
    assert [d.order_id.int for d in handoff.take(1)] == [1]
    assert handoff.room() == (0, 0.0)
    handoff.backlog = False  # the worker's claim found less than it asked for
    assert handoff.room() == (1, 11.0)
    handoff.spill()
    handoff.open(11.0, 1, lambda: True)
    assert handoff.room() == (1, 11.0)


def test_drained_are_every_payment_handed_off_and_not_called(clock: list[float]) -> None:
    """The breaker opened, or the service stops: the worker releases the claims of all it
    will not call — those waiting, and those passed over as too old (a trial: the release
    took what ``take`` gave, and the old ones stayed claimed)."""
    handoff = HandOff()
    handoff.open(10.0, 8, lambda: True, calling=6.0)
    handoff.give([due(1), due(2)], worker.time.monotonic())
    clock[0] += 5.0
    handoff.give([due(3)], worker.time.monotonic())
    assert [d.order_id.int for d in handoff.drain()] == [1, 2, 3]  # 1 and 2 too old to call
    assert len(handoff) == 0 and handoff.drain() == [] and handoff.passed_over() == []
    handoff.give([due(4)], worker.time.monotonic() - 5.0)
    assert handoff.take(8) == []
    assert [d.order_id.int for d in handoff.drain()] == [4]  # passed over, then drained


@pytest.mark.parametrize(("batch", "concurrency"), [(1, 1), (32, 8), (32, 32), (10, 3)])
def test_a_payment_taken_at_the_last_moment_is_called_within_its_lease(
    batch: int, concurrency: int, clock: list[float]
) -> None:
    """The worker's lease outlasts a round whose calls (``batch``, ``concurrency`` at a time,
    each up to the timeout) start with a payment handed off as late as it may be taken. At
    half the lease, a round of four calls one after another outlived it (a review)."""
    provider = PaymentProvider("http://127.0.0.1:9", timeout=5.0, breaker_failures=5, breaker_recovery=1.0)
    handoff = HandOff()
    w = worker.PaymentWorker(
        None,  # type: ignore[arg-type]  # nothing here touches the database
        provider,
        RetryPolicy(),
        batch=batch,
        concurrency=concurrency,
        handoff=handoff,
    )
    calls = 5.0 * -(-batch // concurrency)  # the round's calls at their slowest
    latest = w.lease - calls - worker.LEASE_MARGIN_SECONDS
    handoff.give([due(1)], worker.time.monotonic())
    clock[0] += latest - 0.01
    assert len(handoff.take(1)) == 1  # the latest it is taken …
    # … and its calls end within its lease, the margin left for the round's records
    assert clock[0] - 1000.0 + calls + worker.LEASE_MARGIN_SECONDS < w.lease
    handoff.give([due(2)], worker.time.monotonic())
    clock[0] += latest + 0.01
    assert handoff.take(1) == []


def test_a_payment_s_lease_counts_from_its_claim_not_from_the_commit(clock: list[float]) -> None:
    """The lease starts when the consumer's transaction claims the row, which its commit
    may follow late (a slow commit, a busy loop): dated from the commit, a handed-off call
    could outlive the lease by that much, and another instance would claim the row and
    call again under the same key (a review)."""
    handoff = HandOff()
    handoff.open(10.0, 8, lambda: True, calling=6.0)
    claimed_at = clock[0]
    clock[0] += 4.5  # the commit came 4.5 s after the claim: 5.5 s of lease left, under 6
    handoff.give([due(1)], claimed_at)
    assert handoff.take(8) == []
    handoff.give([due(2)], clock[0] - 1.0)  # 9 s left: called
    assert [d.order_id.int for d in handoff.take(8)] == [2]


def test_a_payment_is_taken_back_only_until_its_call_begins(clock: list[float]) -> None:
    """``withdraw`` finds a payment waiting, passed over or taken by a round and waiting
    for a call slot (``queue``); once its call began (``begin``), or for another claim of
    the same order, it finds nothing."""
    handoff = HandOff()
    handoff.open(11.0, 8, lambda: True, calling=4.0)
    handoff.give([due(1), due(2), due(3)], worker.time.monotonic())
    assert handoff.withdraw(uuid.UUID(int=1), 1)  # waiting
    assert not handoff.withdraw(uuid.UUID(int=1), 1)  # once only
    taken = handoff.take(8)
    assert taken == [due(2), due(3)]
    # taken, and queued for its call by the taking itself: the round's transactions come
    # before it calls (an attack trial: taken, not yet queued, a cancellation missed it)
    assert handoff.begin(due(2))  # its call begins: no longer to be taken back
    assert not handoff.withdraw(uuid.UUID(int=2), 1)
    assert not handoff.withdraw(uuid.UUID(int=3), 2)  # another claim than the one taken
    assert handoff.withdraw(uuid.UUID(int=3), 1)  # waiting for a slot
    assert not handoff.begin(due(3))  # so the round does not call it
    claimed = Due(uuid.UUID(int=5), "c", Decimal("1.00"), "PENDING", 2)  # from the table
    handoff.queue([claimed])
    assert handoff.withdraw(uuid.UUID(int=5), 2) and not handoff.begin(claimed)
    handoff.give([due(4)], clock[0])
    clock[0] += 8.0
    assert handoff.take(8) == []  # passed over: never called
    assert handoff.withdraw(uuid.UUID(int=4), 1)
    assert handoff.passed_over() == []
