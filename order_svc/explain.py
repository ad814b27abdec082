"""Why did this saga end the way it did, and what does each participant still owe? — as a
pure function of the order's status and its timeline (every event of all three services),
shared by the API, the CLI and the dashboard so all three tell the same story. Nothing is
assumed: every part of the verdict and every item of the checklist is read off an event.

What each outcome owes, and which event settles it:

* **PENDING** — in flight; while payment waits on an unreachable payment provider
  (``PaymentPending`` and no answer yet), the verdict says since when and why.
* **APPROVED** — inventory turns the reservation into a sale (``InventoryCommitted``).
  A compensating event in an approved saga (a release, a refund, a failed payment) is an
  inconsistency, and the verdict says so.
* **REJECTED** — for stock: nothing was held, nothing is owed. For funds: inventory gives
  the reservation back (``InventoryReleased``).
* **CANCELLED** — inventory gives back what it reserved or sold (``InventoryReleased``),
  if the timeline shows a reservation (``InventoryReserved``, or a payment's answer, which
  only a reservation gets and which may be heard before it); payment must not keep a
  penny: a charge is refunded (``PaymentRefunded``), and without one payment confirms it
  will never charge (``PaymentVoided``) or that it had declined (``PaymentFailed``). A
  void also settles a ``PaymentCompleted`` in the timeline: payment voids only an order it
  holds no charge for (the event was not its own, or its records were lost), and the
  verdict says so. Cancelled as ``unknown_order`` (c4', an order the order service never
  placed), an item still owed may be nothing: a participant that never did the step the
  timeline shows has nothing to undo and sends nothing, and the verdict says to look there.

Until the settling event is in the timeline, the item is *still owed by* that service.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: Compensating transactions: events that undo a step that was done (drawn as such in
#: every view). A failed step (``PaymentFailed``, ``InventoryReservationFailed``) or an
#: outcome (``OrderRejected``, ``OrderCancelled``) is not one: it is what calls for them.
COMPENSATING = frozenset({"InventoryReleased", "PaymentRefunded", "PaymentVoided"})

#: Events that prove stock was reserved for the order, the reservation first: payment
#: acts only on one. ``PaymentVoided`` is not one: a cancellation is voided unheard of.
_PROVE_A_RESERVATION = ("InventoryReserved", "PaymentFailed", "PaymentCompleted", "PaymentPending")

_REASONS = {
    "insufficient_stock": "inventory could not reserve every line (insufficient stock)",
    "unknown_product": "the order names a product that is not in the catalogue",
    "insufficient_funds": "payment was declined (insufficient funds)",
    "unknown_account": "payment was declined (the customer has no account)",
    "card_declined": "the payment provider declined the card",
    "timeout": "its deadline passed before the saga finished",
    "cancelled_by_customer": "the customer cancelled it",
    "cancelled_by_operator": "an operator cancelled it",
    "unknown_order": "a participant answered about an order the order service never placed",
}


@dataclass(frozen=True)
class Obligation:
    """One item of the checklist: what ``owed_by`` must do because of ``because_of``, and
    the event that did it (None while still owed). Most are compensations (give stock
    back, refund); an approved saga's is its last forward step (the sale), and a
    cancelled one's may be a promise never to charge."""

    action: str
    because_of: str
    done_by: str | None
    owed_by: str = ""


@dataclass(frozen=True)
class Refusal:
    """An event about this saga the order service refused (a dead letter), e.g. a payment
    of another amount than the order's total (``fact_mismatch``)."""

    event_type: str | None
    reason: str


@dataclass(frozen=True)
class Explanation:
    verdict: str
    owed: list[Obligation] = field(default_factory=list)
    #: True: everything owed was done; False: something is still owed; None: in flight.
    settled: bool | None = None
    refused: list[Refusal] = field(default_factory=list)


#: In flight, after its last step: which participant acts next, and what it does.
_NEXT = {
    "OrderCreated": "inventory_svc to reserve the stock",
    "InventoryReserved": "payment_svc to charge the customer",
    "PaymentCompleted": "order_svc to approve it",
    "PaymentFailed": "order_svc to reject it",
    "InventoryReservationFailed": "order_svc to reject it",
}


def explain(
    status: str,
    reason: str | None,
    events: Sequence[Mapping[str, Any]],
    refused: Sequence[Refusal] = (),
    deadline_at: datetime | None = None,
) -> Explanation:
    """The verdict on a saga from its status, reason and timeline; ``refused``: events
    about it the order service dead-lettered, named at the end of the verdict;
    ``deadline_at``: when the order service cancels it if still in flight, said while it
    is (a saga waiting on a silent participant said neither who it waited for nor until
    when: a newcomer trial)."""
    told = _explain(status, reason, events)
    if status == "PENDING" and deadline_at is not None:
        told = dataclasses.replace(
            told,
            verdict=f"{told.verdict}; its deadline is {_instant(deadline_at.isoformat())}: cancelled then",
        )
    if not refused:
        return told
    names = "; ".join(f"{r.event_type or 'an event'} ({r.reason})" for r in refused)
    return Explanation(
        f"{told.verdict} — refused {len(refused)} event(s) about it: {names}",
        told.owed,
        told.settled,
        list(refused),
    )


def _item(
    seen: Mapping[str, Any], action: str, because_of: str, owed_by: str, *settled_by: str
) -> Obligation:
    return Obligation(action, because_of, next((e for e in settled_by if e in seen), None), owed_by)


def _instant(value: Any) -> str:
    """A moment as the services' other messages write it: UTC, to the second."""
    try:
        return datetime.fromisoformat(str(value)).astimezone(UTC).isoformat(timespec="seconds")
    except ValueError:
        return "?"


def _explain(status: str, reason: str | None, events: Sequence[Mapping[str, Any]]) -> Explanation:
    seen = {e["event_type"]: e for e in events}
    if status == "PENDING":
        last = events[-1]["event_type"] if events else "nothing yet"
        pending = seen.get("PaymentPending")
        if pending is not None and not {"PaymentCompleted", "PaymentFailed"} & seen.keys():
            told = pending.get("payload", {})
            return Explanation(
                f"in flight: waiting on the payment provider since {_instant(told.get('since'))}"
                f" ({told.get('reason', 'no reason given')}); payment retries with the same"
                " idempotency key until the provider settles it; if the saga is cancelled first"
                " (its deadline, or a request), payment voids the charge if the provider did nothing, and"
                " refunds one it may have made"
            )
        after = _NEXT.get(last)
        waits = f"; waiting for {after}" if after else ""
        return Explanation(f"in flight: the last step was {last}{waits}")
    if status == "APPROVED":
        return _approved(seen)

    why = _REASONS.get(reason or "", reason or "no reason recorded")
    if status == "REJECTED":
        verdict = f"rejected: {why}"
        failed = seen.get("InventoryReservationFailed")
        if failed is not None and failed.get("payload", {}).get("product_ids"):
            verdict += f" — {', '.join(failed['payload']['product_ids'])}"
    else:
        verdict = f"cancelled: {why}"
        if "OrderApproved" in seen:
            verdict += " after it was approved"
        waited = None
        if reason == "timeout":
            waited = next((e for e in events if e["event_type"] == "PaymentPending"), None)
        if (
            waited is not None
            and _after(events, "OrderCancelled", "PaymentPending")
            and not any(_after(events, "OrderCancelled", t) for t in ("PaymentCompleted", "PaymentFailed"))
            and {"PaymentVoided", "PaymentFailed", "PaymentCompleted"} & seen.keys()
        ):
            # why the deadline passed: "its deadline passed" alone did not say that payment
            # had waited on the provider all along (a newcomer trial, in an outage)
            told = waited.get("payload", {})
            verdict += (
                f", payment having waited on the provider since {_instant(told.get('since'))}"
                f" ({told.get('reason', 'no reason given')})"
            )

    owed = []
    # payment answers only a reservation (its intent is made on InventoryReserved): its
    # answer, which may be heard first (another topic), proves stock is held
    held = next((e for e in _PROVE_A_RESERVATION if e in seen), None)
    if held is not None:
        owed.append(
            _item(seen, "give reserved or sold stock back", held, "inventory_svc", "InventoryReleased")
        )
    if "PaymentCompleted" in seen:
        # payment voids only an order it holds no charge for: its void settles the refund
        # (the charge is not in its records: an event it did not send, or records lost)
        owed.append(
            _item(
                seen,
                "refund the charge",
                "PaymentCompleted",
                "payment_svc",
                "PaymentRefunded",
                "PaymentVoided",
            )
        )
        if "PaymentVoided" in seen and "PaymentRefunded" not in seen:
            verdict += (
                "; payment_svc voided it: it holds no charge for this order, though a PaymentCompleted"
                " signed as its own is in the timeline (its records lost, or its key stolen)"
            )
        if status == "CANCELLED" and _after(events, "PaymentCompleted", "OrderCancelled"):
            # payment had not read the cancellation yet (it was stopped, and read the
            # reservation first: a demo's saga 5, an operator trial), or the charge was in
            # doubt when it came (the provider did not answer): it finishes a charge it
            # cannot rule out; either way it refunds it
            # "charged after" read as the charge's time, which the provider's record put
            # 10 s before the cancellation when only its answer was lost (a newcomer trial)
            verdict += (
                "; payment's charge was confirmed after the cancellation (it had not read the"
                " cancellation yet, or the charge was under way: made, its answer lost or late),"
                + (" and refunded it" if "PaymentRefunded" in seen else " and refunds it")
            )
        refund_waits = _last_after(events, "PaymentPending", "PaymentCompleted")
        if refund_waits is not None and "PaymentRefunded" not in seen:
            told = refund_waits.get("payload", {})
            verdict += (
                f"; the refund is waiting on the provider since {_instant(told.get('since'))}"
                f" ({str(told.get('reason', 'no reason given')).removeprefix('refund: ')}):"
                " payment asks again under the same idempotency key until the provider takes it"
            )
    elif status == "CANCELLED":
        # payment always hears of a cancellation: it voids, or it had declined, or it
        # charged in the meantime and refunds
        pending = seen.get("PaymentPending")
        if pending is not None and not {"PaymentVoided", "PaymentFailed", "PaymentRefunded"} & seen.keys():
            verdict += (
                "; payment is waiting on the provider since"
                f" {_instant(pending.get('payload', {}).get('since'))}: it voids the payment if the"
                " provider did nothing, else finishes the charge under the same key and refunds it"
            )
        owed.append(
            _item(
                seen,
                "keep no charge: void it, or refund a charge already under way",
                "OrderCancelled",
                "payment_svc",
                "PaymentVoided",
                "PaymentFailed",
                "PaymentRefunded",
            )
        )
    settled = all(c.done_by for c in owed)
    if reason == "unknown_order" and not settled:
        # c4': a participant that did nothing for this order (the event about it not its
        # own) has nothing to undo and says nothing: its own records tell
        verdict += (
            "; a participant that never did what the timeline says it did (an event signed with"
            " its stolen key) has nothing to undo and says nothing: its own records tell"
        )
    if settled and not any(c.because_of != "OrderCancelled" for c in owed):
        # only once everything owed is done: until payment and inventory have answered a
        # cancellation, either may still hold or charge something
        verdict += "; nothing was held or charged, so nothing needed undoing"
    return Explanation(verdict, owed, settled)


def _last_after(
    events: Sequence[Mapping[str, Any]], event_type: str, earlier: str
) -> Mapping[str, Any] | None:
    """The last ``event_type`` event in the timeline after its first ``earlier`` one."""
    types = [e["event_type"] for e in events]
    if earlier not in types:
        return None
    start = types.index(earlier)
    return next((e for e in reversed(events[start + 1 :]) if e["event_type"] == event_type), None)


def _after(events: Sequence[Mapping[str, Any]], later: str, earlier: str) -> bool:
    """Is the first ``later`` event in the timeline after the first ``earlier`` one?"""
    order = [e["event_type"] for e in events]
    return later in order and earlier in order and order.index(later) > order.index(earlier)


def _approved(seen: Mapping[str, Any]) -> Explanation:
    charged = seen.get("PaymentCompleted")
    parts = ["approved: stock reserved" if "InventoryReserved" in seen else "approved"]
    if charged is not None:
        parts.append(f"payment charged {charged.get('payload', {}).get('amount', '')}".rstrip())
    else:
        parts.append("no payment in the timeline yet")
    sale = _item(
        seen, "turn the reservation into a sale", "OrderApproved", "inventory_svc", "InventoryCommitted"
    )
    parts.append("sale committed" if sale.done_by else "sale not yet committed by inventory_svc")
    verdict = ", ".join(parts)
    wrong = [
        t for t in ("InventoryReleased", "PaymentFailed", "PaymentRefunded", "PaymentVoided") if t in seen
    ]
    if wrong:
        verdict += f" — inconsistent: an approved saga holds {', '.join(wrong)}"
    return Explanation(verdict, [sale], sale.done_by is not None and charged is not None and not wrong)
