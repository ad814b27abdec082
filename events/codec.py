"""The one serializer used by producers and consumers: JSON envelopes, UTF-8.

``decode`` is total: any input either yields a fully validated ``Envelope`` whose payload
is the registered class for its ``event_type``, or raises ``InvalidEvent`` with a reason
fit for a dead letter. It never raises anything else.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from events.envelope import Envelope, EventPayload
from events.registry import payload_class
from events.upcasting import NoUpcastPath, upcast


class InvalidEvent(Exception):
    """The bytes are not a valid event of a known type and version: dead-letter them."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _RawEnvelope(BaseModel):
    """The envelope with the payload left as a mapping, to find the payload class."""

    model_config = ConfigDict(extra="allow")
    event_type: str
    schema_version: int


def encode(envelope: Envelope[Any]) -> bytes:
    return envelope.model_dump_json().encode()


def decode(data: bytes | None) -> Envelope[EventPayload]:
    if data is None:
        raise InvalidEvent("empty message (tombstone)")
    try:
        raw = _RawEnvelope.model_validate_json(data)
    except ValidationError as exc:
        raise InvalidEvent(f"not an event envelope: {_summary(exc)}") from None
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
        raise InvalidEvent(f"invalid {raw.event_type}: {_summary(exc)}") from None
    except NoUpcastPath as exc:
        raise InvalidEvent(f"unsupported schema_version: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidEvent(
            f"invalid {raw.event_type}: cannot upcast v{raw.schema_version}: {exc!r}"
        ) from None
    if envelope.producer != cls.producer:
        raise InvalidEvent(f"{raw.event_type} must be produced by {cls.producer}, not {envelope.producer!r}")
    return envelope


def _summary(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
