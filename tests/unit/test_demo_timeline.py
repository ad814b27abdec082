"""The demo's timelines say what each event answered: the event that caused it, or where
the request that started it came from (an HTTP call, a client's command on Kafka, the
order's deadline)."""

from __future__ import annotations

from typing import Any

import pytest

from sagastack.demo import _cause


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
        (_event("OrderRejected", reason="insufficient_stock"), "← a request"),
    ],
)
def test_an_event_names_what_it_answered(event: dict[str, Any], said: str) -> None:
    assert _cause(event, {"e1": "OrderCreated"}) == said
