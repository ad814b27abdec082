"""The one serializer used by producers and consumers: JSON envelopes, UTF-8.

``decode`` is total: any input either yields a fully validated ``Envelope`` whose payload
is the registered class for its ``event_type``, or raises ``InvalidEvent`` with a reason
fit for a dead letter. It never raises anything else.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import from_json

from events.envelope import Envelope, EventPayload
from events.registry import payload_class
from events.upcasting import NoUpcastPath, upcast
from events.values import error_words, printable

#: How every dead letter's reason begins, before ": " and its detail: one word of a fixed
#: set an operator can filter and alert on (the README's table says what each means and
#: whether a replay helps; ``saga_kit.deadletters.REASON_CODES`` is this set). Typed, so
#: mypy refuses a refusal whose code is not one of them.
ReasonCode = Literal[
    "bad_signature",  # saga_kit.signing: no key this service trusts signed it
    "unreadable_record",  # saga_kit.unreadable: the Kafka client could not read it
    "invalid_event",  # InvalidEvent's default: not a valid event of a known type and version
    "invalid_command",  # events.commands: not a command
    "key_mismatch",  # saga_kit.consumer: keyed by something other than its order id
    "fact_mismatch",  # saga_kit.reactions.FactMismatch
    "unknown_order",  # the services' handlers
    "keys_unavailable",  # order_svc.handlers: a command's token could not be checked
    "handler_error",  # saga_kit.consumer: the service's own code failed
]


def coded_reason(code: ReasonCode, detail: str) -> str:
    """A dead letter's reason: ``"code: detail"``."""
    return f"{code}: {detail}"


class InvalidEvent(Exception):
    """The bytes are not a valid event of a known type and version, or the event cannot
    be applied: dead-letter them. ``reason``, the dead letter's, is ``"code: detail"``:
    ``code`` one word of a fixed set an operator can filter and alert on (``invalid_event``
    by default; the README's dead-letter reasons list them all), ``detail`` the why."""

    def __init__(self, detail: str, code: ReasonCode = "invalid_event") -> None:
        self.reason = coded_reason(code, detail)
        super().__init__(self.reason)


class WrongProducer(InvalidEvent):
    """An envelope names a producer other than the one service that may emit its type
    (``rightful``): a consumer that knows who signed the record says whose word it was."""

    def __init__(self, event_type: str, rightful: str, named: str) -> None:
        super().__init__(f"{event_type} must be produced by {rightful}, not {named!r}")
        self.event_type, self.rightful = event_type, rightful


class _RawEnvelope(BaseModel):
    """The envelope with the payload left as a mapping, to find the payload class."""

    model_config = ConfigDict(extra="allow")
    event_type: Annotated[str, Field(max_length=100)]
    schema_version: Annotated[int, Field(strict=True)]


_EVENT_TYPE_NAME = re.compile(r"[A-Za-z0-9_]{1,100}")


def is_event_type_name(text: str) -> bool:
    """Could ``text`` be an event or command type's name (letters, digits, ``_``; 1 to 100)?
    For showing what a record says it is, never for trusting it."""
    return _EVENT_TYPE_NAME.fullmatch(text) is not None


def peek(data: bytes | None) -> tuple[str | None, uuid.UUID | None]:
    """Best-effort ``(event_type, order_id)`` of any bytes, for listings and logs; each is
    None unless the bytes are a JSON object with a well-formed value for it. Total: any
    input (not JSON, nested too deep, not UTF-8) returns instead of raising."""
    if not data:
        return None, None
    try:
        obj = from_json(data)
    except ValueError:
        return None, None
    if not isinstance(obj, dict):
        return None, None
    event_type, order_id = obj.get("event_type"), obj.get("order_id")
    try:
        parsed_id = uuid.UUID(order_id) if isinstance(order_id, str) and len(order_id) <= 64 else None
    except ValueError:
        parsed_id = None
    named = isinstance(event_type, str) and _EVENT_TYPE_NAME.fullmatch(event_type)
    return (event_type if named else None), parsed_id


def encode(envelope: Envelope[Any]) -> bytes:
    return envelope.model_dump_json().encode()


def decode(data: bytes | None) -> Envelope[EventPayload]:
    if data is None:
        raise InvalidEvent("empty message (tombstone)")
    try:
        raw = _RawEnvelope.model_validate_json(data)
    except ValidationError as exc:
        (first, *_) = exc.errors(include_input=False, include_url=False)
        if first["type"] == "json_invalid":
            # the parser's words are about the JSON ("key must be a string" is an object's
            # member name, not the record's key), said as a command's are (events.commands)
            unreadable = printable(str(first.get("ctx", {}).get("error", "")), 200)
            raise InvalidEvent(f"not an event envelope: its body is not JSON ({unreadable})") from None
        raise InvalidEvent(f"not an event envelope: {summary(exc)}") from None
    cls = payload_class(raw.event_type)
    if cls is None:
        raise InvalidEvent(f"unknown event_type {raw.event_type!r}")
    if raw.schema_version > cls.schema_version:
        raise InvalidEvent(
            f"unsupported schema_version {raw.schema_version} of {raw.event_type}"
            f" (this build reads up to {cls.schema_version})"
        )
    try:
        if raw.schema_version < cls.schema_version:
            envelope = Envelope[cls].model_validate(  # type: ignore[valid-type]
                upcast(json.loads(data), cls.schema_version)
            )
        else:
            envelope = Envelope[cls].model_validate_json(data)  # type: ignore[valid-type]
    except ValidationError as exc:
        raise InvalidEvent(f"invalid {raw.event_type}: {summary(exc)}") from None
    except NoUpcastPath as exc:
        raise InvalidEvent(f"unsupported schema_version: {exc}") from None
    except (KeyError, TypeError, ValueError, ArithmeticError, RecursionError) as exc:
        # an upcaster meets data it cannot convert (a missing field, a date out of range)
        raise InvalidEvent(
            f"invalid {raw.event_type}: cannot upcast v{raw.schema_version}: {printable(repr(exc), 300)}"
        ) from None
    if envelope.producer != cls.producer:
        raise WrongProducer(raw.event_type, cls.producer, envelope.producer)
    return envelope


def own_errors(errors: Sequence[Any]) -> list[Any]:
    """pydantic's ``errors()`` without those another implies: a tuple's ``too_short`` when
    one of its items failed (``summary``)."""
    failed_within = {tuple(e["loc"][:i]) for e in errors for i in range(len(e["loc"]))}
    return [e for e in errors if not (e["type"] == "too_short" and tuple(e["loc"]) in failed_within)]


def summary(exc: ValidationError) -> str:
    """A validation error in one line: where and why, never the input. A tuple's length is
    not its own error when one of its items failed: pydantic counts only the items that
    passed ("items: Tuple should have at least 1 item after validation, not 0" beside the
    one line sent, whose quantity was wrong). A tuple is a "List", as the HTTP API's 422
    says of the same JSON array (a Kafka ``PlaceOrder`` with no items said "Tuple")."""
    parts = []
    for err in own_errors(exc.errors(include_input=False, include_url=False))[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = error_words(err)
        if err["type"] in ("too_short", "too_long"):  # a JSON array, as the HTTP API's 422 says
            msg = msg.replace("Tuple should", "List should", 1)
        parts.append(f"{loc}: {msg}")
    return printable("; ".join(parts), 1000)
