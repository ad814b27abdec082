"""The payment service's decisions on consumed events, pure (no database): the intent to
charge, and what a cancellation does in each state of the payment."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from events import InventoryReserved, OrderCancelled, PaymentVoided
from events.envelope import new_envelope
from events.inventory import PricedLine
from payment_svc.handlers import Ledger, Payment, on_inventory_reserved, on_order_cancelled

ORDER = uuid.UUID(int=1)


def reserved(total: str = "3.00") -> InventoryReserved:
    line = PricedLine(product_id="p", quantity=1, unit_price=Decimal(total), line_total=Decimal(total))
    return InventoryReserved(customer_id="c", lines=(line,), total=Decimal(total))


def cancelled() -> OrderCancelled:
    return OrderCancelled(customer_id="c", reason="timeout")


def test_a_reservation_is_an_intent_to_charge_and_emits_nothing_yet() -> None:
    ledger = Ledger()
    replies = on_inventory_reserved(ledger, new_envelope(reserved(), order_id=ORDER, causation_id=None))
    assert replies == []
    payment = ledger.payments[ORDER]
    assert (payment.status, payment.amount, payment.new) == ("PENDING", Decimal("3.00"), True)
    # a second reservation (redelivered, or after a void) changes nothing
    assert (
        on_inventory_reserved(ledger, new_envelope(reserved("9.00"), order_id=ORDER, causation_id=None)) == []
    )
    assert ledger.payments[ORDER].amount == Decimal("3.00")


@pytest.mark.parametrize(
    ("before", "status", "voided", "cancel_requested"),
    [
        (None, "VOIDED", True, False),  # nothing decided: void
        (Payment("c", Decimal(3), "PENDING", attempts=0), "VOIDED", True, False),  # never asked: void
        # every call answered "nothing done" (an outage): void
        (Payment("c", Decimal(3), "PENDING", attempts=2, nothing_done_calls=2), "VOIDED", True, False),
        # a call out, lost in a crash or answered otherwise: it may have charged; finish
        # it, then refund (or, for a call out answered "nothing done", the worker voids)
        (Payment("c", Decimal(3), "PENDING", attempts=3, nothing_done_calls=2), "PENDING", False, True),
        (Payment("c", Decimal(3), "PENDING", attempts=1), "PENDING", False, True),
        (Payment("c", Decimal(3), "CHARGED", attempts=1), "REFUND_PENDING", False, False),
        (Payment("c", Decimal(3), "DECLINED", attempts=1), "DECLINED", False, False),
        (Payment("c", Decimal(3), "REFUNDED", attempts=1), "REFUNDED", False, False),
        (Payment("c", Decimal(3), "VOIDED"), "VOIDED", False, False),
    ],
)
def test_a_cancellation_voids_refunds_or_waits_for_the_charge_in_doubt(
    before: Payment | None, status: str, voided: bool, cancel_requested: bool
) -> None:
    ledger = Ledger()
    if before is not None:
        ledger.payments[ORDER] = before
    replies = on_order_cancelled(ledger, new_envelope(cancelled(), order_id=ORDER, causation_id=None))
    after = ledger.payments[ORDER]
    assert after.status == status
    assert [type(r) for r in replies] == ([PaymentVoided] if voided else [])
    assert after.cancel_requested is cancel_requested


def test_a_reservation_and_its_cancellation_in_one_batch_store_one_voided_payment() -> None:
    ledger = Ledger()
    on_inventory_reserved(ledger, new_envelope(reserved(), order_id=ORDER, causation_id=None))
    replies = on_order_cancelled(ledger, new_envelope(cancelled(), order_id=ORDER, causation_id=None))
    assert [type(r) for r in replies] == [PaymentVoided]
    payment = ledger.payments[ORDER]
    assert (payment.status, payment.new) == ("VOIDED", True)  # an insert: the row was never stored


@pytest.mark.parametrize(
    ("attempts", "nothing_done", "handed", "status", "withdrawn"),
    [
        # its one claim waits in the hand-off, not called: taken back, voided
        (1, 0, True, "VOIDED", True),
        # an outage's calls, then a claim waiting in the hand-off: voided too
        (3, 2, True, "VOIDED", True),
        # the worker took it (its call is out): it may charge; marked, left to the call
        (1, 0, False, "PENDING", False),
        # an earlier call may have charged: taking back the latest claim cannot void it,
        # so the call that finishes the charge (then the refund) is not taken back
        (2, 0, True, "PENDING", False),
    ],
)
def test_a_cancellation_takes_back_a_claim_the_worker_has_not_called(
    attempts: int, nothing_done: int, handed: bool, status: str, withdrawn: bool
) -> None:
    asked: list[tuple[uuid.UUID, int]] = []

    def withdraw(order_id: uuid.UUID, claimed: int) -> bool:
        asked.append((order_id, claimed))
        return handed

    ledger = Ledger(withdraw=withdraw)
    ledger.payments[ORDER] = Payment(
        "c", Decimal(3), "PENDING", attempts=attempts, nothing_done_calls=nothing_done
    )
    replies = on_order_cancelled(ledger, new_envelope(cancelled(), order_id=ORDER, causation_id=None))
    after = ledger.payments[ORDER]
    assert (after.status, after.withdrawn) == (status, withdrawn)
    assert [type(r) for r in replies] == ([PaymentVoided] if status == "VOIDED" else [])
    # asked only where taking the claim back would void it
    assert asked == ([(ORDER, attempts)] if attempts - 1 == nothing_done else [])
    assert after.changed and not after.new
