"""The order service counts its orders' transitions as they commit (``order_svc.sagametrics``):
through the consumer's batches, the cancellations and the deadline sweeper, once each,
never for a transaction that rolled back; a saga's duration when it leaves PENDING."""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal

import pytest

from events import OrderLine, PaymentCompleted, PaymentFailed
from order_svc import handlers
from order_svc.cancelling import cancel_order, cancel_overdue
from order_svc.placing import place_order
from order_svc.sagametrics import OUTCOMES
from saga_kit.consumer import Outcome, Record
from saga_kit.db import Delivery, UnitOfWork
from tests.integration.conftest import ServiceUnderTest, event, record_of
from tests.unit.samples import reserved_payload


async def placed(order: ServiceUnderTest, deadline: timedelta = timedelta(minutes=10)) -> uuid.UUID:
    line = OrderLine(product_id="p", quantity=1)
    return (await place_order(order.db, "c", [line], None, deadline)).order_id


def approve_and_reject(approved: uuid.UUID, rejected: uuid.UUID) -> list[Record]:
    """One batch's records: ``approved`` reserved and charged, ``rejected``'s charge declined."""
    return [
        record_of(event(reserved_payload("c", "p"), approved)),
        record_of(event(PaymentCompleted(customer_id="c", amount=Decimal("2.50")), approved)),
        record_of(
            event(
                PaymentFailed(customer_id="c", amount=Decimal("2.50"), reason="insufficient_funds"), rejected
            )
        ),
    ]


#: transitions (from, to, reason) → count; sagas ended, by final status → count
Counted = tuple[Counter[tuple[str, str, str]], dict[str, int]]


def counted() -> Counted:
    """What OUTCOMES holds now."""
    return Counter(OUTCOMES.transitions), {s: h.n for s, h in OUTCOMES.durations.items()}


def since(before: Counted) -> tuple[dict[tuple[str, str, str], int], dict[str, int]]:
    """What OUTCOMES counted since ``before``."""
    transitions, ended = counted()
    return (
        {k: n for k, n in (transitions - before[0]).items() if n},
        {s: n - before[1].get(s, 0) for s, n in ended.items() if n - before[1].get(s, 0)},
    )


async def test_a_batchs_transitions_are_counted_and_logged_once_when_it_commits(
    order: ServiceUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="order_svc.sagametrics")
    approved, rejected = await placed(order), await placed(order)
    batch = approve_and_reject(approved, rejected)
    before = counted()
    assert await order.pipeline.process_batch(batch) == [Outcome.HANDLED] * 3
    assert since(before) == (
        {("PENDING", "APPROVED", ""): 1, ("PENDING", "REJECTED", "insufficient_funds"): 1},
        {"APPROVED": 1, "REJECTED": 1},
    )
    logged = {(r.getMessage(), getattr(r, "order_id", None)) for r in caplog.records}
    assert logged == {
        (f"order {approved}: PENDING -> APPROVED", approved),
        (f"order {rejected}: PENDING -> REJECTED (insufficient_funds)", rejected),
    }
    # redelivered: nothing happens, and nothing more is counted
    assert await order.pipeline.process_batch(batch) == [Outcome.DUPLICATE] * 3
    assert since(before)[1] == {"APPROVED": 1, "REJECTED": 1}
    # an approved order cancelled: a transition, not a second end of its saga
    await cancel_order(order.db, approved, "c")
    assert since(before) == (
        {
            ("PENDING", "APPROVED", ""): 1,
            ("PENDING", "REJECTED", "insufficient_funds"): 1,
            ("APPROVED", "CANCELLED", "cancelled_by_customer"): 1,
        },
        {"APPROVED": 1, "REJECTED": 1},
    )


async def test_the_sweepers_cancellations_are_counted_with_their_duration(order: ServiceUnderTest) -> None:
    await placed(order, timedelta(0))
    before = counted()
    cancelled = await cancel_overdue(order.db)
    assert cancelled >= 1
    transitions, ended = since(before)
    assert transitions == {("PENDING", "CANCELLED", "timeout"): cancelled}
    assert ended == {"CANCELLED": cancelled}
    assert OUTCOMES.durations["CANCELLED"].total > 0  # seconds from placed, not from the sweep


async def test_an_order_never_placed_is_counted_and_logged_as_it_is_cancelled(
    order: ServiceUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    """Answers about an order without a row record it CANCELLED (``unknown_order``;
    ``test_compensation``): one transition from no status, logged with its order id, and
    no saga's end (it never started here)."""
    caplog.set_level(logging.INFO, logger="order_svc.sagametrics")
    oid = uuid.uuid4()
    batch = [
        record_of(event(reserved_payload("c", "p"), oid)),
        record_of(event(PaymentCompleted(customer_id="c", amount=Decimal("2.50")), oid)),
    ]
    before = counted()
    assert await order.pipeline.process_batch(batch) == [Outcome.HANDLED] * 2
    assert since(before) == ({("", "CANCELLED", "unknown_order"): 1}, {})
    logged = [(r.getMessage(), r.order_id) for r in caplog.records if r.name == "order_svc.sagametrics"]
    assert logged == [(f"order {oid}: (never placed) -> CANCELLED (unknown_order)", oid)]


async def test_a_transaction_that_rolls_back_counts_nothing(
    order: ServiceUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that fails after its changes were saved (its second event's timeline entry)
    rolls back with both approvals in it; split, the first commits alone and the second is
    dead-lettered: one approval counted."""
    approved, poison = await placed(order), await placed(order)
    observe = handlers.reactions.observe
    assert observe is not None

    def failing(uow: UnitOfWork, deliveries: Sequence[Delivery], state: handlers.Orders | None) -> None:
        if any(d.envelope.order_id == poison for d in deliveries):
            raise RuntimeError("a timeline entry that cannot be written")
        observe(uow, deliveries, state)

    monkeypatch.setattr(handlers.reactions, "observe", failing)
    batch = [
        record_of(event(PaymentCompleted(customer_id="c", amount=Decimal("2.50")), approved)),
        record_of(event(PaymentCompleted(customer_id="c", amount=Decimal("2.50")), poison)),
    ]
    before = counted()
    assert await order.pipeline.process_batch(batch) == [Outcome.HANDLED, Outcome.DEAD_LETTERED]
    assert since(before) == ({("PENDING", "APPROVED", ""): 1}, {"APPROVED": 1})
