"""Schema evolution: a version-1 OrderCreated (no ``deadline_at``) and a version-2 one (no
``personal_data``) are upcast on read; so are a version-1 OrderCancelled and
PaymentVoided (version 2 added the reason ``cancelled_by_operator``, version 3
``unknown_order``)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from events import InvalidEvent, OrderCancelled, OrderCreated, PaymentVoided, decode, encode
from events.envelope import new_envelope
from events.upcasting import UPCASTERS, NoUpcastPath, upcast

OCCURRED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def order_created_v1(**payload_overrides: object) -> dict[str, object]:
    """The exact wire form version-1 producers wrote."""
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": "OrderCreated",
        "schema_version": 1,
        "occurred_at": OCCURRED.isoformat(),
        "order_id": str(uuid.uuid4()),
        "causation_id": None,
        "producer": "order_svc",
        "payload": {"customer_id": "c1", "items": [{"product_id": "p1", "quantity": 2}], **payload_overrides},
    }


def test_the_current_version_of_order_created_is_3() -> None:
    assert OrderCreated.schema_version == 3
    assert ("OrderCreated", 1) in UPCASTERS and ("OrderCreated", 2) in UPCASTERS


def test_v1_decodes_to_the_current_model_with_the_v1_deadline() -> None:
    envelope = decode(json.dumps(order_created_v1()).encode())
    assert envelope.schema_version == 3
    assert isinstance(envelope.payload, OrderCreated)
    assert envelope.payload.deadline_at == OCCURRED + timedelta(seconds=30)
    assert envelope.payload.items[0].quantity == 2
    assert envelope.payload.personal_data is None


def test_v2_decodes_to_the_current_model_without_personal_data() -> None:
    deadline = (OCCURRED + timedelta(seconds=90)).isoformat()
    raw = {**order_created_v1(deadline_at=deadline), "schema_version": 2}
    envelope = decode(json.dumps(raw).encode())
    assert envelope.schema_version == 3
    assert isinstance(envelope.payload, OrderCreated)
    assert envelope.payload.personal_data is None
    assert envelope.payload.deadline_at == OCCURRED + timedelta(seconds=90)


def test_upcasting_keeps_everything_else() -> None:
    raw = order_created_v1()
    up = upcast(raw, 2)
    assert {k: v for k, v in up.items() if k not in ("schema_version", "payload")} == {
        k: v for k, v in raw.items() if k not in ("schema_version", "payload")
    }
    assert raw["schema_version"] == 1, "the input is not modified"


def test_an_invalid_v1_event_is_still_invalid_after_upcasting() -> None:
    with pytest.raises(InvalidEvent, match=r"payload\.items"):
        decode(json.dumps(order_created_v1(items=[])).encode())


def test_a_version_newer_than_this_build_is_invalid() -> None:
    raw = {**order_created_v1(), "schema_version": 4}
    with pytest.raises(InvalidEvent, match="unsupported schema_version 4"):
        decode(json.dumps(raw).encode())


def test_an_old_version_without_an_upcaster_is_invalid() -> None:
    raw = {**order_created_v1(), "event_type": "PaymentFailed", "producer": "payment_svc"}
    with pytest.raises(NoUpcastPath):
        upcast({**raw, "schema_version": 0}, 1)


@pytest.mark.parametrize(
    ("event_type", "producer", "model"),
    [("OrderCancelled", "order_svc", OrderCancelled), ("PaymentVoided", "payment_svc", PaymentVoided)],
)
@pytest.mark.parametrize(
    ("version", "reason"), [(1, "timeout"), (1, "cancelled_by_customer"), (2, "cancelled_by_operator")]
)
def test_an_older_cancellation_decodes_to_v3_with_its_reason(
    event_type: str, producer: str, model: type[OrderCancelled | PaymentVoided], version: int, reason: str
) -> None:
    raw = {
        **order_created_v1(),
        "event_type": event_type,
        "producer": producer,
        "schema_version": version,
        "payload": {"customer_id": "c1", "reason": reason},
    }
    envelope = decode(json.dumps(raw).encode())
    assert (envelope.schema_version, model.schema_version) == (3, 3)
    assert isinstance(envelope.payload, model)
    assert envelope.payload.reason == reason


@pytest.mark.parametrize(
    ("payload", "written"),
    [
        (OrderCancelled(customer_id="c1", reason="timeout"), 1),
        (OrderCancelled(customer_id="c1", reason="cancelled_by_customer"), 1),
        (OrderCancelled(customer_id="c1", reason="cancelled_by_operator"), 2),
        (PaymentVoided(customer_id="c1", reason="cancelled_by_customer"), 1),
        (PaymentVoided(customer_id="c1", reason="cancelled_by_operator"), 2),
        (OrderCancelled(customer_id="c1", reason="unknown_order"), 3),
        (PaymentVoided(customer_id="c1", reason="unknown_order"), 3),
    ],
)
def test_a_cancellation_is_written_as_the_oldest_version_that_carries_it(
    payload: OrderCancelled | PaymentVoided, written: int
) -> None:
    """So a consumer not yet upgraded reads every cancellation but those with the reasons
    added since its build, whichever service is upgraded first; this build reads each as
    version 3."""
    wire = encode(new_envelope(payload, order_id=uuid.uuid4(), causation_id=None))
    assert json.loads(wire)["schema_version"] == written
    back = decode(wire)
    assert (back.schema_version, back.payload) == (3, payload)
