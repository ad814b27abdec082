"""The inventory service's tables. Stock is three buckets per product —
``available + reserved + sold`` is constant except when the catalogue is restocked."""

from saga_kit.migrations import Migration

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "inventory_svc",
        1,
        "products_reservations",
        (
            """CREATE TABLE products (
                product_id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                price NUMERIC(14, 2) NOT NULL CHECK (price >= 0),
                available INT NOT NULL CHECK (available >= 0),
                reserved INT NOT NULL DEFAULT 0 CHECK (reserved >= 0),
                sold INT NOT NULL DEFAULT 0 CHECK (sold >= 0),
                updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
            )""",
            """CREATE TABLE reservations (
                order_id UUID NOT NULL,
                product_id TEXT NOT NULL REFERENCES products (product_id),
                quantity INT NOT NULL CHECK (quantity > 0),
                unit_price NUMERIC(14, 2) NOT NULL,
                status TEXT NOT NULL CHECK (status IN ('RESERVED', 'COMMITTED', 'RELEASED')),
                updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
                PRIMARY KEY (order_id, product_id)
            )""",
            "CREATE INDEX reservations_held ON reservations (order_id) WHERE status = 'RESERVED'",
        ),
    ),
    Migration(
        "inventory_svc",
        2,
        "cancellations",
        (
            # RESTOCKED: a sold reservation returned to stock because its APPROVED order
            # was cancelled (c5).
            "ALTER TABLE reservations DROP CONSTRAINT reservations_status_check",
            "ALTER TABLE reservations ADD CONSTRAINT reservations_status_check"
            " CHECK (status IN ('RESERVED', 'COMMITTED', 'RELEASED', 'RESTOCKED'))",
            # The first decision about each order, kept for good: RESERVED or REFUSED when
            # its OrderCreated was handled, CANCELLED when the cancellation came first. An
            # OrderCreated for an order with a decision (a late duplicate past the inbox's
            # window, a replayed dead letter, one overtaken by OrderCancelled) does nothing.
            """CREATE TABLE order_decisions (
                order_id UUID PRIMARY KEY,
                decision TEXT NOT NULL CHECK (decision IN ('RESERVED', 'REFUSED', 'CANCELLED')),
                decided_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
            )""",
        ),
    ),
    Migration(
        "inventory_svc",
        3,
        "bounded_prices_wide_stock",
        (
            # Stock buckets only grow by releases and restocks of units taken from them,
            # and by an operator (at most 10^9 a time): BIGINT leaves room for every
            # compensation. A unit price above 100,000.00 could make an order's total
            # overflow Money (events.values); lower any such price before upgrading.
            "ALTER TABLE products ALTER COLUMN available TYPE BIGINT,"
            " ALTER COLUMN reserved TYPE BIGINT, ALTER COLUMN sold TYPE BIGINT",
            "ALTER TABLE products ADD CONSTRAINT products_price_max CHECK (price <= 100000)",
        ),
    ),
)
