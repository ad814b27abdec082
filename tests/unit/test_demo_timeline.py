"""The demo's timelines say what each event answered: the event that caused it, or where
the request that started it came from (an HTTP call, a client's command on Kafka, the
order's deadline); and each saga's end says what it did with the customer's money."""

from __future__ import annotations

from typing import Any

import pytest

from sagastack.demo import _cause, money_moved


def _event(event_type: str, causation_id: str | None = None, **payload: Any) -> dict[str, Any]:
    return {"event_type": event_type, "causation_id": causation_id, "payload": payload}


@pytest.mark.parametrize(
    ("event", "said"),
    [
        (_event("InventoryReserved", "e1"), "← OrderCreated"),
        (_event("OrderCreated", "e9"), "← an earlier event"),  # its cause is not in the timeline
        (_event("OrderCreated"), "← POST /orders"),
        (_event("PlaceOrder"), "← a client, on Kafka"),
        (_event("OrderCancelled", reason="timeout"), "← its deadline"),
        (_event("OrderCancelled", reason="cancelled_by_customer"), "← POST …/cancel"),
        (_event("OrderCancelled", reason="cancelled_by_operator"), "← POST …/cancel (an operator)"),
        (_event("OrderRejected", reason="insufficient_stock"), "← a request"),
    ],
)
def test_an_event_names_what_it_answered(event: dict[str, Any], said: str) -> None:
    assert _cause(event, {"e1": "OrderCreated"}) == said


@pytest.mark.parametrize(
    ("events", "said"),
    [
        ([_event("OrderCreated"), _event("PaymentFailed", amount="99.99")], "nothing charged"),
        ([_event("PaymentCompleted", amount="25.00")], "charged 25.00"),
        (
            [_event("PaymentCompleted", amount="40.00"), _event("PaymentRefunded", amount="40.00")],
            "charged 40.00, refunded 40.00",
        ),
        ([_event("PaymentVoided", reason="timeout")], "never charged (the payment was voided)"),
    ],
)
def test_a_saga_says_what_it_did_with_the_money(events: list[dict[str, Any]], said: str) -> None:
    """A rejected order's total once read as if it had been charged."""
    assert money_moved(events) == said
