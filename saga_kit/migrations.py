"""Forward-only schema migrations, applied at service start.

Each migration is a numbered list of SQL statements owned by a component (``saga_kit``
for the shared plumbing tables, or the service's name). Concurrent starts of the same
service serialize on an advisory lock, so a migration runs exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

_LOCK_KEY = 7_301_001  # arbitrary, constant: "schema migrations" advisory lock


@dataclass(frozen=True)
class Migration:
    component: str
    version: int
    name: str
    statements: tuple[str, ...]


async def migrate(engine: AsyncEngine, migrations: Sequence[Migration]) -> list[str]:
    """Apply every migration not yet recorded; return the names applied."""
    applied: list[str] = []
    async with engine.begin() as conn:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
        await conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " component TEXT NOT NULL, version INT NOT NULL, name TEXT NOT NULL,"
                " applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),"
                " PRIMARY KEY (component, version))"
            )
        )
        done = {
            (row.component, row.version)
            for row in await conn.execute(text("SELECT component, version FROM schema_migrations"))
        }
        for m in migrations:
            if (m.component, m.version) in done:
                continue
            for statement in m.statements:
                await conn.execute(text(statement))
            await conn.execute(
                text("INSERT INTO schema_migrations (component, version, name) VALUES (:c, :v, :n)"),
                {"c": m.component, "v": m.version, "n": m.name},
            )
            applied.append(f"{m.component}:{m.version:04d}_{m.name}")
    return applied


#: Tables every service has: outbox, inbox, dead letters.
PLUMBING: tuple[Migration, ...] = (
    Migration(
        "saga_kit",
        1,
        "outbox_inbox_dead_letters",
        (
            """CREATE TABLE outbox (
                id BIGSERIAL PRIMARY KEY,
                event_id UUID NOT NULL UNIQUE,
                topic TEXT NOT NULL,
                key BYTEA,
                value BYTEA NOT NULL,
                headers JSONB NOT NULL DEFAULT '[]'::jsonb,
                created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                sent_at TIMESTAMPTZ
            )""",
            "CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL",
            """CREATE TABLE inbox (
                consumer TEXT NOT NULL,
                event_id UUID NOT NULL,
                event_type TEXT NOT NULL,
                order_id UUID NOT NULL,
                processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                PRIMARY KEY (consumer, event_id)
            )""",
            """CREATE TABLE dead_letters (
                id BIGSERIAL PRIMARY KEY,
                source_topic TEXT NOT NULL,
                source_partition INT NOT NULL,
                source_offset BIGINT NOT NULL,
                key BYTEA,
                value BYTEA,
                headers JSONB NOT NULL DEFAULT '[]'::jsonb,
                reason TEXT NOT NULL,
                created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                UNIQUE (source_topic, source_partition, source_offset)
            )""",
        ),
    ),
    Migration(
        "saga_kit",
        2,
        "dead_letter_status_and_pruning_indexes",
        (
            "ALTER TABLE dead_letters ADD COLUMN status TEXT NOT NULL DEFAULT 'PENDING'"
            " CHECK (status IN ('PENDING', 'REPLAYED', 'DISCARDED'))",
            "ALTER TABLE dead_letters ADD COLUMN resolved_at TIMESTAMPTZ",
            "ALTER TABLE dead_letters ADD COLUMN replay_attempts INT NOT NULL DEFAULT 0",
            "CREATE INDEX dead_letters_pending ON dead_letters (id) WHERE status = 'PENDING'",
            "CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL",
            "CREATE INDEX inbox_age ON inbox (processed_at)",
        ),
    ),
    Migration(
        "saga_kit",
        3,
        "binary_headers",
        # Headers as two aligned BYTEA[] columns (saga_kit.headers): JSONB could hold
        # neither a NUL nor bytes that are not UTF-8, nor a null value, so a record with
        # such a header could not be dead-lettered.
        tuple(
            statement
            for table in ("outbox", "dead_letters")
            for statement in (
                f"ALTER TABLE {table} ADD COLUMN header_keys BYTEA[] NOT NULL DEFAULT '{{}}',"
                " ADD COLUMN header_values BYTEA[] NOT NULL DEFAULT '{}'",
                f"UPDATE {table} SET"
                " header_keys = ARRAY(SELECT convert_to(h->>0, 'UTF8')"
                "   FROM jsonb_array_elements(headers) WITH ORDINALITY AS e(h, n) ORDER BY n),"
                " header_values = ARRAY(SELECT convert_to(h->>1, 'UTF8')"
                "   FROM jsonb_array_elements(headers) WITH ORDINALITY AS e(h, n) ORDER BY n)"
                " WHERE headers <> '[]'::jsonb",
                f"ALTER TABLE {table} DROP COLUMN headers",
            )
        ),
    ),
    Migration(
        "saga_kit",
        4,
        "outbox_header_blob",
        # One BYTEA of JSON per row (saga_kit.headers.to_blob): a batch of outbox rows is
        # then written in one statement without adapting arrays element by element. Rows
        # written before keep their arrays; the relay reads either.
        ("ALTER TABLE outbox ADD COLUMN headers BYTEA",),
    ),
    Migration(
        "saga_kit",
        5,
        "dead_letter_fingerprint",
        # A redelivered record is stored once, but two different records at the same
        # position (offsets start over when the embedded broker restarts, or a topic is
        # recreated) are two dead letters: the body's digest is part of the identity.
        (
            "ALTER TABLE dead_letters ADD COLUMN fingerprint BYTEA"
            " GENERATED ALWAYS AS (sha256(coalesce(value, ''::bytea))) STORED",
            "ALTER TABLE dead_letters"
            " DROP CONSTRAINT dead_letters_source_topic_source_partition_source_offset_key",
            "CREATE UNIQUE INDEX dead_letters_source"
            " ON dead_letters (source_topic, source_partition, source_offset, fingerprint)",
        ),
    ),
    Migration(
        "saga_kit",
        6,
        "dead_letter_order",
        # The saga a dead letter belongs to, when its envelope could be read: an event
        # refused for contradicting the service's records shows in that saga's story.
        (
            "ALTER TABLE dead_letters ADD COLUMN order_id UUID",
            "CREATE INDEX dead_letters_order ON dead_letters (order_id) WHERE order_id IS NOT NULL",
        ),
    ),
    Migration(
        "saga_kit",
        7,
        "audit_log",
        # The hash-chained audit trail (saga_kit.audit): each entry's canonical JSON and
        # the chain's hashes; a trigger refuses UPDATE and DELETE.
        (
            """CREATE TABLE audit_log (
                seq BIGSERIAL PRIMARY KEY,
                entry TEXT NOT NULL,
                prev_hash BYTEA NOT NULL,
                hash BYTEA NOT NULL
            )""",
            """CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$""",
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log"
            " FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()",
        ),
    ),
    Migration(
        "saga_kit",
        8,
        "outbox_broker",
        # The broker cluster the outbox was last published to (saga_kit.outbox.on_broker):
        # another one means the log those events went to is not the one consumers read.
        (
            """CREATE TABLE outbox_broker (
                one_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one_row),
                cluster_id TEXT NOT NULL,
                since TIMESTAMPTZ NOT NULL DEFAULT now()
            )""",
        ),
    ),
    Migration(
        "saga_kit",
        9,
        "audit_log_no_truncate",
        # TRUNCATE fires no row trigger: it emptied the audit trail, and the next entry
        # began a new chain that verified as whole (an attack trial). It is refused too.
        (
            "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log"
            " FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()",
        ),
    ),
)
