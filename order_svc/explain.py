"""Why did this saga end the way it did, and was everything compensated? — as a pure
function of the order's status and its timeline, shared by the API, the CLI and the
dashboard so all three tell the same story.

Compensation owed by a saga that did not end APPROVED:

* stock: if inventory reserved (InventoryReserved), it must give it back (InventoryReleased);
* money: if payment charged (PaymentCompleted), it must refund it (PaymentRefunded).

An order cancelled after approval owes both. Nothing else is ever owed: a reservation
that failed held nothing, a declined payment charged nothing, a charge voided by an
early cancellation never happened.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Events that undo or refuse something: marked as compensations in every view.
COMPENSATING = frozenset(
    {
        "InventoryReservationFailed",
        "PaymentFailed",
        "OrderRejected",
        "OrderCancelled",
        "InventoryReleased",
        "PaymentRefunded",
    }
)

_REASONS = {
    "insufficient_stock": "inventory could not reserve every line (insufficient stock)",
    "unknown_product": "the order names a product that is not in the catalogue",
    "insufficient_funds": "payment was declined (insufficient funds)",
    "unknown_account": "payment was declined (the customer has no account)",
    "timeout": "its deadline passed before the saga finished",
    "cancelled_by_customer": "the customer cancelled it",
}


@dataclass(frozen=True)
class Compensation:
    action: str
    #: the event that needed it, and the one that did it (None while still owed)
    because_of: str
    done_by: str | None


@dataclass(frozen=True)
class Refusal:
    """An event about this saga the order service refused (a dead letter), e.g. a payment
    of another amount than the order's total (``fact_mismatch``)."""

    event_type: str | None
    reason: str


@dataclass(frozen=True)
class Explanation:
    verdict: str
    compensations: list[Compensation] = field(default_factory=list)
    #: True: all owed compensation happened; False: some is still owed; None: in flight.
    compensated: bool | None = None
    refused: list[Refusal] = field(default_factory=list)


def explain(
    status: str,
    reason: str | None,
    events: Sequence[Mapping[str, Any]],
    refused: Sequence[Refusal] = (),
) -> Explanation:
    """The verdict on a saga from its status, reason and timeline; ``refused``: events
    about it the order service dead-lettered, named at the end of the verdict."""
    told = _explain(status, reason, events)
    if not refused:
        return told
    names = "; ".join(f"{r.event_type or 'an event'} ({r.reason})" for r in refused)
    return Explanation(
        f"{told.verdict} — refused {len(refused)} event(s) about it: {names}",
        told.compensations,
        told.compensated,
        list(refused),
    )


def _explain(status: str, reason: str | None, events: Sequence[Mapping[str, Any]]) -> Explanation:
    seen = {e["event_type"]: e for e in events}
    if status == "PENDING":
        last = events[-1]["event_type"] if events else "nothing yet"
        return Explanation(f"in flight: the last step was {last}")
    if status == "APPROVED":
        return Explanation("approved: stock reserved and sold, payment charged", [], True)

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

    owed = []
    if "InventoryReserved" in seen:
        owed.append(
            Compensation(
                "give reserved or sold stock back",
                "InventoryReserved",
                "InventoryReleased" if "InventoryReleased" in seen else None,
            )
        )
    if "PaymentCompleted" in seen:
        owed.append(
            Compensation(
                "refund the charge",
                "PaymentCompleted",
                "PaymentRefunded" if "PaymentRefunded" in seen else None,
            )
        )
    if not owed:
        verdict += "; nothing was held or charged, so nothing needed undoing"
    return Explanation(verdict, owed, all(c.done_by for c in owed))
