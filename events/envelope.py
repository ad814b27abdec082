"""The envelope every event travels in, and the base class of every payload."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from events.values import ExternalId, Instant, Money

__all__ = ["Envelope", "EventPayload", "ExternalId", "Money", "P", "new_envelope"]


class EventPayload(BaseModel):
    """Base of every event's payload: frozen, strict about unknown fields.

    Subclasses declare ``event_type`` (a past-tense name, unique across the system),
    ``schema_version`` (bumped on an incompatible change) and ``producer`` (the only
    service allowed to emit it).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_type: ClassVar[str]
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str]
    #: the oldest version ``wire_version`` may answer (None: only ``schema_version``)
    oldest_wire_version: ClassVar[int | None] = None

    def wire_version(self) -> int:
        """The ``schema_version`` this event is written with: the oldest version that can
        carry it. The current one, unless a newer version only widened what a field may
        hold: then, while the value fits the previous version, the event is written as
        that, so a consumer not yet upgraded reads it and a rollout needs no order
        between producers and consumers (``OrderCancelled``). Consumers of this build
        upcast it on read (``events.upcasting``)."""
        return self.schema_version


P = TypeVar("P", bound=EventPayload)


class Envelope(BaseModel, Generic[P]):
    """Metadata common to all events plus the typed payload.

    ``order_id`` is the saga's correlation id and the Kafka partition key, so all events
    of one saga are ordered within each topic. ``causation_id`` is the ``event_id`` of the
    event this one reacts to (``None`` for events caused by a command, e.g. an HTTP call).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: uuid.UUID
    event_type: str
    schema_version: int = Field(ge=1)
    occurred_at: Instant
    order_id: uuid.UUID
    causation_id: uuid.UUID | None
    producer: str
    payload: P


def new_envelope(payload: P, *, order_id: uuid.UUID, causation_id: uuid.UUID | None) -> Envelope[P]:
    """Wrap ``payload`` in a fresh envelope stamped now, with a new random ``event_id``."""
    envelope_type: Any = Envelope[type(payload)]  # type: ignore[misc]
    result: Envelope[P] = envelope_type(
        event_id=uuid.uuid4(),
        event_type=payload.event_type,
        schema_version=payload.wire_version(),
        occurred_at=datetime.now(UTC),
        order_id=order_id,
        causation_id=causation_id,
        producer=payload.producer,
        payload=payload,
    )
    return result
