"""Amounts cannot overflow, compensations cannot be refused, and a deadline is a promise."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from pydantic import ValidationError

from events import InventoryReservationFailed, OrderCancelled, OrderCreated, OrderLine, PaymentCompleted
from events.values import (
    MAX_LINE_QUANTITY,
    MAX_MONEY,
    MAX_ORDER_LINES,
    MAX_ORDER_TOTAL,
    MAX_UNIT_PRICE,
)
from inventory_svc.api import ProductIn
from tests.integration.conftest import ServiceUnderTest, add_account, add_product, balance_of, event
from tests.integration.test_compensation import emitted_types, placed, status
from tests.integration.test_idempotency import reserved_payload


def test_the_limits_keep_every_total_inside_money() -> None:
    assert MAX_UNIT_PRICE * MAX_LINE_QUANTITY * MAX_ORDER_LINES == MAX_ORDER_TOTAL < MAX_MONEY
    with pytest.raises(ValidationError):
        ProductIn(name="too dear", price=MAX_UNIT_PRICE + Decimal("0.01"), stock=1)


async def test_an_order_at_every_limit_is_reserved_charged_and_refunded(
    inventory: ServiceUnderTest, payment: ServiceUnderTest
) -> None:
    """100 lines of 10,000 units at 100,000.00: the largest total there can be."""
    units = MAX_LINE_QUANTITY * MAX_ORDER_LINES
    pid = await add_product(inventory, units, price=str(MAX_UNIT_PRICE))
    customer = await add_account(payment, str(MAX_ORDER_TOTAL))
    oid = uuid.uuid4()
    created = OrderCreated(
        customer_id=customer,
        items=tuple(OrderLine(product_id=pid, quantity=MAX_LINE_QUANTITY) for _ in range(MAX_ORDER_LINES)),
        deadline_at=datetime.now(UTC) + timedelta(minutes=10),
    )
    assert await inventory.deliver(event(created, oid)) == "handled"
    (reserved,) = await inventory.emitted(oid)
    assert reserved.event_type == "InventoryReserved"
    assert reserved.payload.total == MAX_ORDER_TOTAL  # type: ignore[attr-defined]
    assert await payment.deliver(reserved) == "handled"
    assert await balance_of(payment, customer) == 0
    cancelled = event(OrderCancelled(customer_id=customer, reason="cancelled_by_customer"), oid)
    assert await payment.deliver(cancelled) == "handled"
    assert await balance_of(payment, customer) == (MAX_ORDER_TOTAL)


async def test_a_refund_is_applied_however_high_the_balance_is_now(payment: ServiceUnderTest) -> None:
    customer, oid = await add_account(payment, "10.00"), uuid.uuid4()
    await payment.deliver(event(reserved_payload(customer, "p", price="7.00"), oid))
    assert payment.provider is not None  # an operator sets the largest balance there is
    answer = await payment.provider.request(
        "PUT", f"/v1/accounts/{customer}", {"balance": f"{MAX_MONEY:.2f}"}
    )
    assert answer.status_code == 200, answer.text
    cancelled = event(OrderCancelled(customer_id=customer, reason="cancelled_by_customer"), oid)
    assert await payment.deliver(cancelled) == "handled"
    assert await payment.scalar("SELECT status FROM payments WHERE order_id = :o", o=oid) == "REFUNDED"
    assert await balance_of(payment, customer) == (MAX_MONEY + Decimal("7.00"))


async def test_a_reply_after_the_deadline_cancels_even_before_the_sweeper_runs(
    order: ServiceUnderTest,
) -> None:
    """The sweeper has not run (it is not called here): the late PaymentCompleted finds the
    deadline passed and cancels the order instead of approving it, in the same
    transaction, so payment is told to refund."""
    oid = await placed(order, timedelta(0))
    paid = event(PaymentCompleted(customer_id="c", amount=Decimal("2.50")), oid)
    assert await order.deliver(paid) == "handled"
    assert await status(order, oid) == ("CANCELLED", "timeout")
    assert await emitted_types(order, oid) == ["OrderCreated", "OrderCancelled"]
    cancelled = (await order.emitted(oid))[-1]
    assert cancelled.causation_id == paid.event_id  # the timeline shows what found it late


async def test_a_rejection_after_the_deadline_is_a_timeout_too(order: ServiceUnderTest) -> None:
    oid = await placed(order, timedelta(0))
    failed = InventoryReservationFailed(customer_id="c", reason="insufficient_stock", product_ids=("p",))
    await order.deliver(event(failed, oid))
    assert await status(order, oid) == ("CANCELLED", "timeout")


async def test_a_reply_before_the_deadline_still_approves(order: ServiceUnderTest) -> None:
    oid = await placed(order, timedelta(minutes=5))
    await order.deliver(event(PaymentCompleted(customer_id="c", amount=Decimal("2.50")), oid))
    assert await status(order, oid) == ("APPROVED", None)
