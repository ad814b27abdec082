"""The order service's own metrics: every saga's outcome and duration, from its table.

Computed from ``orders`` at scrape time, so they are exact across restarts and across
several instances (each reports the same totals: aggregate with ``max``, not ``sum``).
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from saga_kit.histogram import SAGA_BUCKETS
from saga_kit.metrics import header, labels


async def render(conn: AsyncConnection, service: str) -> list[str]:
    lines = header("saga_orders", "gauge", "Orders by status and reason (PENDING = sagas in flight).")
    for status, reason, n in await conn.execute(
        text("SELECT status, COALESCE(reason, ''), COUNT(*) FROM orders GROUP BY 1, 2 ORDER BY 1, 2")
    ):
        lines.append(f"saga_orders{labels(service=service, status=status, reason=reason)} {n}")

    buckets = ", ".join(f"COUNT(*) FILTER (WHERE d <= {b})" for b in SAGA_BUCKETS)
    lines += header(
        "saga_duration_seconds", "histogram", "From order placed to terminal status, by final status."
    )
    rows = await conn.execute(
        text(
            f"SELECT status, {buckets}, COUNT(*), COALESCE(SUM(d), 0) FROM"
            " (SELECT status, EXTRACT(EPOCH FROM updated_at - created_at) AS d"
            "  FROM orders WHERE status <> 'PENDING') t GROUP BY status ORDER BY status"
        )
    )
    for row in rows:
        status, *counts = row
        *cumulative, total, seconds = counts
        inner = f'service="{service}",status="{status}"'
        for bound, n in zip(SAGA_BUCKETS, cumulative, strict=True):
            lines.append(f'saga_duration_seconds_bucket{{{inner},le="{bound:g}"}} {n}')
        lines += [
            f'saga_duration_seconds_bucket{{{inner},le="+Inf"}} {total}',
            f"saga_duration_seconds_sum{{{inner}}} {float(seconds):.3f}",
            f"saga_duration_seconds_count{{{inner}}} {total}",
        ]
    return lines
