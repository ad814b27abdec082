"""Payment reactions: the intent to charge on InventoryReserved (step 3), the void or the
refund on OrderCancelled (c6). The calls to the payment provider are not made here: a
reaction runs inside the consumer's transaction, which must never wait on another system.
It records the intent; the payment worker (``payment_svc.worker``) makes the call and
records its result in a transaction of its own.

A batch at a time (``saga_kit.reactions``): ``load`` locks the batch's orders' payment
rows; each decide function changes them; ``save`` writes what changed.

The ``payments`` row of an order is the one decision record, whatever arrives first:

* PENDING — charge intended, the provider not (yet) asked or not (yet) answered;
* CHARGED / DECLINED — the provider's answer;
* REFUND_PENDING — charged, and the order was cancelled: a refund to make;
* REFUNDED — the provider gave it back;
* VOIDED — the cancellation came while the provider could not have charged (never asked,
  or every call answered "nothing done"); a late InventoryReserved finds the row and
  charges nothing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from events import InventoryReserved, OrderCancelled, PaymentVoided
from events.envelope import Envelope
from payment_svc.provider import cannot_have_charged
from payment_svc.runtime import HANDOFF, WORK_DUE
from payment_svc.worker import Due
from saga_kit import sql, tracing
from saga_kit.db import UnitOfWork
from saga_kit.reactions import Reactions, Replies


@dataclass
class Payment:
    customer_id: str
    amount: Decimal
    status: str
    reason: str | None = None
    #: provider calls claimed so far (payment_svc.worker)
    attempts: int = 0
    cancel_requested: bool = False
    #: calls answered "nothing done" (``nothing_done`` of payment_svc.provider.Unavailable
    #: or Refused: 503, 429, any 4xx but 409, no connection, the breaker open): while it equals
    #: ``attempts`` the provider cannot have charged; a call in flight, lost in a crash or
    #: answered otherwise (a timeout, a lost answer, a 5xx but 503) keeps them apart
    nothing_done_calls: int = 0
    #: the event the pending provider call answers, and its trace
    cause: uuid.UUID | None = None
    traceparent: str | None = None
    new: bool = False
    changed: bool = False
    #: its latest claim was taken back from the hand-off, never called: ``save`` undoes it
    withdrawn: bool = False


def _never(order_id: uuid.UUID, attempts: int) -> bool:
    return False


@dataclass
class Ledger:
    """What a batch needs: its orders' payment rows (locked), and ``withdraw``: takes a
    claimed payment back from the worker's hand-off if the worker has not called it yet
    (``HandOff.withdraw``; ``load`` gives the process's; none by default). Taking back is
    the one effect a decision has outside the batch's transaction: if the transaction then
    rolls back, the claim stays in the table, called by no one until its lease ends, and
    the cancellation, applied again, finds it in doubt (charged, then refunded: as before
    the hand-off could be taken back)."""

    payments: dict[uuid.UUID, Payment] = field(default_factory=dict)
    withdraw: Callable[[uuid.UUID, int], bool] = _never


async def load(uow: UnitOfWork, events: Sequence[Envelope[Any]]) -> Ledger:
    """The payment rows of the batch's orders, locked in order-id order (concurrent
    batches never deadlock): one query, one round trip. An order without a row is absent
    from the ledger; the decide functions say what that means for each event."""
    ledger = Ledger(withdraw=HANDOFF.withdraw)
    (rows,) = await uow.read(
        (
            "SELECT order_id, customer_id, amount, status, reason, attempts, cancel_requested,"
            " nothing_done_calls"
            f" FROM payments WHERE order_id IN {sql.UUIDS} ORDER BY order_id FOR UPDATE",
            {"ids": sql.values(sorted({e.order_id for e in events}))},
        )
    )
    for row in rows:
        ledger.payments[row.order_id] = Payment(
            row.customer_id,
            row.amount,
            row.status,
            row.reason,
            row.attempts,
            row.cancel_requested,
            row.nothing_done_calls,
        )
    return ledger


def save(uow: UnitOfWork, ledger: Ledger) -> None:
    """Write what the batch changed: new payments in one insert, changed ones in one update.
    A charge or refund that became due is claimed here for the worker, while it takes them
    (``HANDOFF``): ``attempts + 1`` and its lease, as the worker's claim would, handed to it
    once this commits; the rest are due now, for the worker's claim."""
    room, lease = HANDOFF.room()
    claimed: list[Due] = []
    spilled: list[uuid.UUID] = []
    claimed_at = time.monotonic()  # before the claim runs (with the writes): the lease's start

    def claim(oid: uuid.UUID, p: Payment) -> int:
        """1 if ``p``, due now, is claimed for the hand-off (there is room), else 0: left due
        in the table, where nothing handed off may pass it (``HandOff.spill``)."""
        if len(claimed) >= room:
            spilled.append(oid)
            return 0
        claimed.append(Due(oid, p.customer_id, p.amount, p.status, p.attempts + 1, p.traceparent))
        return 1

    new = [
        {
            **{"o": oid, "c": p.customer_id, "a": p.amount, "s": p.status, "r": p.reason},
            # a new charge is due; a new row is otherwise a void, due for nothing
            **{"k": p.cause, "t": p.traceparent, "n": claim(oid, p) if p.status == "PENDING" else 0},
        }
        for oid, p in ledger.payments.items()
        if p.new
    ]
    changed = [
        {
            **{"o": oid, "s": p.status, "r": p.reason, "x": p.cancel_requested, "k": p.cause},
            # a refund is due; a PENDING row changed is a cancellation marked while its
            # call is out, which the worker's record answers
            **{
                "t": p.traceparent,
                "n": claim(oid, p) if p.status == "REFUND_PENDING" else -1 if p.withdrawn else 0,
            },
        }
        for oid, p in ledger.payments.items()
        if p.changed and not p.new
    ]
    if claimed:
        uow.after_commit(lambda: HANDOFF.give(claimed, claimed_at))
    if spilled:
        uow.after_commit(HANDOFF.spill)
    if new or changed:
        uow.after_commit(WORK_DUE.set)  # a charge or refund is due: the worker goes now
    # a claimed row's lease: the worker's; an unclaimed one is due now
    due_at = "clock_timestamp() + make_interval(secs => v.n * %(lease)s)"
    if new:
        uow.write(
            (
                "INSERT INTO payments (order_id, customer_id, amount, status, reason, charge_cause,"
                " traceparent, attempts, next_attempt_at)"
                f" SELECT o, c, a, s, r, k, t, n, {due_at} FROM json_to_recordset(CAST(%(rows)s AS json))"
                " AS v(o uuid, c text, a numeric, s text, r text, k uuid, t text, n int)"
            ),
            {"rows": sql.rows(new), "lease": lease},
        )
    if changed:
        # a change here is a cancellation: the refund (if any) answers it, in its trace,
        # and is due now (or claimed), whatever backoff the charge had
        uow.write(
            (
                "UPDATE payments p SET status = v.s, reason = v.r, cancel_requested = v.x,"
                " refund_cause = v.k, traceparent = COALESCE(v.t, p.traceparent),"
                " attempts = p.attempts + v.n,"
                # voided, nothing waits; a refund's wait is its own, not the charge's (a
                # trial saw a voided payment still "waiting since")
                " waiting_since = CASE WHEN v.s IN ('VOIDED', 'REFUND_PENDING') THEN NULL"
                " ELSE p.waiting_since END,"
                f" next_attempt_at = CASE WHEN v.s = 'REFUND_PENDING' THEN {due_at}"
                " ELSE p.next_attempt_at END, updated_at = clock_timestamp()"
                f" FROM {sql.recordset('o uuid, s text, r text, x boolean, k uuid, t text, n int')}"
                " WHERE p.order_id = v.o"
            ),
            {"rows": sql.rows(changed), "lease": lease},
        )


reactions: Reactions[Ledger] = Reactions(load, save)


@reactions.on(InventoryReserved)
def on_inventory_reserved(ledger: Ledger, event: Envelope[InventoryReserved]) -> Replies:
    """Intend to charge the customer the order's total: a PENDING payment, which the
    payment worker takes to the provider. Once per order: the payment row is the decision
    record, so a second InventoryReserved (or one after a cancellation) changes nothing.
    Nothing is emitted yet: PaymentCompleted or PaymentFailed follow the provider's answer."""
    reserved = event.payload
    if event.order_id not in ledger.payments:
        ledger.payments[event.order_id] = Payment(
            reserved.customer_id,
            reserved.total,
            "PENDING",
            cause=event.event_id,
            traceparent=tracing.current_traceparent(),
            new=True,
        )
    return []


@reactions.on(OrderCancelled)
def on_order_cancelled(ledger: Ledger, event: Envelope[OrderCancelled]) -> Replies:
    """c6: payment must not keep a penny of a cancelled order.

    * nothing decided, or a charge intended that the provider cannot have made — every
      call claimed so far (none, or an outage's 503s, the breaker open) was answered
      "nothing done": void it — it will never be charged (``PaymentVoided``);
    * a charge claimed and handed to the worker, not yet called (``Ledger.withdraw``):
      taken back, its claim undone, and voided as above if that claim was all that kept
      it from voiding (a trial: cancelled while the worker's round was still out, such
      charges were made when it ended, then refunded);
    * a charge whose call is in flight: mark it; the worker voids it if the answer is
      "nothing done", else it goes on as below;
    * a charge in doubt — a call lost in a crash, or answered without settling it (a
      timeout, a lost answer, a 5xx but 503): the provider may have charged. Mark it; the
      worker finishes the charge with the same idempotency key (never a second charge)
      and then refunds it;
    * charged: refund it (REFUND_PENDING; the worker asks the provider);
    * declined, refunded or voided already: nothing to give back."""
    cancelled = event.payload
    payment = ledger.payments.get(event.order_id)
    if payment is not None:
        payment.cause, payment.traceparent = event.event_id, tracing.current_traceparent()
    if (
        payment is not None
        and payment.status == "PENDING"
        and not payment.new
        and not cannot_have_charged(payment.attempts, payment.nothing_done_calls)
        and cannot_have_charged(payment.attempts - 1, payment.nothing_done_calls)
        and ledger.withdraw(event.order_id, payment.attempts)
    ):
        payment.attempts, payment.withdrawn = payment.attempts - 1, True
    if payment is None or (
        payment.status == "PENDING" and cannot_have_charged(payment.attempts, payment.nothing_done_calls)
    ):
        voided = Payment(cancelled.customer_id, Decimal("0"), "VOIDED", cancelled.reason)
        if payment is not None:
            voided.customer_id, voided.withdrawn = payment.customer_id, payment.withdrawn
        # a payment intended earlier in this batch is not stored yet: the void is its insert
        voided.new = payment is None or payment.new
        voided.changed = not voided.new
        ledger.payments[event.order_id] = voided
        return [PaymentVoided(customer_id=voided.customer_id, reason=cancelled.reason)]
    if payment.status == "PENDING":
        if not payment.cancel_requested:
            payment.cancel_requested, payment.reason, payment.changed = True, cancelled.reason, True
        return []
    if payment.status != "CHARGED":
        return []
    # to whoever was charged, whatever customer the cancellation names: a refund that is
    # owed is never refused nor redirected
    payment.status, payment.reason, payment.changed = "REFUND_PENDING", cancelled.reason, True
    return []
