"""Facts are checked, not trusted: a validly signed event that contradicts what the
receiving service knows is refused (dead letter ``fact_mismatch: …``), never applied, and
the saga's explanation names it (docs/design.md §10)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest

from events import InvalidEvent, OrderCancelled, OrderLine, PaymentCompleted, decode, encode
from events.inventory import InventoryReserved, PricedLine
from order_svc.explain import Refusal, explain
from order_svc.placing import place_order
from tests.integration.conftest import ServiceUnderTest, add_account, balance_of, event
from tests.integration.test_idempotency import reserved_payload


async def placed(order: ServiceUnderTest, customer: str, items: dict[str, int]) -> uuid.UUID:
    lines = [OrderLine(product_id=p, quantity=q) for p, q in items.items()]
    oid, *_ = await place_order(order.db, customer, lines, None, timedelta(minutes=10))
    return oid


async def refusals(svc: ServiceUnderTest, oid: uuid.UUID) -> list[str]:
    rows = await svc.rows("SELECT reason FROM dead_letters WHERE order_id = :o ORDER BY id", o=oid)
    return [r.reason for r in rows]


async def status(order: ServiceUnderTest, oid: uuid.UUID) -> tuple[str, Decimal | None]:
    row = (await order.rows("SELECT status, total FROM orders WHERE order_id = :o", o=oid))[0]
    return row.status, row.total


async def test_order_refuses_a_payment_of_another_amount_or_customer(order: ServiceUnderTest) -> None:
    oid = await placed(order, "ann", {"p": 2})
    assert await order.deliver(event(reserved_payload("ann", "p", qty=2, price="5.00"), oid)) == "handled"
    cheap = PaymentCompleted(customer_id="ann", amount=Decimal("0.01"))
    assert await order.deliver(event(cheap, oid)) == "dead_lettered"
    other = PaymentCompleted(customer_id="mallory", amount=Decimal("10.00"))
    assert await order.deliver(event(other, oid)) == "dead_lettered"
    assert await status(order, oid) == ("PENDING", Decimal("10.00"))
    reasons = await refusals(order, oid)
    assert reasons == [
        "fact_mismatch: PaymentCompleted charged 0.01, the order's total is 10.00",
        "fact_mismatch: PaymentCompleted names customer 'mallory', the order is 'ann''s",
    ]
    # the true payment still approves it
    real = PaymentCompleted(customer_id="ann", amount=Decimal("10.00"))
    assert await order.deliver(event(real, oid)) == "handled"
    assert await status(order, oid) == ("APPROVED", Decimal("10.00"))


async def test_order_refuses_a_reservation_of_other_goods_or_another_sum_than_was_charged(
    order: ServiceUnderTest,
) -> None:
    oid = await placed(order, "bea", {"p": 1, "q": 2})
    wrong_goods = reserved_payload("bea", "p", qty=1, price="1.00")  # q is missing
    assert await order.deliver(event(wrong_goods, oid)) == "dead_lettered"
    assert "the order is for" in (await refusals(order, oid))[0]
    # payment answered first (events of one saga come from two topics): the quote must match it
    assert await order.deliver(event(PaymentCompleted(customer_id="bea", amount=Decimal("5.00")), oid)) == (
        "handled"
    )
    lines = (
        PricedLine(product_id="p", quantity=1, unit_price=Decimal("1.00"), line_total=Decimal("1.00")),
        PricedLine(product_id="q", quantity=2, unit_price=Decimal("1.00"), line_total=Decimal("2.00")),
    )
    quote = InventoryReserved(customer_id="bea", lines=lines, total=Decimal("3.00"))
    assert await order.deliver(event(quote, oid)) == "dead_lettered"
    assert "but 5.00 was charged" in (await refusals(order, oid))[1]


async def test_a_refund_goes_to_whoever_was_charged_whatever_the_cancellation_says(
    payment: ServiceUnderTest,
) -> None:
    """Compensation that is owed is never refused nor redirected."""
    cid, oid = await add_account(payment, "10.00"), uuid.uuid4()
    mallory = await add_account(payment, "0.00")
    assert await payment.deliver(event(reserved_payload(cid, "p", qty=2), oid)) == "handled"
    odd = OrderCancelled(customer_id=mallory, reason="cancelled_by_customer")
    assert await payment.deliver(event(odd, oid)) == "handled"
    assert await balance_of(payment, cid) == Decimal("10.00")
    assert await balance_of(payment, mallory) == 0


def test_a_reservation_whose_sums_do_not_add_up_is_not_an_event() -> None:
    good = reserved_payload("c", "p", qty=2, price="5.00")
    raw = encode(event(good, uuid.uuid4()))
    assert decode(raw).payload.total == Decimal("10.00")
    with pytest.raises(InvalidEvent, match="not the sum of the lines"):
        decode(raw.replace(b'"total":"10.00"', b'"total":"0.01"'))
    with pytest.raises(InvalidEvent, match=r"is not 2 x 5\.00"):
        decode(raw.replace(b'"line_total":"10.00"', b'"line_total":"0.02"').replace(b'"10.00"', b'"0.02"'))


def test_the_explanation_names_what_was_refused() -> None:
    refused = [
        Refusal(
            "PaymentCompleted", "fact_mismatch: PaymentCompleted charged 0.01, the order's total is 10.00"
        )
    ]
    why = explain("PENDING", None, [{"event_type": "OrderCreated"}], refused)
    assert why.verdict.endswith(
        "refused 1 event(s) about it: PaymentCompleted (fact_mismatch: PaymentCompleted charged 0.01,"
        " the order's total is 10.00)"
    )
    assert why.refused == refused
