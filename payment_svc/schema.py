"""The payment service's tables. One payment row per order at most (its primary key):
an order is charged at most once whatever is redelivered."""

from saga_kit.migrations import Migration

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "payment_svc",
        1,
        "accounts_payments",
        (
            """CREATE TABLE accounts (
                customer_id TEXT PRIMARY KEY,
                balance NUMERIC(14, 2) NOT NULL CHECK (balance >= 0),
                updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
            )""",
            """CREATE TABLE payments (
                order_id UUID PRIMARY KEY,
                customer_id TEXT NOT NULL,
                amount NUMERIC(14, 2) NOT NULL CHECK (amount >= 0),
                status TEXT NOT NULL CHECK (status IN ('CHARGED', 'DECLINED', 'REFUNDED')),
                reason TEXT,
                created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
                updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
            )""",
        ),
    ),
    Migration(
        "payment_svc",
        2,
        "voided_payments",
        (
            # VOIDED: the order was cancelled before it was charged; the row is the record
            # that refuses a later charge (c6), with amount 0.
            "ALTER TABLE payments DROP CONSTRAINT payments_status_check",
            "ALTER TABLE payments ADD CONSTRAINT payments_status_check"
            " CHECK (status IN ('CHARGED', 'DECLINED', 'REFUNDED', 'VOIDED'))",
        ),
    ),
    Migration(
        "payment_svc",
        3,
        "unbounded_balances",
        (
            # A refund adds back what a charge took, however high an operator has set the
            # balance since: the column must hold any sum of owed refunds, so it takes
            # PostgreSQL's widest precision (998 integer digits) instead of Money's 12.
            "ALTER TABLE accounts ALTER COLUMN balance TYPE NUMERIC(1000, 2)",
        ),
    ),
)
