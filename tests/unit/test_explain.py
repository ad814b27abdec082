"""The saga explanation: why it ended so, and whether everything owed was compensated."""

from __future__ import annotations

from typing import Any

import pytest

from order_svc.explain import explain


def timeline(*types: str, **payloads: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"event_type": t, "payload": payloads.get(t, {})} for t in types]


HAPPY = ("OrderCreated", "InventoryReserved", "PaymentCompleted", "OrderApproved", "InventoryCommitted")


def test_approved() -> None:
    e = explain("APPROVED", None, timeline(*HAPPY))
    assert e.verdict.startswith("approved") and e.compensations == [] and e.compensated is True


def test_in_flight_names_the_last_step() -> None:
    e = explain("PENDING", None, timeline("OrderCreated", "InventoryReserved"))
    assert e.verdict == "in flight: the last step was InventoryReserved" and e.compensated is None


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
    assert e.compensations == [] and e.compensated is True


@pytest.mark.parametrize(("released", "compensated"), [(True, True), (False, False)])
def test_rejected_for_funds_owes_the_reservation(released: bool, compensated: bool) -> None:
    events = ["OrderCreated", "InventoryReserved", "PaymentFailed", "OrderRejected"]
    if released:
        events.append("InventoryReleased")
    e = explain("REJECTED", "insufficient_funds", timeline(*events))
    assert "declined" in e.verdict
    assert [(c.because_of, c.done_by) for c in e.compensations] == [
        ("InventoryReserved", "InventoryReleased" if released else None)
    ]
    assert e.compensated is compensated


def test_cancelled_after_approval_owes_stock_and_money() -> None:
    e = explain(
        "CANCELLED",
        "cancelled_by_customer",
        timeline(*HAPPY, "OrderCancelled", "InventoryReleased", "PaymentRefunded"),
    )
    assert e.verdict == "cancelled: the customer cancelled it after it was approved"
    assert [c.done_by for c in e.compensations] == ["InventoryReleased", "PaymentRefunded"]
    assert e.compensated is True


def test_timeout_before_any_charge_owes_only_the_reservation() -> None:
    e = explain("CANCELLED", "timeout", timeline("OrderCreated", "InventoryReserved", "OrderCancelled"))
    assert "deadline" in e.verdict
    assert [c.done_by for c in e.compensations] == [None] and e.compensated is False
