"""One valid payload of every event type, for contract tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from events import (
    CommandRejected,
    EventPayload,
    InventoryCommitted,
    InventoryReleased,
    InventoryReservationFailed,
    InventoryReserved,
    OrderApproved,
    OrderCancelled,
    OrderCreated,
    OrderLine,
    OrderRejected,
    PaymentCompleted,
    PaymentFailed,
    PaymentPending,
    PaymentRefunded,
    PaymentVoided,
    PricedLine,
    StockLine,
)


def order_created(items: dict[str, int], customer: str = "c1", deadline: float = 600.0) -> OrderCreated:
    """An OrderCreated for ``items`` (product id → quantity), due ``deadline`` s from now."""
    return OrderCreated(
        customer_id=customer,
        items=tuple(OrderLine(product_id=p, quantity=q) for p, q in items.items()),
        deadline_at=datetime.now(UTC) + timedelta(seconds=deadline),
    )


def reserved_payload(customer: str, pid: str, qty: int = 1, price: str = "2.50") -> InventoryReserved:
    """An InventoryReserved of one line: ``qty`` of ``pid`` at ``price``, for ``customer``."""
    unit = Decimal(price)
    line = PricedLine(product_id=pid, quantity=qty, unit_price=unit, line_total=unit * qty)
    return InventoryReserved(customer_id=customer, lines=(line,), total=unit * qty)


def sample_payloads() -> list[EventPayload]:
    line = PricedLine(product_id="p1", quantity=2, unit_price=Decimal("1.50"), line_total=Decimal("3.00"))
    stock = (StockLine(product_id="p1", quantity=2),)
    return [
        order_created({"p1": 2}),
        OrderApproved(customer_id="c1"),
        OrderRejected(customer_id="c1", reason="insufficient_funds"),
        OrderCancelled(customer_id="c1", reason="timeout"),
        CommandRejected(
            command_id=uuid.UUID(int=7), command_type="CancelOrder", reason="unknown_order", detail="no order"
        ),
        InventoryReserved(customer_id="c1", lines=(line,), total=Decimal("3.00")),
        InventoryReservationFailed(customer_id="c1", reason="unknown_product", product_ids=("p9",)),
        InventoryCommitted(lines=stock),
        InventoryReleased(lines=stock),
        PaymentCompleted(customer_id="c1", amount=Decimal("3.00")),
        PaymentFailed(customer_id="c1", amount=Decimal("3.00"), reason="insufficient_funds"),
        PaymentRefunded(customer_id="c1", amount=Decimal("3.00")),
        PaymentVoided(customer_id="c1", reason="cancelled_by_customer"),
        PaymentPending(
            customer_id="c1",
            amount=Decimal("3.00"),
            since=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
            reason="the provider did not answer within 2 s",
        ),
    ]
