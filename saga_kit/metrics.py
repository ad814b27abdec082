"""Prometheus metrics of the shared plumbing, rendered by hand (no global registry, so
several services or tests can live in one process).

Every service exports: events consumed by type and outcome, handler latency by type,
events produced by topic and type, outbox backlog and the age of its oldest unsent row,
consumer lag per partition where the client knows the partition's end, dead letters
waiting, scheduled jobs. A service adds its own (the order service: sagas by outcome and
saga duration) through ``ServiceSpec.metrics``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from saga_kit.consumer import ConsumerStats
from saga_kit.db import Database
from saga_kit.outbox import OutboxRelay
from saga_kit.periodic import JobStats

#: Extra exposition lines of one service, computed from its database at scrape time.
ExtraMetrics = Callable[[AsyncConnection, str], Awaitable[list[str]]]


def labels(**values: object) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in values.items())
    return "{" + inner + "}"


def header(name: str, kind: str, help_text: str) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]


async def render(
    service: str,
    stats: ConsumerStats,
    relay: OutboxRelay,
    db: Database,
    jobs: Mapping[str, JobStats] | None = None,
    lag: Callable[[], Mapping[tuple[str, int], int]] | None = None,
    extra: ExtraMetrics | None = None,
) -> str:
    s = labels(service=service)
    lines = header("saga_events_consumed_total", "counter", "Events consumed, by type and outcome.")
    for (event_type, outcome), n in sorted(stats.outcomes.items()):
        lines.append(
            f"saga_events_consumed_total{labels(service=service, event_type=event_type, outcome=outcome)} {n}"
        )
    lines += header(
        "saga_handler_seconds", "histogram", "Time in a handler's transaction (inbox, handler, commit)."
    )
    for event_type, histogram in sorted(stats.latency.items()):
        lines += histogram.render("saga_handler_seconds", f'service="{service}",event_type="{event_type}"')
    lines += header("saga_events_produced_total", "counter", "Outbox rows published by this process.")
    for (topic, event_type), n in sorted(relay.published_by_type.items()):
        lines.append(
            f"saga_events_produced_total{labels(service=service, topic=topic, event_type=event_type)} {n}"
        )
    lines += header(
        "saga_consumer_lag", "gauge", "Records behind the partition's end, where the client knows it."
    )
    for (topic, partition), behind in sorted((lag() if lag else {}).items()):
        lines.append(f"saga_consumer_lag{labels(service=service, topic=topic, partition=partition)} {behind}")

    async with db.engine.connect() as conn:
        backlog, oldest = (
            await conn.execute(
                text(
                    "SELECT COUNT(*), COALESCE(EXTRACT(EPOCH FROM now() - MIN(created_at)), 0)"
                    " FROM outbox WHERE sent_at IS NULL"
                )
            )
        ).one()
        dead = await conn.scalar(text("SELECT COUNT(*) FROM dead_letters WHERE status = 'PENDING'"))
        extra_lines = await extra(conn, service) if extra else []
    lines += [
        *header("saga_outbox_published_total", "counter", "Outbox rows published by this process."),
        f"saga_outbox_published_total{s} {relay.published}",
        *header("saga_outbox_backlog", "gauge", "Outbox rows not yet published."),
        f"saga_outbox_backlog{s} {backlog}",
        *header("saga_outbox_oldest_unsent_seconds", "gauge", "Age of the oldest unpublished outbox row."),
        f"saga_outbox_oldest_unsent_seconds{s} {float(oldest):.3f}",
        *header("saga_dead_letters", "gauge", "Dead letters waiting for an operator (replay or discard)."),
        f"saga_dead_letters{s} {dead}",
        *header("saga_consumer_retrying", "gauge", "1 while the consumer retries a transient failure."),
        f"saga_consumer_retrying{s} {int(stats.retrying)}",
        *header(
            "saga_consumer_stuck_partitions",
            "gauge",
            "Partitions held at a record the pipeline itself cannot take (not acked, retried).",
        ),
        f"saga_consumer_stuck_partitions{s} {len(stats.stuck)}",
    ]
    for metric, what, attr in (
        ("saga_job_runs_total", "Completed runs of a scheduled job.", "runs"),
        ("saga_job_items_total", "Rows a scheduled job acted on (cancelled, pruned).", "items"),
        ("saga_job_failures_total", "Failed runs of a scheduled job.", "failures"),
    ):
        lines += header(metric, "counter", what)
        for name, job in sorted((jobs or {}).items()):
            lines.append(f"{metric}{labels(service=service, job=name)} {getattr(job, attr)}")
    return "\n".join([*lines, *extra_lines]) + "\n"
