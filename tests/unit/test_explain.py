"""The saga explanation: why it ended so, and whether everything owed was done."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from order_svc.explain import explain


def timeline(*types: str, **payloads: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"event_type": t, "payload": payloads.get(t, {})} for t in types]


HAPPY = ("OrderCreated", "InventoryReserved", "PaymentCompleted", "OrderApproved", "InventoryCommitted")


def test_approved_is_read_off_the_timeline() -> None:
    e = explain("APPROVED", None, timeline(*HAPPY, PaymentCompleted={"amount": "12.50"}))
    assert e.verdict == "approved: stock reserved, payment charged 12.50, sale committed"
    assert [(c.done_by, c.owed_by) for c in e.owed] == [("InventoryCommitted", "inventory_svc")]
    assert e.settled is True


def test_an_approval_not_yet_committed_says_who_owes_it() -> None:
    e = explain("APPROVED", None, timeline(*HAPPY[:-1]))
    assert "sale not yet committed by inventory_svc" in e.verdict
    assert e.owed[0].done_by is None and e.settled is False


@pytest.mark.parametrize("odd", ["PaymentFailed", "PaymentRefunded", "InventoryReleased", "PaymentVoided"])
def test_an_approved_saga_holding_a_compensation_is_not_called_healthy(odd: str) -> None:
    e = explain("APPROVED", None, timeline(*HAPPY, odd))
    assert f"inconsistent: an approved saga holds {odd}" in e.verdict and e.settled is False


def test_in_flight_names_the_last_step_who_acts_next_and_the_deadline() -> None:
    e = explain("PENDING", None, timeline("OrderCreated", "InventoryReserved"))
    assert e.verdict == (
        "in flight: the last step was InventoryReserved; waiting for payment_svc to charge the customer"
    )
    assert e.settled is None
    deadline = datetime(2026, 12, 7, 17, 30, 5, 250000, tzinfo=UTC)
    e = explain("PENDING", None, timeline("OrderCreated"), deadline_at=deadline)
    assert e.verdict == (
        "in flight: the last step was OrderCreated; waiting for inventory_svc to reserve the stock;"
        " its deadline is 2026-12-07T17:30:05+00:00: cancelled then"
    )
    ended = explain("CANCELLED", "timeout", timeline("OrderCreated", "OrderCancelled"), deadline_at=deadline)
    assert "deadline is" not in ended.verdict  # said only while in flight


def test_rejected_for_stock_owes_nothing_and_names_the_products() -> None:
    e = explain(
        "REJECTED",
        "insufficient_stock",
        timeline(
            "OrderCreated",
            "InventoryReservationFailed",
            "OrderRejected",
            InventoryReservationFailed={"product_ids": ["gadget"]},
        ),
    )
    assert "insufficient stock" in e.verdict and "gadget" in e.verdict
    assert "nothing needed undoing" in e.verdict
    assert e.owed == [] and e.settled is True


@pytest.mark.parametrize(("released", "settled"), [(True, True), (False, False)])
def test_rejected_for_funds_owes_the_reservation(released: bool, settled: bool) -> None:
    events = ["OrderCreated", "InventoryReserved", "PaymentFailed", "OrderRejected"]
    if released:
        events.append("InventoryReleased")
    e = explain("REJECTED", "insufficient_funds", timeline(*events))
    assert "declined" in e.verdict
    assert [(c.because_of, c.done_by) for c in e.owed] == [
        ("InventoryReserved", "InventoryReleased" if released else None)
    ]
    assert e.settled is settled


@pytest.mark.parametrize("answer", ["PaymentFailed", "PaymentCompleted", "PaymentPending"])
def test_a_payment_answer_heard_before_the_reservation_proves_one(answer: str) -> None:
    """Payment answers only a reservation (its intent is made on InventoryReserved): heard
    first — the two come on different topics — it proves stock is held. The explanation
    said "nothing was held or charged", settled, while stock was held (a review)."""
    status, reason = (
        ("REJECTED", "insufficient_funds") if answer == "PaymentFailed" else ("CANCELLED", "timeout")
    )
    events = ["OrderCreated", answer, "OrderRejected" if status == "REJECTED" else "OrderCancelled"]
    e = explain(status, reason, timeline(*events))
    assert ("give reserved or sold stock back", answer, None) in [
        (c.action, c.because_of, c.done_by) for c in e.owed
    ]
    assert e.settled is False and "nothing was held" not in e.verdict
    released = explain(status, reason, timeline(*events, "InventoryReleased"))
    assert released.owed[0].done_by == "InventoryReleased"


def test_cancelled_after_approval_owes_stock_and_money() -> None:
    e = explain(
        "CANCELLED",
        "cancelled_by_customer",
        timeline(*HAPPY, "OrderCancelled", "InventoryReleased", "PaymentRefunded"),
    )
    assert e.verdict == "cancelled: the customer cancelled it after it was approved"
    assert [c.done_by for c in e.owed] == ["InventoryReleased", "PaymentRefunded"]
    assert e.settled is True


def test_timeout_before_any_charge_owes_the_reservation_and_payment_s_word() -> None:
    """Payment's part of a cancellation is not assumed: it is owed until payment voids
    (or refunds, or had declined)."""
    e = explain("CANCELLED", "timeout", timeline("OrderCreated", "InventoryReserved", "OrderCancelled"))
    assert "deadline" in e.verdict
    assert [(c.action, c.done_by, c.owed_by) for c in e.owed] == [
        ("give reserved or sold stock back", None, "inventory_svc"),
        ("keep no charge: void it, or refund a charge already under way", None, "payment_svc"),
    ]
    assert e.settled is False
    done = explain(
        "CANCELLED",
        "timeout",
        timeline("OrderCreated", "InventoryReserved", "OrderCancelled", "InventoryReleased", "PaymentVoided"),
    )
    assert [c.done_by for c in done.owed] == ["InventoryReleased", "PaymentVoided"]
    assert done.settled is True


def test_cancelled_before_anything_was_held_still_waits_for_payment() -> None:
    e = explain("CANCELLED", "cancelled_by_customer", timeline("OrderCreated", "OrderCancelled"))
    # not yet "nothing needed undoing": payment (and inventory) may still act on it
    assert e.verdict == "cancelled: the customer cancelled it"
    assert e.settled is False  # until payment says it will never charge
    e = explain(
        "CANCELLED", "cancelled_by_customer", timeline("OrderCreated", "OrderCancelled", "PaymentVoided")
    )
    assert e.verdict.endswith("nothing was held or charged, so nothing needed undoing")
    assert e.settled is True


def test_a_charge_that_landed_after_the_cancel_is_owed_back() -> None:
    events = ("OrderCreated", "InventoryReserved", "OrderCancelled", "InventoryReleased", "PaymentCompleted")
    e = explain("CANCELLED", "timeout", timeline(*events))
    assert [(c.action, c.done_by) for c in e.owed][-1] == ("refund the charge", None)
    assert "payment's charge was confirmed after the cancellation" in e.verdict  # not a plain refund
    assert e.verdict.endswith(", and refunds it")
    refunded = explain("CANCELLED", "timeout", timeline(*events, "PaymentRefunded"))
    assert refunded.settled is True
    assert refunded.verdict.endswith(", and refunded it")  # done: said so (a newcomer trial)
    # charged before the cancellation: an ordinary refund, nothing to say about the order
    before = ("OrderCreated", "InventoryReserved", "PaymentCompleted", "OrderApproved", "OrderCancelled")
    assert (
        "after the cancellation"
        not in explain("CANCELLED", "cancelled_by_customer", timeline(*before)).verdict
    )


def test_a_cancelled_saga_waiting_on_the_provider_says_what_payment_will_do() -> None:
    """Cancelled while its charge waits on the provider: neither 'keep no charge' alone
    nor silence — payment voids if the provider did nothing, else charges and refunds."""
    since = {"since": "2026-11-30T12:00:00+00:00", "reason": "503"}
    waiting = explain(
        "CANCELLED",
        "cancelled_by_operator",
        timeline(
            "OrderCreated", "InventoryReserved", "PaymentPending", "OrderCancelled", PaymentPending=since
        ),
    )
    assert waiting.verdict.startswith(
        "cancelled: an operator cancelled it; payment is waiting on the provider"
    )
    assert "since 2026-11-30T12:00:00+00:00" in waiting.verdict and "refunds it" in waiting.verdict
    assert not waiting.settled
    voided = explain(
        "CANCELLED",
        "cancelled_by_operator",
        timeline(
            "OrderCreated",
            "InventoryReserved",
            "PaymentPending",
            "OrderCancelled",
            "InventoryReleased",
            "PaymentVoided",
            PaymentPending=since,
        ),
    )
    assert "waiting on the provider" not in voided.verdict and voided.settled


def test_a_refund_waiting_on_the_provider_says_so() -> None:
    """Cancelled after approval while the provider is away: the refund waits, and the
    verdict said nothing of why (a trial). A PaymentPending after the charge is the
    refund's wait; one before it was the charge's, and says nothing of the refund."""
    told = {"since": "2026-12-02T08:00:00+00:00", "reason": "refund: the provider answered 503 unavailable"}
    cancelled = (*HAPPY, "OrderCancelled", "InventoryReleased")
    waiting = explain(
        "CANCELLED", "cancelled_by_customer", timeline(*cancelled, "PaymentPending", PaymentPending=told)
    )
    assert waiting.verdict == (
        "cancelled: the customer cancelled it after it was approved; the refund is waiting on the"
        " provider since 2026-12-02T08:00:00+00:00 (the provider answered 503 unavailable): payment"
        " asks again under the same idempotency key until the provider takes it"
    )
    assert waiting.settled is False
    refunded = explain(
        "CANCELLED",
        "cancelled_by_customer",
        timeline(*cancelled, "PaymentPending", "PaymentRefunded", PaymentPending=told),
    )
    assert "waiting" not in refunded.verdict and refunded.settled is True
    charge_waited = ("OrderCreated", "InventoryReserved", "PaymentPending", *HAPPY[2:], "OrderCancelled")
    assert (
        "refund is waiting"
        not in explain("CANCELLED", "cancelled_by_customer", timeline(*charge_waited)).verdict
    )


def test_a_void_settles_a_charge_payment_has_no_record_of() -> None:
    """An attack trial signed a PaymentCompleted with payment's own key for an order never
    placed: cancelled (unknown_order), payment voided — it holds no charge — and the
    refund stayed owed for ever. The void is payment's word; the verdict says why."""
    events = ("PaymentCompleted", "OrderCancelled", "PaymentVoided")
    e = explain("CANCELLED", "unknown_order", timeline(*events))
    [refund] = [o for o in e.owed if o.action == "refund the charge"]
    assert refund.done_by == "PaymentVoided"
    assert "it holds no charge for this order" in e.verdict
    assert "PaymentRefunded" not in e.verdict
    refunded = explain(
        "CANCELLED", "timeout", timeline("InventoryReserved", "PaymentCompleted", "OrderCancelled")
    )
    assert [o.done_by for o in refunded.owed if o.action == "refund the charge"] == [None]


def test_an_unknown_order_still_owed_says_where_to_look() -> None:
    """c4' with a forged reservation: inventory never reserved, so it never releases; the
    item stays owed (the timeline cannot tell), and the verdict says whose records tell."""
    events = ("InventoryReserved", "PaymentCompleted", "OrderCancelled", "PaymentRefunded")
    e = explain("CANCELLED", "unknown_order", timeline(*events))
    assert e.settled is False
    assert "its own records tell" in e.verdict
    released = explain("CANCELLED", "unknown_order", timeline(*events, "InventoryReleased"))
    assert released.settled is True and "its own records tell" not in released.verdict


def test_a_timeout_while_payment_waited_on_the_provider_says_so() -> None:
    """A timeout's verdict, "its deadline passed before the saga finished", did not say that
    payment had waited on the provider all along (a newcomer trial, in an outage)."""
    told = {"since": "2026-12-07T13:00:00+00:00", "reason": "the provider answered 503"}
    events = ("OrderCreated", "InventoryReserved", "PaymentPending", "OrderCancelled", "PaymentVoided")
    e = explain("CANCELLED", "timeout", timeline(*events, PaymentPending=told))
    assert e.verdict.startswith(
        "cancelled: its deadline passed before the saga finished, payment having waited on the"
        " provider since 2026-12-07T13:00:00+00:00 (the provider answered 503)"
    ), e.verdict
    # a customer's cancellation, or a wait that ended before the deadline: nothing to add
    assert "waited" not in explain("CANCELLED", "cancelled_by_customer", timeline(*events)).verdict
    ended = ("OrderCreated", "InventoryReserved", "PaymentPending", "PaymentCompleted", "OrderCancelled")
    assert "waited" not in explain("CANCELLED", "timeout", timeline(*ended)).verdict
