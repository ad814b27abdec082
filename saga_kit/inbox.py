"""Idempotent inbox: the record of which events a consumer has already applied.

``claim`` runs inside the batch's transaction, before the reactions, and takes the
batch's saga locks on the way: queued, it goes in the round trip of the reactions' load,
ahead of it (``UnitOfWork.read_later``). ``Claims.fresh`` names the events not processed
before; the others are redeliveries and the consumer does nothing with them. Because
the claims commit with the reactions' effects, an event's effect is applied at most once
however often Kafka delivers it; offsets are committed only after this commit, so it is
also applied at least once.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from events.envelope import Envelope
from saga_kit import sql
from saga_kit.db import SAGA_LOCK_NAMESPACE, Later, UnitOfWork, saga_lock_key


class Claims:
    """A batch's inbox claims, queued in its unit of work (``claim``)."""

    def __init__(self, later: Later | None) -> None:
        self._later = later

    async def fresh(self) -> set[uuid.UUID]:
        """The ids of the events not recorded before (the rest are redeliveries). Sent with
        the unit's next round trip; if none has gone since ``claim``, this one takes them."""
        if self._later is None:
            return set()
        return {row.event_id for row in await self._later.rows()}


def claim(
    uow: UnitOfWork,
    consumer: str,
    envelopes: Sequence[Envelope[Any]],
    also: Callable[[Envelope[Any]], Iterable[uuid.UUID]] | None = None,
) -> Claims:
    """Queue the claims of ``envelopes``: take the sagas' locks (each event's own, and those
    ``also`` names for it), then record every event — one statement, sent with the unit's
    next round trip (``UnitOfWork.read_later``). The locks are waited for as long as their
    holders take.

    The locks are the per-saga advisory locks of ``saga_kit.db`` (taken in key order: no
    deadlocks); the claims join a one-row MATERIALIZED CTE that takes them, so no claim
    is written before every lock is held, and nothing sent after them in the round trip
    (the load's row locks) runs before they are held either."""
    if not envelopes:
        return Claims(None)
    return Claims(
        uow.read_later(
            "WITH locks AS MATERIALIZED ("
            "  SELECT count(pg_advisory_xact_lock(%(ns)s, CAST(k AS int))) AS n"
            "  FROM json_array_elements_text(CAST(%(keys)s AS json)) AS k)"
            " INSERT INTO inbox (consumer, event_id, event_type, order_id)"
            " SELECT %(consumer)s, e, t, o"
            " FROM locks, json_to_recordset(CAST(%(rows)s AS json)) AS claims(e uuid, t text, o uuid)"
            " ON CONFLICT DO NOTHING RETURNING event_id",
            {
                "ns": SAGA_LOCK_NAMESPACE,
                "keys": sql.values(
                    sorted(
                        {saga_lock_key(e.order_id) for e in envelopes}
                        | {saga_lock_key(o) for e in envelopes if also is not None for o in also(e)}
                    )
                ),
                "consumer": consumer,
                "rows": sql.rows({"e": e.event_id, "t": e.event_type, "o": e.order_id} for e in envelopes),
            },
        )
    )


def release(uow: UnitOfWork, consumer: str, event_ids: Sequence[uuid.UUID]) -> None:
    """Undo claims in this transaction (events that were refused, not applied): queued,
    sent with the batch's other writes."""
    uow.write(
        f"DELETE FROM inbox WHERE consumer = %(c)s AND event_id IN {sql.UUIDS}",
        {"c": consumer, "ids": sql.values(event_ids)},
    )
