"""The order service's own metrics: every saga's outcome and duration, from its table,
and the orders admission control refused.

Outcomes and durations are computed from ``orders`` at scrape time, so they are exact
across restarts and across several instances (each reports the same totals: aggregate
with ``max``, not ``sum``). Refusals are this process's since it started (aggregate with
``sum``).
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from order_svc.admission import REFUSED
from saga_kit.histogram import SAGA_BUCKETS


async def render(conn: AsyncConnection, service: str) -> list[Metric]:
    orders = GaugeMetricFamily(
        "saga_orders",
        "Orders by status and reason (PENDING = sagas in flight).",
        labels=["service", "status", "reason"],
    )
    for status, reason, n in await conn.execute(
        text("SELECT status, COALESCE(reason, ''), COUNT(*) FROM orders GROUP BY 1, 2 ORDER BY 1, 2")
    ):
        orders.add_metric([service, status, reason], n)

    buckets = ", ".join(f"COUNT(*) FILTER (WHERE d <= {b})" for b in SAGA_BUCKETS)
    duration = HistogramMetricFamily(
        "saga_duration_seconds",
        "From order placed to terminal status, by final status.",
        labels=["service", "status"],
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
        points = [(f"{bound:g}", n) for bound, n in zip(SAGA_BUCKETS, cumulative, strict=True)]
        duration.add_metric([service, status], [*points, ("+Inf", total)], float(seconds))
    refused = CounterMetricFamily(
        "order_admission_refused",
        "Orders refused with 503 by admission control since this process started, by gate:"
        " backlog (could not finish before its deadline) or door (requests answered slowly).",
        labels=["service", "gate"],
    )
    for gate in ("backlog", "door"):
        refused.add_metric([service, gate], REFUSED[gate])
    return [orders, duration, refused]
