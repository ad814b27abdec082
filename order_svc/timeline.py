"""The saga timeline: every event of an order, from every service, kept by the order
service (docs/design.md §8). Its own events are recorded as they are emitted (same transaction
as the outbox row); the participants' events as they are consumed. Idempotent on
``event_id``."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from events.commands import PlaceOrder
from events.order import CommandRejected
from saga_kit import sql, tracing
from saga_kit.db import Delivery, UnitOfWork


def record(
    uow: UnitOfWork,
    deliveries: Sequence[Delivery],
    strangers: Collection[uuid.UUID] = (),
    senders: Mapping[uuid.UUID, str] | None = None,
) -> None:
    """Add events to their sagas' timelines (one queued statement); a repeat changes nothing
    but this: a command recorded as a stranger's that is applied when sent again (the same
    bytes and token: the same event) is recorded as its order's then. Each keeps the trace
    id of the ``traceparent`` it travels with: one saga, one trace, and a customer's command
    the subject of the token it came with, from ``senders`` (event id → subject; ``sender``:
    whose commands a customer reads, ``GET /commands/{id}``).

    The events whose ids are in ``strangers`` (commands from someone who may not act for
    their order) are recorded ``from_stranger``, and so is a ``CommandRejected`` that
    answers one (its cause's flag, looked up in the same statement): kept for ``GET
    /commands/{id}`` and the operators' feed, never shown in the order's timeline (``load``)."""
    uow.write(
        (
            "INSERT INTO saga_events (event_id, order_id, event_type, producer, occurred_at, causation_id,"
            " payload, trace_id, from_stranger, sender)"
            " SELECT e, o, t, p, at, c, CAST(pl AS jsonb), tr,"
            " coalesce(s, (SELECT x.from_stranger FROM saga_events x WHERE x.event_id = c), true), b"
            " FROM json_to_recordset(CAST(%(rows)s AS json))"
            " AS v(e uuid, o uuid, t text, p text, at timestamptz, c uuid, pl json, tr text, s boolean,"
            " b text)"
            # a command recorded a stranger's and applied when sent again (a CancelOrder
            # that overtook its PlaceOrder: the same bytes and token) is its order's now, in its place
            # then (a command's time is when it was read): it stayed hidden from the owner,
            # her timeline showing an OrderCancelled of no cause (an attack trial). Nothing
            # else changes on a repeat
            " ON CONFLICT (event_id) DO UPDATE SET from_stranger = false, sender = EXCLUDED.sender,"
            " occurred_at = EXCLUDED.occurred_at"
            " WHERE saga_events.from_stranger AND NOT EXCLUDED.from_stranger"
        ),
        {
            "rows": sql.rows(
                {
                    "e": d.envelope.event_id,
                    "o": d.envelope.order_id,
                    "t": d.envelope.event_type,
                    "p": d.envelope.producer,
                    "at": d.envelope.occurred_at,
                    "c": d.envelope.causation_id,
                    "pl": d.envelope.payload.model_dump(mode="json"),
                    "tr": tracing.trace_id_of(d.trace()),
                    # a refusal is as foreign as the command it answers: null looks it up
                    "s": None
                    if isinstance(d.envelope.payload, CommandRejected)
                    else d.envelope.event_id in strangers,
                    "b": None if senders is None else senders.get(d.envelope.event_id),
                }
                # each event once (an update may not touch a row twice in one statement):
                # the consumer's dedupe step keeps one copy of an event in a batch, and an
                # emitted event's id is new
                for d in deliveries
            )
        },
    )


async def load(conn: AsyncConnection, order_id: Any) -> list[dict[str, Any]]:
    """The order's timeline, oldest first: its events but a stranger's (``record``) and a
    ``PlaceOrder`` for another customer than the order's, with its answer. Such a
    ``PlaceOrder`` was refused before the order existed (admission: it may be sent again
    under its id), so it was no stranger's then; another customer who placed an order
    under that id afterwards was shown it, its customer and items (an attack trial)."""
    rows = await conn.execute(
        text(
            "SELECT seq, event_id, event_type, producer, occurred_at, causation_id, payload, trace_id"
            " FROM saga_events e WHERE order_id = :o AND NOT from_stranger"
            " AND NOT EXISTS (SELECT 1 FROM saga_events p JOIN orders o ON o.order_id = p.order_id"
            " WHERE p.event_id IN (e.event_id, e.causation_id) AND p.order_id = :o AND p.event_type = :place"
            " AND p.payload->>'customer_id' IS DISTINCT FROM o.customer_id)"
            " ORDER BY occurred_at, seq"
        ),
        {"o": order_id, "place": PlaceOrder.event_type},
    )
    return [dict(row._mapping) for row in rows]


async def feed(
    conn: AsyncConnection, after: int, limit: int, skip: Collection[int] = ()
) -> list[dict[str, Any]]:
    """At most ``limit`` events of all sagas recorded after position ``after``, in
    recording order, leaving out the positions in ``skip``."""
    rows = await conn.execute(
        text(
            "SELECT seq, order_id, event_id, event_type, producer, occurred_at, causation_id, payload,"
            " trace_id FROM saga_events WHERE seq > :after AND NOT seq = ANY(:skip) ORDER BY seq LIMIT :n"
        ),
        {"after": after, "n": limit, "skip": sorted(skip)},
    )
    return [dict(row._mapping) for row in rows]


async def last_seq(conn: AsyncConnection) -> int:
    """The highest position in the timeline committed so far (0 while it is empty; one
    index read): every ``Last-Event-ID`` a stream gave out is at most this."""
    return int(await conn.scalar(text("SELECT COALESCE(MAX(seq), 0) FROM saga_events")) or 0)


#: How long a timeline insert may stay uncommitted and still be followed. ``seq`` comes
#: from a sequence, so a transaction can commit a *lower* seq after a higher one is
#: already visible; following "seq > last seen" alone would skip it.
LATE_COMMIT_WINDOW = timedelta(seconds=30)


@dataclass
class Follower:
    """Follows the timeline without skipping late commits: each poll re-reads everything
    above a floor that only moves past rows recorded longer ago than the late-commit
    window, and remembers which seqs above the floor it has already returned."""

    floor: int
    seen: set[int] = field(default_factory=set)

    @classmethod
    async def starting_now(cls, conn: AsyncConnection) -> Follower:
        """Follow from now on: what is visible now counts as seen, but rows that commit
        later with a lower seq (transactions still open now) are still delivered."""
        floor = int(
            await conn.scalar(
                text(
                    "SELECT COALESCE(MAX(seq), 0) FROM saga_events WHERE recorded_at < clock_timestamp() - :w"
                ),
                {"w": LATE_COMMIT_WINDOW},
            )
            or 0
        )
        visible = await conn.scalars(text("SELECT seq FROM saga_events WHERE seq > :f"), {"f": floor})
        return cls(floor, set(visible))

    @classmethod
    async def resuming(cls, conn: AsyncConnection, after: int) -> Follower:
        """Follow after position ``after`` (a stream resumed from ``Last-Event-ID``, or
        started at ``after``) from the last seq at or below it recorded longer ago than
        the late-commit window: a row with a lower seq that committed after the client's
        last event, while it was away, is still delivered (it was skipped: an attack trial
        held one open while a client read past it, left, and resumed). The rows of the
        window below ``after`` come again, which the client may have had: it tells them by
        their ids."""
        floor = await conn.scalar(
            text(
                "SELECT COALESCE(MAX(seq), 0) FROM saga_events"
                " WHERE seq <= :a AND recorded_at < clock_timestamp() - :w"
            ),
            {"a": after, "w": LATE_COMMIT_WINDOW},
        )
        return cls(int(floor or 0))

    async def poll(self, conn: AsyncConnection, limit: int = 500) -> list[dict[str, Any]]:
        """The events not returned before, at most ``limit``, in recording order. Those
        already returned are left out in the query itself, so a page is never full of them
        (the feed stood still once 500 events above the floor had all been seen)."""
        rows = await feed(conn, self.floor, limit, self.seen)
        settled = await conn.scalar(
            text(
                "SELECT COALESCE(MAX(seq), :f) FROM saga_events"
                " WHERE seq > :f AND recorded_at < clock_timestamp() - :w"
            ),
            {"f": self.floor, "w": LATE_COMMIT_WINDOW},
        )
        # nothing changes until both reads succeeded: a poll that fails is a poll not made
        self.seen.update(r["seq"] for r in rows)
        if len(rows) == limit:  # unseen events may lie past this page: the floor stays below them
            settled = min(settled, rows[-1]["seq"]) if settled is not None else None
        if settled is not None and settled > self.floor:
            # everything at or below ``settled`` committed long ago and was returned: forget it
            self.floor = int(settled)
            self.seen = {seq for seq in self.seen if seq > self.floor}
        return rows
