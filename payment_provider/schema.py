"""The provider's tables. An idempotency key is a primary key: one charge (or refund) per
key, whatever is retried or sent concurrently. A charge is refunded at most once
(``refunds.charge_key`` is unique)."""

from saga_kit.migrations import Migration

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "payment_provider",
        1,
        "accounts_charges_refunds",
        (
            # A refund adds back what a charge took however high the balance was set since,
            # so the column takes PostgreSQL's widest precision (as payment_svc's accounts).
            """CREATE TABLE accounts (
                account_id TEXT PRIMARY KEY,
                balance NUMERIC(1000, 2) NOT NULL CHECK (balance >= 0),
                updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
            )""",
            # A declined charge is stored too (its key answers the same 402 on a replay);
            # its account need not exist, so there is no foreign key to accounts.
            """CREATE TABLE charges (
                idempotency_key TEXT PRIMARY KEY,
                charge_id UUID NOT NULL UNIQUE,
                account_id TEXT NOT NULL,
                amount NUMERIC(14, 2) NOT NULL CHECK (amount >= 0),
                reference TEXT NOT NULL,
                status TEXT NOT NULL CHECK (status IN ('succeeded', 'declined')),
                decline_code TEXT CHECK ((status = 'declined') = (decline_code IS NOT NULL)),
                request_digest BYTEA NOT NULL,
                refunded BOOLEAN NOT NULL DEFAULT false CHECK (NOT refunded OR status = 'succeeded'),
                created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
            )""",
            """CREATE TABLE refunds (
                idempotency_key TEXT PRIMARY KEY,
                refund_id UUID NOT NULL UNIQUE,
                charge_key TEXT NOT NULL UNIQUE REFERENCES charges (idempotency_key),
                amount NUMERIC(14, 2) NOT NULL CHECK (amount >= 0),
                request_digest BYTEA NOT NULL,
                created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
            )""",
        ),
    ),
)
