"""The order service's tables."""

from saga_kit.migrations import Migration

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "order_svc",
        1,
        "orders_items_timeline",
        (
            """CREATE TABLE orders (
                order_id UUID PRIMARY KEY,
                customer_id TEXT NOT NULL,
                status TEXT NOT NULL
                    CHECK (status IN ('PENDING', 'APPROVED', 'REJECTED', 'CANCELLED')),
                reason TEXT,
                total NUMERIC(14, 2),
                idempotency_key TEXT UNIQUE,
                request_hash TEXT,
                created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
                updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
            )""",
            "CREATE INDEX orders_status ON orders (status, created_at)",
            """CREATE TABLE order_items (
                order_id UUID NOT NULL REFERENCES orders (order_id),
                line_no INT NOT NULL,
                product_id TEXT NOT NULL,
                quantity INT NOT NULL CHECK (quantity > 0),
                unit_price NUMERIC(14, 2),
                PRIMARY KEY (order_id, line_no)
            )""",
            """CREATE TABLE saga_events (
                seq BIGSERIAL PRIMARY KEY,
                event_id UUID NOT NULL UNIQUE,
                order_id UUID NOT NULL,
                event_type TEXT NOT NULL,
                producer TEXT NOT NULL,
                occurred_at TIMESTAMPTZ NOT NULL,
                causation_id UUID,
                payload JSONB NOT NULL,
                recorded_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
            )""",
            "CREATE INDEX saga_events_order ON saga_events (order_id, occurred_at, seq)",
        ),
    ),
    Migration(
        "order_svc",
        2,
        "order_deadlines",
        (
            "ALTER TABLE orders ADD COLUMN deadline_at TIMESTAMPTZ",
            "UPDATE orders SET deadline_at = created_at + interval '30 seconds'",
            "ALTER TABLE orders ALTER COLUMN deadline_at SET NOT NULL",
            "CREATE INDEX orders_overdue ON orders (deadline_at) WHERE status = 'PENDING'",
        ),
    ),
    Migration(
        "order_svc",
        3,
        "trace_context",
        (
            # W3C traceparent of the request that placed the order: cancellations (by the
            # deadline sweeper or the customer) continue the saga's trace from it.
            "ALTER TABLE orders ADD COLUMN trace_context TEXT",
            "ALTER TABLE saga_events ADD COLUMN trace_id TEXT",
        ),
    ),
    Migration(
        "order_svc",
        4,
        "orders_by_update",
        # admission control reads the sagas finished in the last seconds (order_svc.admission)
        ("CREATE INDEX orders_updated ON orders (updated_at)",),
    ),
    Migration(
        "order_svc",
        5,
        "orders_from_commands",
        # the command (orders.commands) that placed an order; its events carry it as
        # their correlation_id header
        (
            "ALTER TABLE orders ADD COLUMN command_id UUID",
            "CREATE INDEX orders_by_command ON orders (command_id) WHERE command_id IS NOT NULL",
            # commands and their rejections in the timeline, by command id (GET /commands/{id})
            "CREATE INDEX saga_events_by_command ON saga_events ((payload->>'command_id'))"
            " WHERE payload ? 'command_id'",
        ),
    ),
    Migration(
        "order_svc",
        6,
        "orders_by_customer",
        # GET /orders?customer_id= (the dashboard's search): a customer's orders, newest first
        ("CREATE INDEX orders_customer ON orders (customer_id, created_at)",),
    ),
    Migration(
        "order_svc",
        7,
        "orders_by_creation",
        # the dashboard's sagas per minute (a range of created_at) and GET /orders unfiltered
        # (newest first): neither reads the whole table
        ("CREATE INDEX orders_created ON orders (created_at)",),
    ),
    Migration(
        "order_svc",
        8,
        "personal_data",
        # Personal data sealed per customer (saga_kit.personal_data): the customers' data
        # keys, wrapped with the master key (a destroyed one keeps its row, not its key),
        # one live key per customer; an order's sealed e-mail and shipping address.
        (
            """CREATE TABLE customer_keys (
                key_id UUID PRIMARY KEY,
                customer_id TEXT NOT NULL,
                wrapped_key BYTEA,
                created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                shredded_at TIMESTAMPTZ,
                CHECK ((wrapped_key IS NULL) = (shredded_at IS NOT NULL))
            )""",
            "CREATE UNIQUE INDEX customer_keys_live ON customer_keys (customer_id) WHERE shredded_at IS NULL",
            "ALTER TABLE orders ADD COLUMN personal_data JSONB",
        ),
    ),
    Migration(
        "order_svc",
        9,
        "cancel_command_id",
        # The CancelOrder command that cancelled an order, so that a command id is used
        # once: the same id again cancels nothing more, another body under it is refused.
        (
            "ALTER TABLE orders ADD COLUMN cancel_command_id UUID",
            "CREATE INDEX orders_by_cancel_command ON orders (cancel_command_id)"
            " WHERE cancel_command_id IS NOT NULL",
        ),
    ),
    Migration(
        "order_svc",
        10,
        "order_status_counts",
        # How many orders are in each status, for the dashboard, without reading the
        # orders table whole (it is never pruned; counted at each view, it cost 0.3 s at a
        # million orders, measured). The database keeps the count, whatever writes: each
        # statement that inserts, updates or deletes orders appends its net change per
        # status (+2 APPROVED, -2 PENDING) in its own transaction, so the count is exact
        # and commits or rolls back with the change; a TRUNCATE empties it. Appending
        # takes no lock a concurrent writer waits for (one row per status, updated in
        # place, would serialize every commit on it); the order service folds the
        # appended rows into one per status on a schedule (order_svc.statuscounts).
        # The pattern: the PostgreSQL wiki's "Slow Counting", and PostgreSQL's
        # documentation, "Transition tables" (CREATE TRIGGER ... REFERENCING).
        (
            "CREATE TABLE order_status_counts (status TEXT NOT NULL, orders BIGINT NOT NULL)",
            """CREATE FUNCTION count_order_statuses() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'TRUNCATE' THEN
                    DELETE FROM order_status_counts;
                ELSIF TG_OP = 'INSERT' THEN
                    INSERT INTO order_status_counts (status, orders)
                    SELECT status, count(*) FROM new_rows GROUP BY status;
                ELSIF TG_OP = 'DELETE' THEN
                    INSERT INTO order_status_counts (status, orders)
                    SELECT status, -count(*) FROM old_rows GROUP BY status;
                ELSE
                    INSERT INTO order_status_counts (status, orders)
                    SELECT status, sum(n) FROM (
                        SELECT status, 1 AS n FROM new_rows
                        UNION ALL SELECT status, -1 AS n FROM old_rows
                    ) AS changes GROUP BY status HAVING sum(n) <> 0;
                END IF;
                RETURN NULL;
            END
            $$""",
            # one trigger per operation: a trigger with transition tables has one event
            "CREATE TRIGGER orders_counted_on_insert AFTER INSERT ON orders"
            " REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION count_order_statuses()",
            "CREATE TRIGGER orders_counted_on_update AFTER UPDATE ON orders"
            " REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"
            " FOR EACH STATEMENT EXECUTE FUNCTION count_order_statuses()",
            "CREATE TRIGGER orders_counted_on_delete AFTER DELETE ON orders"
            " REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION count_order_statuses()",
            "CREATE TRIGGER orders_counted_on_truncate AFTER TRUNCATE ON orders"
            " FOR EACH STATEMENT EXECUTE FUNCTION count_order_statuses()",
            # the orders there are: the triggers above hold writers off until this commits
            "INSERT INTO order_status_counts (status, orders)"
            " SELECT status, count(*) FROM orders GROUP BY status",
        ),
    ),
    Migration(
        "order_svc",
        11,
        "saga_events_from_strangers",
        # A command from someone who may not act for its order (another customer, no valid
        # token, an order that does not exist), and the refusal that answers it: kept for
        # GET /commands/{id} and the operators' feed, left out of the order's timeline
        # (a stranger could write into a victim's timeline).
        ("ALTER TABLE saga_events ADD COLUMN from_stranger BOOLEAN NOT NULL DEFAULT false",),
    ),
    Migration(
        "order_svc",
        12,
        "master_key_id",
        # The master key that wraps each data key (saga_kit.personal_data.MasterKey.key_id),
        # so that the master key can be rotated: a row from before names none, and is
        # unwrapped with each key the service has until the rewrap job names it.
        ("ALTER TABLE customer_keys ADD COLUMN master_key_id TEXT",),
    ),
    Migration(
        "order_svc",
        13,
        "saga_events_sender",
        # Which customer sent a command (her verified token's subject; null for an event, an
        # operator's command, or one with no valid token): a customer reads at GET
        # /commands/{id} the commands she sent, refused or not, whatever order they named
        # (one she could not read — quantity 0, a reused id — was a 404 for ever: trials).
        ("ALTER TABLE saga_events ADD COLUMN sender TEXT",),
    ),
)
