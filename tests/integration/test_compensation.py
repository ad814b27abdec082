"""Every compensation path (docs/design.md §3 c2, c4-c6), in every arrival order that can happen.

Events of one saga reach a service from different topics, late, or twice. Each test
delivers them in one particular order to the real handlers on the real database and
checks the only thing that matters: what is held, sold and charged in the end, and which
events the service emitted.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from events import (
    InventoryReservationFailed,
    OrderApproved,
    OrderCancelled,
    OrderLine,
    PaymentCompleted,
    PaymentFailed,
)
from order_svc.cancelling import OrderNotFound, cancel_order, cancel_overdue
from order_svc.errors import OrderNotCancellable
from order_svc.placing import place_order
from payment_svc.provider import Charged, PaymentProvider, Refunded, Refused, charge_key
from payment_svc.worker import PaymentWorker, call, claim, record
from saga_kit.consumer import Outcome
from tests.integration.conftest import (
    ServiceUnderTest,
    add_account,
    add_product,
    balance_of,
    event,
    record_of,
)
from tests.integration.test_idempotency import reserved_payload
from tests.rawhttp import answering, serving
from tests.unit.samples import order_created

CANCELLED = OrderCancelled(customer_id="c", reason="cancelled_by_customer")


async def buckets(inventory: ServiceUnderTest, pid: str) -> tuple[int, int, int]:
    row = (
        await inventory.rows("SELECT available, reserved, sold FROM products WHERE product_id = :p", p=pid)
    )[0]
    return row.available, row.reserved, row.sold


async def emitted_types(svc: ServiceUnderTest, oid: uuid.UUID) -> list[str]:
    return [e.event_type for e in await svc.emitted(oid)]


# -- inventory: c2 and c5 ------------------------------------------------------------------


async def test_cancel_releases_a_reservation(inventory: ServiceUnderTest) -> None:
    pid, oid = await add_product(inventory, 5), uuid.uuid4()
    await inventory.deliver(event(order_created({pid: 2}), oid))
    assert await buckets(inventory, pid) == (3, 2, 0)
    assert await inventory.deliver(event(CANCELLED, oid)) == "handled"
    assert await buckets(inventory, pid) == (5, 0, 0)
    assert await emitted_types(inventory, oid) == ["InventoryReserved", "InventoryReleased"]


async def test_cancel_after_approval_restocks_the_sale(inventory: ServiceUnderTest) -> None:
    pid, oid = await add_product(inventory, 5), uuid.uuid4()
    await inventory.deliver(event(order_created({pid: 2}), oid))
    await inventory.deliver(event(OrderApproved(customer_id="c"), oid))
    assert await buckets(inventory, pid) == (3, 0, 2)
    await inventory.deliver(event(CANCELLED, oid))
    assert await buckets(inventory, pid) == (5, 0, 0)
    statuses = await inventory.rows("SELECT status FROM reservations WHERE order_id = :o", o=oid)
    assert [r.status for r in statuses] == ["RESTOCKED"]
    assert await emitted_types(inventory, oid) == [
        "InventoryReserved",
        "InventoryCommitted",
        "InventoryReleased",
    ]


async def test_cancel_that_overtakes_the_order_means_nothing_is_ever_reserved(
    inventory: ServiceUnderTest,
) -> None:
    pid, oid = await add_product(inventory, 5), uuid.uuid4()
    assert await inventory.deliver(event(CANCELLED, oid)) == "handled"
    assert await inventory.deliver(event(order_created({pid: 2}), oid)) == "handled"
    assert await buckets(inventory, pid) == (5, 0, 0)
    assert await emitted_types(inventory, oid) == []


async def test_payment_failure_and_cancel_release_once(inventory: ServiceUnderTest) -> None:
    pid, oid = await add_product(inventory, 5), uuid.uuid4()
    await inventory.deliver(event(order_created({pid: 2}), oid))
    failed = PaymentFailed(customer_id="c", amount=Decimal("5.00"), reason="insufficient_funds")
    await inventory.deliver(event(failed, oid))
    await inventory.deliver(event(CANCELLED, oid))
    assert await buckets(inventory, pid) == (5, 0, 0)
    assert await emitted_types(inventory, oid) == ["InventoryReserved", "InventoryReleased"]


async def test_approval_arriving_after_the_cancel_sells_nothing(inventory: ServiceUnderTest) -> None:
    pid, oid = await add_product(inventory, 5), uuid.uuid4()
    await inventory.deliver(event(order_created({pid: 2}), oid))
    await inventory.deliver(event(CANCELLED, oid))
    await inventory.deliver(event(OrderApproved(customer_id="c"), oid))
    assert await buckets(inventory, pid) == (5, 0, 0)
    assert await emitted_types(inventory, oid) == ["InventoryReserved", "InventoryReleased"]


async def test_cancel_of_an_order_that_reserved_nothing_emits_nothing(inventory: ServiceUnderTest) -> None:
    pid, oid = await add_product(inventory, 1), uuid.uuid4()
    await inventory.deliver(event(order_created({pid: 2}), oid))  # not enough stock
    await inventory.deliver(event(CANCELLED, oid))
    assert await buckets(inventory, pid) == (1, 0, 0)
    assert await emitted_types(inventory, oid) == ["InventoryReservationFailed"]


# -- payment: c6 ---------------------------------------------------------------------------


async def balance(payment: ServiceUnderTest, cid: str) -> Decimal:
    value: Decimal = await balance_of(payment, cid)
    return value


async def test_cancel_refunds_a_charge(payment: ServiceUnderTest) -> None:
    cid, oid = await add_account(payment, "10.00"), uuid.uuid4()
    await payment.deliver(event(reserved_payload(cid, "p", qty=2), oid))
    assert await balance(payment, cid) == Decimal("5.00")
    await payment.deliver(event(OrderCancelled(customer_id=cid, reason="timeout"), oid))
    assert await balance(payment, cid) == Decimal("10.00")
    assert await emitted_types(payment, oid) == ["PaymentCompleted", "PaymentRefunded"]
    refunded = (await payment.emitted(oid))[1].payload
    assert refunded.amount == Decimal("5.00")  # type: ignore[attr-defined]


async def test_a_charge_refunded_by_hand_at_the_provider_is_refunded_for_the_saga(
    payment: ServiceUnderTest,
) -> None:
    """A support agent refunded the charge at the provider, under a key of their own; then
    the order is cancelled. The provider answers the saga's refund 409
    ``charge_already_refunded``: the money is back, so the refund is done (it was retried
    for ever, and the saga never settled)."""
    assert payment.provider is not None
    cid, oid = await add_account(payment, "10.00"), uuid.uuid4()
    await payment.deliver(event(reserved_payload(cid, "p", qty=2), oid))
    assert await balance(payment, cid) == Decimal("5.00")
    by_hand = await payment.provider.refund(f"support-ticket-{oid}", charge_key(oid))
    assert isinstance(by_hand, Refunded) and by_hand.refund_id is not None
    await payment.deliver(event(OrderCancelled(customer_id=cid, reason="cancelled_by_customer"), oid))
    assert await emitted_types(payment, oid) == ["PaymentCompleted", "PaymentRefunded"]
    rows = await payment.rows("SELECT status, refund_id FROM payments WHERE order_id = :o", o=oid)
    assert [(r.status, r.refund_id) for r in rows] == [("REFUNDED", None)]
    assert await balance(payment, cid) == Decimal("10.00")  # refunded once, by hand


async def test_a_charge_that_lands_after_the_cancel_is_never_made(payment: ServiceUnderTest) -> None:
    cid, oid = await add_account(payment, "10.00"), uuid.uuid4()
    await payment.deliver(event(OrderCancelled(customer_id=cid, reason="timeout"), oid))
    assert await payment.deliver(event(reserved_payload(cid, "p", qty=2), oid)) == "handled"
    assert await balance(payment, cid) == Decimal("10.00")
    assert await emitted_types(payment, oid) == ["PaymentVoided"]  # and nothing more
    rows = await payment.rows("SELECT status, amount FROM payments WHERE order_id = :o", o=oid)
    assert [(r.status, r.amount) for r in rows] == [("VOIDED", Decimal("0.00"))]


async def test_cancel_of_a_declined_payment_refunds_nothing(payment: ServiceUnderTest) -> None:
    cid, oid = await add_account(payment, "1.00"), uuid.uuid4()
    await payment.deliver(event(reserved_payload(cid, "p", qty=2), oid))
    await payment.deliver(event(OrderCancelled(customer_id=cid, reason="timeout"), oid))
    assert await balance(payment, cid) == Decimal("1.00")
    assert await emitted_types(payment, oid) == ["PaymentFailed"]


async def test_two_cancellations_refund_once(payment: ServiceUnderTest) -> None:
    """Two distinct OrderCancelled events (not a redelivery): one refund."""
    cid, oid = await add_account(payment, "10.00"), uuid.uuid4()
    await payment.deliver(event(reserved_payload(cid, "p", qty=2), oid))
    for reason in ("timeout", "cancelled_by_customer"):
        await payment.deliver(event(OrderCancelled(customer_id=cid, reason=reason), oid))  # type: ignore[arg-type]
    assert await balance(payment, cid) == Decimal("10.00")
    assert await emitted_types(payment, oid) == ["PaymentCompleted", "PaymentRefunded"]


# -- payment: c6 while the provider fails ---------------------------------------------------
# Whether a cancellation may void depends on whether the provider can have charged: a 503
# (its contract: nothing done) leaves nothing to undo; a 500, a timeout, a call lost in a
# crash may have charged, so the charge is finished under the same key and refunded.


@contextlib.asynccontextmanager
async def provider_failing(payment: ServiceUnderTest, **faults: object) -> AsyncIterator[PaymentProvider]:
    """The simulator's ``faults`` in force within the block; after it, faults off and one
    successful call, so the breaker's count of failures in a row starts again."""
    provider = payment.provider
    assert provider is not None
    assert (await provider.request("PUT", "/v1/faults", faults)).status_code == 200
    try:
        yield provider
    finally:
        assert (await provider.request("PUT", "/v1/faults", {})).status_code == 200
        await provider.probe()


async def reserved_once(payment: ServiceUnderTest, cid: str, oid: uuid.UUID, **faults: object) -> None:
    """InventoryReserved delivered and one worker round run under ``faults``: one call
    that failed, the payment still PENDING."""
    assert payment.worker is not None
    await payment.deliver(event(reserved_payload(cid, "p", qty=2), oid), work=False)
    async with provider_failing(payment, **faults):
        assert await payment.worker.round() == 1
    assert await payment_row(payment, oid) == ("PENDING", 1)


async def due_now(payment: ServiceUnderTest, oid: uuid.UUID) -> None:
    """The payment's next call is due now (its lease or backoff ended)."""
    async with payment.db.engine.begin() as conn:
        await conn.execute(
            text("UPDATE payments SET next_attempt_at = clock_timestamp() WHERE order_id = :o"), {"o": oid}
        )


async def payment_row(payment: ServiceUnderTest, oid: uuid.UUID) -> tuple[str, int]:
    row = (await payment.rows("SELECT status, attempts FROM payments WHERE order_id = :o", o=oid))[0]
    return row.status, row.attempts


async def charged_at_provider(payment: ServiceUnderTest, oid: uuid.UUID) -> bool:
    assert payment.provider is not None
    answer = await payment.provider.request("GET", f"/v1/charges/{charge_key(oid)}")
    assert answer.status_code in (200, 404), answer.text
    return answer.status_code == 200


async def test_a_cancel_after_an_outage_voids_what_the_provider_never_did(
    payment: ServiceUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    cid, oid = await add_account(payment, "10.00"), uuid.uuid4()
    with caplog.at_level(logging.WARNING, "payment_svc.provider"):
        await reserved_once(payment, cid, oid, outage=True)  # 503: nothing done
    # the retry's line names the order (its key): grep <order id> finds it (a newcomer trial)
    assert f"charge (idempotency key charge:{oid}) failed, to be retried" in caplog.text
    waited = "SELECT waiting_since FROM payments WHERE order_id = :o"
    assert await payment.scalar(waited, o=oid) is not None
    await payment.deliver(event(OrderCancelled(customer_id=cid, reason="timeout"), oid))
    assert await emitted_types(payment, oid) == ["PaymentPending", "PaymentVoided"]
    assert await payment_row(payment, oid) == ("VOIDED", 1)
    assert await payment.scalar(waited, o=oid) is None  # voided: nothing waits (a trial)
    assert await payment.scalar("SELECT amount FROM payments WHERE order_id = :o", o=oid) == Decimal("5.00")
    assert not await charged_at_provider(payment, oid)  # no charge, no refund: money never moved
    assert await balance(payment, cid) == Decimal("10.00")


async def test_a_cancel_after_a_500_finishes_the_charge_in_doubt_and_refunds_it(
    payment: ServiceUnderTest,
) -> None:
    cid, oid = await add_account(payment, "10.00"), uuid.uuid4()
    await reserved_once(payment, cid, oid, error_rate=1.0)  # 500: it may have charged
    await due_now(payment, oid)  # the backoff ends
    await payment.deliver(event(OrderCancelled(customer_id=cid, reason="timeout"), oid))
    assert await emitted_types(payment, oid) == ["PaymentPending", "PaymentCompleted", "PaymentRefunded"]
    assert await payment_row(payment, oid) == ("REFUNDED", 3)
    assert await balance(payment, cid) == Decimal("10.00")


async def test_a_refund_that_waits_on_the_provider_says_so_once(payment: ServiceUnderTest) -> None:
    """The charge waited through one outage, the refund through another: each wait is
    announced once (PaymentPending; the refund's reason says it is the refund, its cause
    the cancellation), and a settled call waits no more (``waiting_since`` null)."""
    assert payment.worker is not None
    cid, oid = await add_account(payment, "10.00"), uuid.uuid4()
    await reserved_once(payment, cid, oid, outage=True)  # the charge waits
    await due_now(payment, oid)
    await payment.work()  # charged
    waited = "SELECT waiting_since FROM payments WHERE order_id = :o"
    assert await payment.scalar(waited, o=oid) is None
    cancel = event(OrderCancelled(customer_id=cid, reason="cancelled_by_customer"), oid)
    await payment.deliver(cancel, work=False)
    for _ in range(2):  # the refund waits, twice
        await due_now(payment, oid)
        async with provider_failing(payment, outage=True):
            assert await payment.worker.round() == 1
    assert await payment.scalar(waited, o=oid) is not None
    await due_now(payment, oid)
    await payment.work()  # refunded
    assert await emitted_types(payment, oid) == [
        "PaymentPending",
        "PaymentCompleted",
        "PaymentPending",
        "PaymentRefunded",
    ]
    charge_wait, _, refund_wait, _ = await payment.emitted(oid)
    assert not charge_wait.payload.reason.startswith("refund:")  # type: ignore[attr-defined]
    assert refund_wait.payload.reason.startswith("refund: the provider answered 503")  # type: ignore[attr-defined]
    assert refund_wait.causation_id == cancel.event_id
    assert await payment.scalar(waited, o=oid) is None
    assert await balance(payment, cid) == Decimal("10.00")


async def test_a_cancel_while_the_call_is_out_waits_for_its_answer(payment: ServiceUnderTest) -> None:
    """The call is claimed, the cancellation arrives, then the provider answers 503: the
    worker, not the cancellation, voids — a void while the call was out could have been
    followed by a charge."""
    assert payment.provider is not None and payment.worker is not None
    cid, oid = await add_account(payment, "10.00"), uuid.uuid4()
    await payment.deliver(event(reserved_payload(cid, "p", qty=2), oid), work=False)
    (due,) = [d for d in await claim(payment.db, 64, 60.0) if d.order_id == oid]
    await payment.deliver(event(OrderCancelled(customer_id=cid, reason="timeout"), oid), work=False)
    assert await emitted_types(payment, oid) == []  # not voided: the call is out
    async with provider_failing(payment, outage=True) as provider:
        answer = await call(provider, due)
    await record(payment.db, provider, payment.worker.retry, [(due, answer)])
    assert await emitted_types(payment, oid) == ["PaymentVoided"]
    assert await payment_row(payment, oid) == ("VOIDED", 1)
    # the amount it would have charged, as a void by the cancellation keeps it
    assert await payment.scalar("SELECT amount FROM payments WHERE order_id = :o", o=oid) == Decimal("5.00")
    assert not await charged_at_provider(payment, oid)


async def refused_once(payment: ServiceUnderTest, oid: uuid.UUID, provider: PaymentProvider) -> Refused:
    """One claimed call through ``provider``, answered with a refusal, and recorded."""
    assert payment.worker is not None
    (due,) = [d for d in await claim(payment.db, 64, 60.0) if d.order_id == oid]
    answer = await call(provider, due)
    assert isinstance(answer, Refused), answer
    await record(payment.db, provider, payment.worker.retry, [(due, answer)])
    return answer


async def test_a_cancel_after_the_provider_refused_every_call_voids(payment: ServiceUnderTest) -> None:
    """A payment service pointed at a wrong path of the provider (a misconfiguration) is
    answered 404 — refused before anything was done. The order's deadline cancels it: a
    void, not a charge retried in doubt for ever (a review found that)."""
    assert payment.provider is not None
    cid, oid = await add_account(payment, "10.00"), uuid.uuid4()
    await payment.deliver(event(reserved_payload(cid, "p", qty=2), oid), work=False)
    misconfigured = PaymentProvider(
        payment.provider.base_url + "/no-such-path", timeout=2.0, breaker_failures=5, breaker_recovery=1.0
    )
    try:
        refused = await refused_once(payment, oid, misconfigured)
    finally:
        await misconfigured.aclose()
    assert refused.status == 404 and refused.nothing_done
    rows = await payment.rows(
        "SELECT status, attempts, nothing_done_calls, last_error FROM payments WHERE order_id = :o", o=oid
    )
    assert [(r.status, r.attempts, r.nothing_done_calls) for r in rows] == [("PENDING", 1, 1)]
    assert rows[0].last_error.startswith("refused: 404"), rows[0].last_error
    await payment.deliver(event(OrderCancelled(customer_id=cid, reason="timeout"), oid))
    assert await emitted_types(payment, oid) == ["PaymentPending", "PaymentVoided"]
    assert await payment_row(payment, oid) == ("VOIDED", 1)
    assert not await charged_at_provider(payment, oid)
    assert await balance(payment, cid) == Decimal("10.00")


async def test_a_cancel_after_a_409_does_not_void(payment: ServiceUnderTest) -> None:
    """A 409 says another request holds the order's key: that one charged here (another
    amount under the same key). The cancellation must not void what may be a charge."""
    assert payment.provider is not None
    cid, oid = await add_account(payment, "10.00"), uuid.uuid4()
    await payment.deliver(event(reserved_payload(cid, "p", qty=2), oid), work=False)
    other = await payment.provider.charge(charge_key(oid), cid, Decimal("1.00"), str(oid))
    assert isinstance(other, Charged)
    refused = await refused_once(payment, oid, payment.provider)
    assert refused.status == 409 and not refused.nothing_done
    await payment.deliver(event(OrderCancelled(customer_id=cid, reason="timeout"), oid))
    assert await emitted_types(payment, oid) == ["PaymentPending"]
    rows = await payment.rows(
        "SELECT status, cancel_requested, nothing_done_calls FROM payments WHERE order_id = :o", o=oid
    )
    assert [(r.status, r.cancel_requested, r.nothing_done_calls) for r in rows] == [("PENDING", True, 0)]
    # in doubt, due again and refused again for as long as the key stays taken: gone, so
    # that no test after this one finds it due
    async with payment.db.engine.begin() as conn:
        await conn.execute(text("DELETE FROM payments WHERE order_id = :o"), {"o": oid})


async def _one_round_against(payment: ServiceUnderTest, status: int, body: bytes) -> uuid.UUID:
    """A new order's charge claimed, called once against a provider that answers every
    request ``status`` with JSON ``body``, and its answer recorded: the order's id."""
    assert payment.worker is not None
    cid, oid = await add_account(payment, "10.00"), uuid.uuid4()
    await payment.deliver(event(reserved_payload(cid, "p", qty=2), oid), work=False)
    async with serving(answering(status, body)) as url:
        odd = PaymentProvider(url, timeout=2.0, breaker_failures=5, breaker_recovery=1.0)
        try:
            (due,) = [d for d in await claim(payment.db, 64, 60.0) if d.order_id == oid]
            await record(payment.db, odd, payment.worker.retry, [(due, await call(odd, due))])
        finally:
            await odd.aclose()
    return oid


@pytest.mark.parametrize("status", [404, 500])
async def test_an_answer_whose_error_text_cannot_be_stored_is_recorded_all_the_same(
    payment: ServiceUnderTest, status: int
) -> None:
    """A provider's error body is text from outside: a NUL or a lone surrogate in its
    ``error`` went into ``last_error`` as it was, PostgreSQL refused the round's record (not
    a transient failure), and every answer of the round was dropped, round after round (a
    review). It is stored escaped, as the PaymentPending's reason is."""
    oid = await _one_round_against(payment, status, b'{"error": "bad\\u0000 \\ud800 thing", "message": "m"}')
    (row,) = await payment.rows(
        "SELECT status, answered_attempt, last_error FROM payments WHERE order_id = :o", o=oid
    )
    assert (row.status, row.answered_attempt) == ("PENDING", 1)
    assert "bad\\x00 \\ud800 thing" in row.last_error, row.last_error
    assert await emitted_types(payment, oid) == ["PaymentPending"]
    async with payment.db.engine.begin() as conn:  # due again, at a provider that is gone
        await conn.execute(text("DELETE FROM payments WHERE order_id = :o"), {"o": oid})


async def test_a_charge_whose_id_cannot_be_stored_is_recorded_all_the_same(payment: ServiceUnderTest) -> None:
    """The provider's ``charge_id`` is text from outside too: one with a NUL had PostgreSQL
    refuse the round's record, every answer of it dropped, and the same answer replayed
    under the key for ever — a charge made and never recorded (a review). It is stored
    escaped; the charge is recorded."""
    oid = await _one_round_against(payment, 201, b'{"charge_id": "ch\\u0000\\ud800"}')
    (row,) = await payment.rows("SELECT status, charge_id FROM payments WHERE order_id = :o", o=oid)
    assert (row.status, row.charge_id) == ("CHARGED", "ch\\x00\\ud800")
    assert await emitted_types(payment, oid) == ["PaymentCompleted"]


async def test_a_call_lost_in_a_crash_leaves_the_charge_in_doubt_whatever_follows(
    payment: ServiceUnderTest,
) -> None:
    """Claimed, then the worker died (its call may have gone out); the cancellation comes,
    the lease ends and the next call is answered 503: that answer speaks for itself only,
    so the charge is finished and refunded, never voided."""
    cid, oid = await add_account(payment, "10.00"), uuid.uuid4()
    await payment.deliver(event(reserved_payload(cid, "p", qty=2), oid), work=False)
    assert oid in {d.order_id for d in await claim(payment.db, 64, 60.0)}  # and the worker dies
    await payment.deliver(event(OrderCancelled(customer_id=cid, reason="timeout"), oid), work=False)
    await due_now(payment, oid)  # the lease ends
    await reserved_once_more(payment, oid, outage=True)
    await due_now(payment, oid)  # the backoff ends
    await payment.work()
    assert await emitted_types(payment, oid) == ["PaymentPending", "PaymentCompleted", "PaymentRefunded"]
    assert await payment_row(payment, oid) == ("REFUNDED", 4)
    assert await balance(payment, cid) == Decimal("10.00")


async def test_a_record_retried_after_its_commit_landed_answers_nothing_twice(
    payment: ServiceUnderTest,
) -> None:
    """The worker retries a record whose COMMIT landed but whose answer was lost (a
    database restart). If another instance claimed the payment meanwhile, the retry must
    not speak for that claim's call: here that call charges, after the cancellation, and
    the payment ends refunded — not voided with the charge kept."""
    assert payment.provider is not None and payment.worker is not None
    cid, oid = await add_account(payment, "10.00"), uuid.uuid4()
    await payment.deliver(event(reserved_payload(cid, "p", qty=2), oid), work=False)
    (mine,) = [d for d in await claim(payment.db, 64, 60.0) if d.order_id == oid]
    async with provider_failing(payment, outage=True) as provider:
        answer = await call(provider, mine)  # 503: nothing done
    retry = payment.worker.retry
    await record(payment.db, provider, retry, [(mine, answer)])  # committed; its answer lost
    await due_now(payment, oid)
    (theirs,) = [d for d in await claim(payment.db, 64, 60.0) if d.order_id == oid]  # another instance
    await record(payment.db, provider, retry, [(mine, answer)])  # the retry: stale, changes nothing
    await payment.deliver(event(OrderCancelled(customer_id=cid, reason="timeout"), oid), work=False)
    assert await emitted_types(payment, oid) == ["PaymentPending"]  # not voided: a call is out
    await record(payment.db, provider, retry, [(theirs, await call(provider, theirs))])  # it charges
    await payment.work()
    assert await emitted_types(payment, oid) == ["PaymentPending", "PaymentCompleted", "PaymentRefunded"]
    assert await balance(payment, cid) == Decimal("10.00")


async def test_an_answer_is_recorded_once(payment: ServiceUnderTest) -> None:
    """A record retried with no claim since (its COMMIT landed, its answer was lost) counts
    nothing twice: one call answered 503 is one "nothing done", one PaymentPending."""
    assert payment.worker is not None
    cid, oid = await add_account(payment, "10.00"), uuid.uuid4()
    await payment.deliver(event(reserved_payload(cid, "p", qty=2), oid), work=False)
    (due,) = [d for d in await claim(payment.db, 64, 60.0) if d.order_id == oid]
    async with provider_failing(payment, outage=True) as provider:
        answer = await call(provider, due)
    for _ in range(2):
        await record(payment.db, provider, payment.worker.retry, [(due, answer)])
    rows = await payment.rows(
        "SELECT attempts, nothing_done_calls, answered_attempt FROM payments WHERE order_id = :o", o=oid
    )
    assert [(r.attempts, r.nothing_done_calls, r.answered_attempt) for r in rows] == [(1, 1, 1)]
    assert await emitted_types(payment, oid) == ["PaymentPending"]
    await payment.deliver(event(OrderCancelled(customer_id=cid, reason="timeout"), oid))
    assert await emitted_types(payment, oid) == ["PaymentPending", "PaymentVoided"]


async def test_a_claim_by_a_worker_older_than_nothing_done_calls_is_in_doubt(
    payment: ServiceUnderTest,
) -> None:
    """During a rolling upgrade, a worker of the build before migration 5 claims without
    counting anything: its call may charge, so the new build's cancellation does not void."""
    cid, oid = await add_account(payment, "10.00"), uuid.uuid4()
    await payment.deliver(event(reserved_payload(cid, "p", qty=2), oid), work=False)
    async with payment.db.engine.begin() as conn:  # the old build's claim
        await conn.execute(
            text(
                "UPDATE payments SET attempts = attempts + 1,"
                " next_attempt_at = clock_timestamp() + make_interval(secs => 60) WHERE order_id = :o"
            ),
            {"o": oid},
        )
    await payment.deliver(event(OrderCancelled(customer_id=cid, reason="timeout"), oid), work=False)
    assert await emitted_types(payment, oid) == []
    rows = await payment.rows("SELECT status, cancel_requested FROM payments WHERE order_id = :o", o=oid)
    assert [(r.status, r.cancel_requested) for r in rows] == [("PENDING", True)]
    await due_now(payment, oid)  # the old worker died; its lease ends
    await payment.work()
    assert await emitted_types(payment, oid) == ["PaymentCompleted", "PaymentRefunded"]


async def reserved_once_more(payment: ServiceUnderTest, oid: uuid.UUID, **faults: object) -> None:
    assert payment.worker is not None
    async with provider_failing(payment, **faults):
        assert await payment.worker.round() == 1
    rows = await payment.rows(
        "SELECT status, attempts, nothing_done_calls FROM payments WHERE order_id = :o", o=oid
    )
    assert [(r.status, r.attempts, r.nothing_done_calls) for r in rows] == [("PENDING", 2, 1)]


# -- order: c4 -----------------------------------------------------------------------------


async def placed(order: ServiceUnderTest, deadline: timedelta = timedelta(minutes=10)) -> uuid.UUID:
    oid = (await place_order(order.db, "c", [OrderLine(product_id="p", quantity=1)], None, deadline)).order_id
    return oid


async def status(order: ServiceUnderTest, oid: uuid.UUID) -> tuple[str, str | None]:
    row = (await order.rows("SELECT status, reason FROM orders WHERE order_id = :o", o=oid))[0]
    return row.status, row.reason


async def test_an_overdue_pending_order_is_cancelled_with_reason_timeout(order: ServiceUnderTest) -> None:
    overdue, on_time = await placed(order, timedelta(0)), await placed(order)
    assert await cancel_overdue(order.db) >= 1
    assert await status(order, overdue) == ("CANCELLED", "timeout")
    assert await status(order, on_time) == ("PENDING", None)
    cancelled = (await order.emitted(overdue))[-1]
    assert cancelled.event_type == "OrderCancelled"
    assert cancelled.payload.reason == "timeout"  # type: ignore[attr-defined]
    # the sweeper does not cancel it a second time
    await cancel_overdue(order.db)
    assert await emitted_types(order, overdue) == ["OrderCreated", "OrderCancelled"]


async def test_an_overdue_order_that_cannot_be_cancelled_does_not_hold_up_the_others(
    order: ServiceUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    """A PENDING row whose customer id is no valid id (written by hand) failed the whole
    sweep, every time: no overdue order was cancelled any more. It is now left PENDING,
    said once, and skipped by the next sweeps."""
    bad, good = await placed(order, timedelta(0)), await placed(order, timedelta(0))
    async with order.db.engine.begin() as conn:
        await conn.execute(
            text("UPDATE orders SET customer_id = 'not an id' WHERE order_id = :o"), {"o": bad}
        )
    with caplog.at_level(logging.ERROR, logger="order_svc.cancelling"):
        assert await cancel_overdue(order.db) >= 1
        assert await cancel_overdue(order.db) >= 0  # and again: no error raised
    assert await status(order, good) == ("CANCELLED", "timeout")
    assert await status(order, bad) == ("PENDING", None)
    said = [r.getMessage() for r in caplog.records if str(bad) in r.getMessage()]
    assert len(said) == 1 and "cannot be cancelled" in said[0], said


async def test_a_mended_row_is_cancelled_once_the_sweepers_memory_of_it_ends(
    order: ServiceUnderTest, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The sweeper skips an invalid row it met; that memory lasted as long as the process,
    so a row an operator mended stayed PENDING until order_svc restarted (an attack
    trial). It now ends after UNCANCELLABLE_RETRY_SECONDS: the row is tried again, and
    an invalid one is said again."""
    from order_svc import cancelling

    monkeypatch.setattr(cancelling, "_uncancellable", {})
    bad = await placed(order, timedelta(0))
    async with order.db.engine.begin() as conn:
        await conn.execute(
            text("UPDATE orders SET customer_id = 'not an id' WHERE order_id = :o"), {"o": bad}
        )
    with caplog.at_level(logging.ERROR, logger="order_svc.cancelling"):
        await cancel_overdue(order.db)
        await cancel_overdue(order.db)  # remembered: not said again
        cancelling._uncancellable[bad] -= cancelling.UNCANCELLABLE_RETRY_SECONDS  # time passes
        await cancel_overdue(order.db)  # tried again, still invalid: said again
    assert len([r for r in caplog.records if str(bad) in r.getMessage()]) == 2
    async with order.db.engine.begin() as conn:  # the operator mends it
        await conn.execute(text("UPDATE orders SET customer_id = 'mended' WHERE order_id = :o"), {"o": bad})
    await cancel_overdue(order.db)
    assert await status(order, bad) == ("PENDING", None)  # within the memory: skipped
    cancelling._uncancellable[bad] -= cancelling.UNCANCELLABLE_RETRY_SECONDS
    await cancel_overdue(order.db)
    assert await status(order, bad) == ("CANCELLED", "timeout")


async def test_a_payment_that_completes_after_the_deadline_does_not_approve(
    order: ServiceUnderTest,
) -> None:
    oid = await placed(order, timedelta(0))
    await cancel_overdue(order.db)
    assert await order.deliver(event(PaymentCompleted(customer_id="c", amount=Decimal("2.50")), oid)) == (
        "handled"
    )
    assert await status(order, oid) == ("CANCELLED", "timeout")
    assert await emitted_types(order, oid) == ["OrderCreated", "OrderCancelled"]
    # but the late event is in the saga's timeline
    types = await order.rows("SELECT event_type FROM saga_events WHERE order_id = :o", o=oid)
    assert "PaymentCompleted" in {r.event_type for r in types}


async def test_customer_cancels_pending_then_again(order: ServiceUnderTest) -> None:
    oid = await placed(order)
    await cancel_order(order.db, oid, "c")
    assert await status(order, oid) == ("CANCELLED", "cancelled_by_customer")
    with pytest.raises(OrderNotCancellable):
        await cancel_order(order.db, oid, "c")
    assert await emitted_types(order, oid) == ["OrderCreated", "OrderCancelled"]


async def test_customer_cancels_an_approved_order(order: ServiceUnderTest) -> None:
    oid = await placed(order)
    await order.deliver(event(PaymentCompleted(customer_id="c", amount=Decimal("2.50")), oid))
    assert (await status(order, oid))[0] == "APPROVED"
    await cancel_order(order.db, oid, "c")
    assert await status(order, oid) == ("CANCELLED", "cancelled_by_customer")
    assert await emitted_types(order, oid) == ["OrderCreated", "OrderApproved", "OrderCancelled"]


async def test_an_operators_cancellation_says_so(order: ServiceUnderTest) -> None:
    """An operator (no customer given) may cancel anyone's order, and the order and its
    OrderCancelled say who did: ``cancelled_by_operator``, not the customer."""
    oid = await placed(order)
    with pytest.raises(OrderNotFound):
        await cancel_order(order.db, oid, "someone-else")
    await cancel_order(order.db, oid)
    assert await status(order, oid) == ("CANCELLED", "cancelled_by_operator")
    cancelled = (await order.emitted(oid))[-1]
    assert isinstance(cancelled.payload, OrderCancelled)
    assert cancelled.payload.reason == "cancelled_by_operator"
    written = await order.scalar(  # the oldest version with that reason (events.order)
        "SELECT CAST(convert_from(value, 'UTF8') AS json)->>'schema_version' FROM outbox"
        " WHERE key = :k ORDER BY id DESC LIMIT 1",
        k=str(oid).encode(),
    )
    assert written == "2"


async def test_a_rejected_order_cannot_be_cancelled(order: ServiceUnderTest) -> None:
    oid = await placed(order)
    failed = InventoryReservationFailed(customer_id="c", reason="insufficient_stock", product_ids=("p",))
    await order.deliver(event(failed, oid))
    with pytest.raises(OrderNotCancellable):
        await cancel_order(order.db, oid, "c")
    assert await status(order, oid) == ("REJECTED", "insufficient_stock")
    assert await emitted_types(order, oid) == ["OrderCreated", "OrderRejected"]


# -- an order the order service never placed ---------------------------------------------


async def test_what_is_held_for_an_order_never_placed_is_given_back(
    services: dict[str, ServiceUnderTest],
) -> None:
    """An OrderCreated the order service did not write (signed with its key by someone who
    should not have it, or its row lost to a restored backup) reaches the participants:
    inventory reserves, payment charges. Answered about an order it has no row of, the
    order service cancels it (``unknown_order``), and both give back what they hold."""
    inventory, payment, order = services["inventory_svc"], services["payment_svc"], services["order_svc"]
    pid, cid, oid = await add_product(inventory, 5), await add_account(payment, "10.00"), uuid.uuid4()
    assert await inventory.deliver(event(order_created({pid: 2}, customer=cid), oid)) == "handled"
    (reserved,) = await inventory.emitted(oid)
    assert await payment.deliver(reserved) == "handled"
    (completed,) = await payment.emitted(oid)
    assert (completed.event_type, await balance_of(payment, cid)) == ("PaymentCompleted", Decimal("5.00"))

    assert await order.deliver(reserved) == "handled"
    assert await order.deliver(completed) == "handled"  # finds it cancelled: nothing more
    (cancelled,) = await order.emitted(oid)
    assert (cancelled.event_type, cancelled.payload.reason) == ("OrderCancelled", "unknown_order")  # type: ignore[attr-defined]
    assert await status(order, oid) == ("CANCELLED", "unknown_order")  # for the operator to see
    for participant in (inventory, payment):
        assert await participant.deliver(cancelled) == "handled"
    assert await buckets(inventory, pid) == (5, 0, 0)
    assert await balance_of(payment, cid) == Decimal("10.00")
    assert await emitted_types(inventory, oid) == ["InventoryReserved", "InventoryReleased"]
    assert await emitted_types(payment, oid) == ["PaymentCompleted", "PaymentRefunded"]


async def test_replies_about_an_order_never_placed_in_one_batch_cancel_it_once(
    order: ServiceUnderTest,
) -> None:
    oid = uuid.uuid4()
    replies = [
        event(reserved_payload("c", "p"), oid),
        event(PaymentCompleted(customer_id="c", amount=Decimal("2.50")), oid),
    ]
    assert await order.pipeline.process_batch([record_of(e) for e in replies]) == [Outcome.HANDLED] * 2
    assert [e.event_type for e in await order.emitted(oid)] == ["OrderCancelled"]
    assert await status(order, oid) == ("CANCELLED", "unknown_order")


async def test_a_reservation_answered_after_the_charge_for_an_order_never_placed_is_taken_quietly(
    order: ServiceUnderTest,
) -> None:
    """The charge's answer records the order (its lines unknown); the reservation's answer,
    after it, is no fact mismatch: the order is cancelled already."""
    oid = uuid.uuid4()
    assert (
        await order.deliver(event(PaymentCompleted(customer_id="c", amount=Decimal("2.50")), oid))
        == "handled"
    )
    assert await order.deliver(event(reserved_payload("c", "p"), oid)) == "handled"
    assert [e.event_type for e in await order.emitted(oid)] == ["OrderCancelled"]
    assert await status(order, oid) == ("CANCELLED", "unknown_order")


async def test_a_call_that_raises_leaves_its_charge_in_doubt_and_the_rest_of_the_round_recorded(
    payment: ServiceUnderTest,
) -> None:
    """A call that raises something no answer stands for — a bug on our side, an error the
    HTTP client was not known to raise — is that payment's own trouble: it was claimed and
    may have reached the provider, so it is in doubt (``nothing_done`` false), and the other
    answers of the round are recorded. The round's ``asyncio.gather`` raised it instead, and
    every answer of the round was dropped until the leases ended (a review)."""
    assert payment.worker is not None and payment.provider is not None
    good, bad = uuid.uuid4(), uuid.uuid4()

    class Buggy(PaymentProvider):
        async def charge(self, key: str, account_id: str, amount: Decimal, reference: str) -> Any:
            if reference == str(bad):
                raise RuntimeError("a bug of ours")
            return await super().charge(key, account_id, amount, reference)

    buggy = Buggy(payment.provider.base_url, timeout=2.0, breaker_failures=5, breaker_recovery=1.0)
    for oid in (good, bad):
        cid = await add_account(payment, "10.00")
        await payment.deliver(event(reserved_payload(cid, "p", qty=2), oid), work=False)
    worker = PaymentWorker(payment.db, buggy, payment.worker.retry, batch=64, concurrency=8)
    try:
        assert await worker.round() >= 2
    finally:
        await buggy.aclose()
    rows = await payment.rows(
        "SELECT order_id, status, attempts, nothing_done_calls, last_error FROM payments"
        " WHERE order_id IN (:g, :b)",
        g=good,
        b=bad,
    )
    by_id = {r.order_id: r for r in rows}
    assert by_id[good].status == "CHARGED"
    assert (by_id[bad].status, by_id[bad].attempts, by_id[bad].nothing_done_calls) == ("PENDING", 1, 0)
    assert "RuntimeError" in by_id[bad].last_error
    assert await emitted_types(payment, good) == ["PaymentCompleted"]


async def test_invalid_overdue_orders_past_the_sweepers_memory_do_not_hold_up_the_others(
    order: ServiceUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweeper remembers at most _UNCANCELLABLE_MAX invalid rows per process (10,000);
    past that, the oldest ones it could not remember fill every batch again, as one such
    row did before the fix: no overdue order behind them is cancelled any more."""
    from order_svc import cancelling

    monkeypatch.setattr(cancelling, "_uncancellable", {})
    monkeypatch.setattr(cancelling, "_UNCANCELLABLE_MAX", 0)  # the memory is full
    bad, good = await placed(order, timedelta(0)), await placed(order, timedelta(0))
    async with order.db.engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE orders SET customer_id = 'not an id', deadline_at = '2000-01-01' WHERE order_id = :o"
            ),
            {"o": bad},
        )
    for _ in range(3):
        await cancel_overdue(order.db, batch=1)
    assert await status(order, good) == ("CANCELLED", "timeout")
