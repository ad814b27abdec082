"""Idempotent inbox: the record of which events a consumer has already applied.

``claim`` runs inside the batch's transaction, before the reactions. It returns the
events not processed before; the others are redeliveries and the consumer does nothing
with them. Because the claims commit with the reactions' effects, an event's effect is
applied at most once however often Kafka delivers it; offsets are committed only after
this commit, so it is also applied at least once.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from events.envelope import Envelope


async def claim(conn: AsyncConnection, consumer: str, envelopes: Sequence[Envelope[Any]]) -> set[uuid.UUID]:
    """Record every event in one statement; return the ids that were not recorded before."""
    if not envelopes:
        return set()
    rows = await conn.execute(
        text(
            "INSERT INTO inbox (consumer, event_id, event_type, order_id)"
            " SELECT :consumer, e, t, o"
            " FROM unnest(CAST(:e AS UUID[]), CAST(:t AS TEXT[]), CAST(:o AS UUID[])) AS claims(e, t, o)"
            " ON CONFLICT DO NOTHING RETURNING event_id"
        ),
        {
            "consumer": consumer,
            "e": [e.event_id for e in envelopes],
            "t": [e.event_type for e in envelopes],
            "o": [e.order_id for e in envelopes],
        },
    )
    return {row.event_id for row in rows}


async def release(conn: AsyncConnection, consumer: str, event_ids: Sequence[uuid.UUID]) -> None:
    """Undo claims in this transaction (events that were refused, not applied)."""
    await conn.execute(
        text("DELETE FROM inbox WHERE consumer = :c AND event_id = ANY(CAST(:e AS UUID[]))"),
        {"c": consumer, "e": list(event_ids)},
    )
