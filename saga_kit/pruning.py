"""Bounded plumbing tables: sent outbox rows and old inbox rows are deleted on a schedule.

Safety rules:

* An outbox row is deleted only once it is **sent** and older than
  ``outbox_retention_seconds``; unsent rows are never touched, whatever their age.
* An inbox row is what makes a redelivered event a no-op, so it is kept for the whole
  **redelivery window** (``inbox_retention_seconds``, default 7 days — set it at least
  as long as the topics' retention plus the longest consumer outage you plan for).
  Within the window a duplicate is always deduplicated; beyond it, each handler's own
  state (one reservation or payment row per order, the order's status) still makes a
  late duplicate harmless.
* Dead letters are kept until an operator replays or discards them; resolved ones are
  deleted after ``dead_letter_retention_seconds``.

Deletes run in batches (``prune_batch`` rows per statement) so a long backlog never
holds one long transaction.
"""

from __future__ import annotations

from sqlalchemy import text

from saga_kit.db import Database
from saga_kit.periodic import Periodic
from saga_kit.settings import ServiceSettings

#: now() (the transaction's start), not clock_timestamp(): a volatile function cannot bound
#: an index scan, and the outbox's and inbox's statements would read every row of their
#: indexes (``outbox_sent``, ``inbox_age``) to find the old ones
_STATEMENTS = {
    "outbox": (
        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE sent_at IS NOT NULL"
        " AND sent_at < now() - make_interval(secs => :age) ORDER BY id LIMIT :n)"
    ),
    "inbox": (
        "DELETE FROM inbox WHERE (consumer, event_id) IN (SELECT consumer, event_id FROM inbox"
        " WHERE processed_at < now() - make_interval(secs => :age) LIMIT :n)"
    ),
    "dead_letters": (
        "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters WHERE status <> 'PENDING'"
        " AND resolved_at < now() - make_interval(secs => :age) LIMIT :n)"
    ),
}


async def prune(db: Database, settings: ServiceSettings) -> int:
    """Delete what retention allows; return the number of rows deleted."""
    ages = {
        "outbox": settings.outbox_retention_seconds,
        "inbox": settings.inbox_retention_seconds,
        "dead_letters": settings.dead_letter_retention_seconds,
    }
    deleted = 0
    for table, statement in _STATEMENTS.items():
        while True:
            async with db.unit_of_work() as uow:
                result = await uow.conn.execute(
                    text(statement), {"age": ages[table], "n": settings.prune_batch}
                )
            deleted += result.rowcount
            if result.rowcount < settings.prune_batch:
                break
    return deleted


PRUNING = Periodic("pruning", lambda s: s.prune_interval_seconds, prune)
