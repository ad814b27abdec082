"""The payment service's tables. One payment row per order at most (its primary key):
an order is charged at most once whatever is redelivered, and the provider is asked with
an idempotency key derived from the order (``payment_svc.provider.charge_key``)."""

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
    Migration(
        "payment_svc",
        4,
        "provider_payments",
        (
            # The payment step calls an external provider (payment_svc/worker.py): a payment
            # is an intent first (PENDING), a call second, a result third. REFUND_PENDING: a
            # charge to give back, the refund not yet confirmed by the provider.
            "ALTER TABLE payments DROP CONSTRAINT payments_status_check",
            "ALTER TABLE payments ADD CONSTRAINT payments_status_check CHECK (status IN"
            " ('PENDING', 'CHARGED', 'DECLINED', 'REFUND_PENDING', 'REFUNDED', 'VOIDED'))",
            # calls claimed so far (a claim is committed before its call: a cancellation
            # that finds 0 knows the provider was never asked, and voids)
            "ALTER TABLE payments ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE payments ADD COLUMN next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()",
            # the order was cancelled while a charge was in doubt: finish it, then refund
            "ALTER TABLE payments ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT false",
            "ALTER TABLE payments ADD COLUMN waiting_since TIMESTAMPTZ",
            "ALTER TABLE payments ADD COLUMN last_error TEXT",
            "ALTER TABLE payments ADD COLUMN charge_id TEXT",
            "ALTER TABLE payments ADD COLUMN refund_id TEXT",
            # the events the provider's answers reply to (causation), and the trace they
            # continue: InventoryReserved for the charge, OrderCancelled for the refund
            "ALTER TABLE payments ADD COLUMN charge_cause UUID",
            "ALTER TABLE payments ADD COLUMN refund_cause UUID",
            "ALTER TABLE payments ADD COLUMN traceparent TEXT",
            "CREATE INDEX payments_due ON payments (next_attempt_at)"
            " WHERE status IN ('PENDING', 'REFUND_PENDING')",
            # balances live at the provider now (PUT /accounts passes through to it)
            "DROP TABLE accounts",
        ),
    ),
    Migration(
        "payment_svc",
        5,
        "nothing_done_calls",
        (
            # A cancellation voids a PENDING payment only while the provider cannot have
            # charged it: every call claimed so far was answered "nothing done"
            # (payment_svc.provider.Unavailable), i.e. attempts = nothing_done_calls. A call
            # in flight, lost in a crash, or answered otherwise keeps them apart — also one
            # claimed by a worker older than this migration, which counts nothing here.
            "ALTER TABLE payments ADD COLUMN nothing_done_calls INTEGER NOT NULL DEFAULT 0",
            # the attempt whose answer was recorded last: an answer is recorded once, and
            # only while no later claim has taken the payment (payment_svc.worker.record)
            "ALTER TABLE payments ADD COLUMN answered_attempt INTEGER NOT NULL DEFAULT 0",
        ),
    ),
)
