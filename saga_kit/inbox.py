"""Idempotent inbox: the record of which events a consumer has already applied.

``claim`` runs inside the handler's transaction. It returns False when the event was
already processed (a redelivery), in which case the handler must do nothing. Because
the claim commits with the handler's effects, an event's effect is applied at most once
however often Kafka delivers it; offsets are committed only after this commit, so it is
also applied at least once.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from events.envelope import Envelope


async def claim(conn: AsyncConnection, consumer: str, envelope: Envelope[Any]) -> bool:
    inserted = await conn.scalar(
        text(
            "INSERT INTO inbox (consumer, event_id, event_type, order_id)"
            " VALUES (:consumer, :event_id, :event_type, :order_id)"
            " ON CONFLICT DO NOTHING RETURNING 1"
        ),
        {
            "consumer": consumer,
            "event_id": envelope.event_id,
            "event_type": envelope.event_type,
            "order_id": envelope.order_id,
        },
    )
    return inserted is not None
