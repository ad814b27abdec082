"""The wire contract: one codec, strict decoding, exact money."""

from __future__ import annotations

import json
import re
import uuid
from decimal import Decimal
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from events import (
    EVENT_TYPES,
    InvalidEvent,
    InventoryReserved,
    PaymentCompleted,
    PricedLine,
    decode,
    encode,
    new_envelope,
)
from events.codec import summary
from events.commands import PlaceOrder, to_envelope
from events.values import Money, SafeText
from tests.unit.samples import order_created, sample_payloads


@pytest.mark.parametrize("payload", sample_payloads(), ids=lambda p: p.event_type)
def test_every_event_round_trips(payload: object) -> None:
    envelope = new_envelope(payload, order_id=uuid.uuid4(), causation_id=uuid.uuid4())  # type: ignore[type-var]
    decoded = decode(encode(envelope))
    # read as the current version, whichever it was written as (EventPayload.wire_version)
    assert decoded == envelope.model_copy(update={"schema_version": type(payload).schema_version})  # type: ignore[attr-defined]
    assert type(decoded.payload) is type(payload)


def test_samples_cover_every_event_type() -> None:
    assert {p.event_type for p in sample_payloads()} == set(EVENT_TYPES)


def test_money_travels_as_an_exact_decimal_string() -> None:
    env = new_envelope(
        PaymentCompleted(customer_id="c", amount=Decimal("0.10")),
        order_id=uuid.uuid4(),
        causation_id=None,
    )
    wire = json.loads(encode(env))
    assert wire["payload"]["amount"] == "0.10"
    assert decode(encode(env)).payload.amount == Decimal("0.10")  # type: ignore[attr-defined]


def _wire(**overrides: object) -> bytes:
    env = new_envelope(
        order_created({"p1": 1}, customer="c1"),
        order_id=uuid.uuid4(),
        causation_id=None,
    )
    data = json.loads(encode(env))
    for key, value in overrides.items():
        if key.startswith("payload."):
            data["payload"][key.removeprefix("payload.")] = value
        else:
            data[key] = value
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (None, "empty message"),
        (b"", "not an event envelope"),
        (b"\xff\xfe garbage", "not an event envelope"),
        (b"[1, 2]", "not an event envelope"),
        # the parser's words about the JSON, said as such: "<root>: Invalid JSON: key must be a
        # string" was read as the record's key (an operator trial)
        (b"{1: 2}", "not an event envelope: its body is not JSON (key must be a string at line 1 column 2)"),
        (_wire(event_type="OrderShipped"), "unknown event_type 'OrderShipped'"),
        (_wire(schema_version=9), "unsupported schema_version 9"),
        (_wire(producer="payment_svc"), "must be produced by order_svc"),
        (_wire(order_id="not-a-uuid"), "invalid OrderCreated: order_id"),
        (_wire(**{"payload.items": []}), "invalid OrderCreated: payload.items"),
        (_wire(**{"payload.items": [{"product_id": "p", "quantity": 0}]}), "quantity"),
        (_wire(**{"payload.surprise": 1}), "payload.surprise"),
        (_wire(occurred_at="2026-01-01T00:00:00"), "occurred_at"),  # naive time
    ],
)
def test_invalid_input_raises_invalid_event_with_a_reason(data: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        decode(data)
    assert reason in info.value.reason
    assert info.value.reason.startswith("invalid_event: ")  # the code an operator filters on


def test_money_rejects_more_than_two_decimal_places() -> None:
    with pytest.raises(ValueError):
        PricedLine(product_id="p", quantity=1, unit_price=Decimal("1.001"), line_total=Decimal("1"))


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("1000000000000.00", "at most 12 digits before the point: at most 999999999999.99"),
        ("12.345", "at most two decimal places"),
        ("1e3", "at most two decimal places"),
    ],
)
def test_money_says_whether_its_form_or_its_size_is_wrong(text: str, said: str) -> None:
    with pytest.raises(ValueError, match=re.escape(said)):
        TypeAdapter(Money).validate_python(text)


def test_reserved_total_is_exact() -> None:
    line = PricedLine(product_id="p", quantity=3, unit_price=Decimal("0.10"), line_total=Decimal("0.30"))
    ev = InventoryReserved(customer_id="c", lines=(line,), total=Decimal("0.30"))
    assert ev.total == Decimal("0.30")


@pytest.mark.parametrize(
    "moment",
    [
        "9999-12-31T23:59:59-23:59",
        "0001-01-01T00:00:00+23:59",
        "1969-12-31T23:59:59Z",
        "9000-01-01T00:00:00Z",
    ],
)
def test_an_event_time_out_of_range_is_invalid(moment: str) -> None:
    """Every stored instant must read back in any time zone: 1970 ≤ year < 9000, UTC."""
    wire = json.loads(encode(new_envelope(order_created({"p": 1}), order_id=uuid.uuid4(), causation_id=None)))
    for field in ("occurred_at", "deadline_at"):
        bad = json.loads(json.dumps(wire))
        (bad if field == "occurred_at" else bad["payload"])[field] = moment
        with pytest.raises(InvalidEvent, match="between the years"):
            decode(json.dumps(bad).encode())


@pytest.mark.parametrize(
    ("items", "said"),
    [
        # one line, its quantity wrong: once also "items: Tuple should have at least 1 item"
        (
            [{"product_id": "w", "quantity": 0}],
            "items.0.quantity: Input should be greater than or equal to 1",
        ),
        # "Tuple": the HTTP API's 422 says "List" of the same JSON array
        ([], "items: List should have at least 1 item after validation, not 0"),
    ],
)
def test_a_validation_summary_names_what_is_wrong_and_nothing_else(items: list[Any], said: str) -> None:
    with pytest.raises(ValidationError) as refused:
        PlaceOrder.model_validate({"command_id": str(uuid.uuid4()), "customer_id": "a", "items": items})
    assert summary(refused.value) == said


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("x\u0000y", "the control character U+0000"),
        ("x\u0085y", "the control character U+0085"),
        ("1 Main St\u202e", "the bidirectional control character U+202E"),
        ("\u2066x", "the bidirectional control character U+2066"),
        ("x\ud800", "the lone surrogate U+D800"),
    ],
)
def test_stored_text_names_the_kind_of_character_it_refuses(text: str, said: str) -> None:
    """A bidirectional override was called "the control or surrogate character" (a trial)."""
    with pytest.raises(ValidationError) as refused:
        TypeAdapter(SafeText).validate_python(text)
    assert refused.value.errors()[0]["msg"] == f"Value error, text must not contain {said}"


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b'{"command_type": "PlaceOrder"}', "not a command: no command_id (a UUID)"),
        (b'{"command_id": "not-a-uuid"}', "not a command: its command_id 'not-a-uuid' is not a UUID"),
        (b'{"command_id": 7}', "not a command: its command_id 7 is not a UUID"),
    ],
)
def test_a_record_without_a_usable_command_id_is_not_a_command_and_says_which(body: bytes, said: str) -> None:
    """An attack trial: a command_id that is there and not a UUID was "no command_id"."""
    with pytest.raises(InvalidEvent) as refused:
        to_envelope(body)
    assert str(refused.value) == refused.value.reason == f"invalid_command: {said}"


def test_a_validators_refusal_is_said_in_its_own_words_at_every_door() -> None:
    """An HTTP 422, a dead letter's reason and sagactl's usage error all began a
    validator's refusal with pydantic's "Value error, " (a trial): its words alone now; a
    refusal of another type is as pydantic says it."""
    from fastapi.exceptions import RequestValidationError
    from pydantic import BaseModel

    from events.codec import summary
    from events.values import error_words
    from saga_kit.http import validation_errors

    class Line(BaseModel):
        note: SafeText
        quantity: int

    with pytest.raises(ValidationError) as refused:
        Line.model_validate({"note": "a\u0007b", "quantity": "x"})
    words = "text must not contain the control character U+0007"
    assert [error_words(e) for e in refused.value.errors()] == [
        words,
        "Input should be a valid integer, unable to parse string as an integer",
    ]
    (said, _) = validation_errors(RequestValidationError(refused.value.errors()))
    assert said["msg"] == words
    line = summary(refused.value)
    assert line.startswith(f"note: {words}; quantity: Input should be"), line
    other = {"type": "string_type", "msg": "Value error, as a client wrote it"}
    assert error_words(other) == other["msg"]


def test_a_refused_command_type_tells_an_escape_from_the_text_of_one() -> None:
    """An ESC in ``command_type`` and the text ``\\x1b`` were one type in the refusal, and
    the command's own was lost with it (an attack trial)."""
    refused = []
    for command_type in ("Place\x1bOrder", "Place\\x1bOrder"):
        body = {"command_id": str(uuid.uuid4()), "command_type": command_type, "payload": {}}
        body["schema_version"] = 1
        refused.append(to_envelope(json.dumps(body).encode()).payload)
    assert [r.command_type for r in refused] == ["Place\\x1bOrder", "Place\\\\x1bOrder"]
    assert refused[0].detail != refused[1].detail
