"""The pure business rules of each service, without Kafka or a database."""

from __future__ import annotations

from decimal import Decimal

import pytest

from events import OrderLine
from inventory_svc.reservation import (
    Refuse,
    Reserve,
    StockLevel,
    plan_reservation,
    requested_quantities,
)
from order_svc.domain import CANCEL_REQUESTED, DEADLINE_PASSED, OrderStatus, transition

STOCK = {"a": StockLevel(available=5, price=Decimal("2.50")), "b": StockLevel(1, Decimal("10.00"))}


def test_reservation_prices_every_line_from_the_catalogue() -> None:
    decision = plan_reservation({"a": 2, "b": 1}, STOCK)
    assert isinstance(decision, Reserve)
    assert [(x.product_id, x.quantity, x.unit_price, x.line_total) for x in decision.lines] == [
        ("a", 2, Decimal("2.50"), Decimal("5.00")),
        ("b", 1, Decimal("10.00"), Decimal("10.00")),
    ]
    assert decision.total == Decimal("15.00")


def test_reservation_is_all_or_nothing_when_a_later_line_is_short() -> None:
    assert plan_reservation({"a": 1, "b": 2}, STOCK) == Refuse("insufficient_stock", ("b",))


def test_unknown_product_is_refused_before_stock_is_considered() -> None:
    assert plan_reservation({"a": 99, "zz": 1}, STOCK) == Refuse("unknown_product", ("zz",))


def test_exactly_the_available_quantity_can_be_reserved() -> None:
    assert isinstance(plan_reservation({"a": 5}, STOCK), Reserve)
    assert isinstance(plan_reservation({"a": 6}, STOCK), Refuse)


def test_lines_for_the_same_product_are_summed() -> None:
    items = [
        OrderLine(product_id="b", quantity=1),
        OrderLine(product_id="a", quantity=2),
        OrderLine(product_id="b", quantity=3),
    ]
    assert requested_quantities(items) == {"a": 2, "b": 4}


@pytest.mark.parametrize(
    ("event_type", "expected"),
    [
        ("PaymentCompleted", OrderStatus.APPROVED),
        ("PaymentFailed", OrderStatus.REJECTED),
        ("InventoryReservationFailed", OrderStatus.REJECTED),
        ("InventoryReserved", None),
        (DEADLINE_PASSED, OrderStatus.CANCELLED),
        (CANCEL_REQUESTED, OrderStatus.CANCELLED),
    ],
)
def test_pending_order_transitions(event_type: str, expected: OrderStatus | None) -> None:
    assert transition(OrderStatus.PENDING, event_type) == expected


@pytest.mark.parametrize("status", [s for s in OrderStatus if s.terminal])
@pytest.mark.parametrize(
    "event_type", ["PaymentCompleted", "PaymentFailed", "InventoryReservationFailed", DEADLINE_PASSED]
)
def test_settled_orders_ignore_late_events_and_deadlines(status: OrderStatus, event_type: str) -> None:
    assert transition(status, event_type) is None


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (OrderStatus.PENDING, OrderStatus.CANCELLED),
        (OrderStatus.APPROVED, OrderStatus.CANCELLED),  # refunded and restocked by the participants
        (OrderStatus.REJECTED, None),
        (OrderStatus.CANCELLED, None),
    ],
)
def test_only_pending_or_approved_orders_can_be_cancelled(
    status: OrderStatus, expected: OrderStatus | None
) -> None:
    assert transition(status, CANCEL_REQUESTED) == expected
