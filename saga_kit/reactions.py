"""A service's reactions to events, applied a batch at a time: **load → decide → save**.

* ``load(uow, events)`` reads, in a few set-based queries (``UnitOfWork.read``: one
  round trip for those that do not depend on each other), everything the batch needs
  (and locks the rows it will change, in a fixed order: no deadlocks) into an in-memory
  state ``S``;
* one **decide** function per event class, registered with ``@reactions.on(EventClass)``,
  applies one event to that state through the service's pure domain rules and returns
  the events to emit in reply — no I/O, so it is unit-tested without a database and
  mypy checks that it handles the payload class it is registered for;
* ``save(uow, state)`` queues every change as a few set-based statements, sent with the
  outgoing events in one round trip before the commit;
* optionally, ``prepare(events)`` first, before the transaction opens: what the batch
  needs that is not in the database and may wait on the network (the order service
  verifies its commands' tokens, whose keys may come from a key server), so that no lock
  is held while it waits (docs/design.md §3.1). It notes what it learns on the events.

Events are decided in arrival order, so two orders for the last unit in one batch see
each other exactly as they would one transaction after the other.

A decide function refuses an event it must never apply (an order it has never heard
of; a fact that contradicts its records: ``FactMismatch``) by raising ``InvalidEvent`` **before** it
changes the state; the consumer dead-letters that one event with the reason and applies
the rest. Any other exception is a bug or a poison event: the consumer isolates it by
splitting the batch (``saga_kit.consumer``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind

from events.codec import InvalidEvent
from events.envelope import Envelope, EventPayload
from saga_kit import logs, tracing
from saga_kit.db import Delivery, UnitOfWork
from saga_kit.headers import Headers

log = logging.getLogger(__name__)


class FactMismatch(InvalidEvent):
    """A validly signed event contradicts what this service already knows (a payment of
    another amount than the order's total, another customer than the order's): it is
    refused, never applied — defence in depth behind the signature (docs/design.md §10).
    Its dead letter's reason starts ``fact_mismatch:``."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, "fact_mismatch")


S = TypeVar("S")
P = TypeVar("P", bound=EventPayload)


@dataclass(frozen=True)
class Reply:
    """An event to emit in reply, with headers of its own (e.g. ``correlation_id``), in
    the trace ``trace`` (default: the handling's own span's)."""

    payload: EventPayload
    headers: Headers = ()
    trace: otel_context.Context | None = None


#: What a decide function returns: the events to emit in reply (same saga, caused by it).
Replies = Sequence[EventPayload | Reply]
Decide = Callable[[S, Envelope[P]], Replies]
Load = Callable[[UnitOfWork, Sequence[Envelope[Any]]], Awaitable[S]]
#: Queues the writes of what changed (``UnitOfWork.write``); they go out in one round trip.
Save = Callable[[UnitOfWork, S], None]
#: Before the transaction: work that may wait on the network, noted on the events.
Prepare = Callable[[Sequence[Envelope[Any]]], Awaitable[None]]
#: Runs after the decisions, in the same transaction, with every event that was applied
#: and the state the decisions left (``None`` if no delivery had a decide function): the
#: order service keeps each saga's timeline with it. Queues its writes.
Observe = Callable[[UnitOfWork, Sequence[Delivery], S | None], None]
#: The sagas whose locks an event takes besides its own (``saga_kit.inbox.claim``): the
#: order service's commands take the one of the order their id would place, so that two
#: commands under one id are judged in turn, whatever orders they name.
AlsoLocks = Callable[[Envelope[Any]], Iterable[uuid.UUID]]


class Reactions(Generic[S]):
    """The registry of one service's decide functions, with its load and save."""

    def __init__(
        self,
        load: Load[S],
        save: Save[S],
        observe: Observe[S] | None = None,
        prepare: Prepare | None = None,
        also_locks: AlsoLocks | None = None,
    ) -> None:
        self._load = load
        self._save = save
        self.observe = observe
        self._prepare = prepare
        self.also_locks = also_locks
        self._decide: dict[type[EventPayload], Decide[S, Any]] = {}

    def on(self, event: type[P]) -> Callable[[Decide[S, P]], Decide[S, P]]:
        """Register the decide function for ``event``; one per event class."""

        def register(decide: Decide[S, P]) -> Decide[S, P]:
            if event in self._decide:
                raise ValueError(f"{event.__name__} already has a reaction")
            self._decide[event] = decide
            return decide

        return register

    @property
    def handlers(self) -> Mapping[type[EventPayload], Decide[S, Any]]:
        return dict(self._decide)

    @property
    def event_types(self) -> frozenset[str]:
        """Names of the event types this service reacts to (observing aside)."""
        return frozenset(c.event_type for c in self._decide)

    def consumes(self, event_type: str) -> bool:
        """Does this service do anything with ``event_type`` (react or observe)?"""
        return self.observe is not None or any(c.event_type == event_type for c in self._decide)

    async def prepare(self, events: Sequence[Envelope[Any]]) -> None:
        """The service's ``prepare`` of the events it reacts to, if it has one; called with
        no transaction open (a ``TransientError`` retries the batch)."""
        if self._prepare is None:
            return  # most services: nothing to look at, on every batch
        reacting = [e for e in events if type(e.payload) in self._decide]
        if reacting:
            await self._prepare(reacting)

    async def load(self, uow: UnitOfWork, deliveries: Sequence[Delivery]) -> S | None:
        """The state the deliveries need (``None`` if none has a decide function): their
        rows, read and locked by the service's load in one round trip."""
        reacting = [d.envelope for d in deliveries if type(d.envelope.payload) in self._decide]
        return await self._load(uow, reacting) if reacting else None

    def apply(self, uow: UnitOfWork, state: S | None, deliveries: Sequence[Delivery]) -> dict[int, str]:
        """Decide each delivery in order on ``state`` (what ``load`` returned for these
        deliveries, or for more), then save; replies are emitted on ``uow``. Returns the
        deliveries refused (index → reason); nothing of theirs was applied."""
        refused: dict[int, str] = {}
        if any(type(d.envelope.payload) in self._decide for d in deliveries):
            if state is None:
                raise ValueError("apply needs the state that load returned for these deliveries")
            for i, delivery in enumerate(deliveries):
                decide = self._decide.get(type(delivery.envelope.payload))
                if decide is None:
                    continue
                envelope = delivery.envelope
                with (
                    tracing.span(
                        f"handle {envelope.event_type}",
                        kind=SpanKind.CONSUMER,
                        parent=delivery.trace(),
                        attributes={
                            "saga.order_id": str(envelope.order_id),
                            "saga.event_id": str(envelope.event_id),
                        },
                    ),
                    logs.bind(order_id=envelope.order_id, event_type=envelope.event_type),
                ):
                    try:
                        replies = decide(state, envelope)
                    except InvalidEvent as exc:
                        refused[i] = exc.reason
                        continue
                    for reply in replies:
                        if isinstance(reply, Reply):
                            uow.reply(reply.payload, to=envelope, headers=reply.headers, trace=reply.trace)
                        else:
                            uow.reply(reply, to=envelope)
                    if log.isEnabledFor(logging.DEBUG):  # one INFO line per batch: saga_kit.consumer
                        log.debug(
                            "applied %s, replied %s",
                            envelope.event_type,
                            ", ".join(_type(r) for r in replies) or "nothing",
                        )
            self._save(uow, state)
        if self.observe is not None:
            applied = [d for i, d in enumerate(deliveries) if i not in refused]
            if applied:
                self.observe(uow, applied, state)
        return refused


def _type(reply: EventPayload | Reply) -> str:
    return (reply.payload if isinstance(reply, Reply) else reply).event_type
