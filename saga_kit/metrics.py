"""Prometheus metrics of the shared plumbing, rendered by hand (no global registry, so
several services or tests can live in one process)."""

from __future__ import annotations

from sqlalchemy import text

from saga_kit.consumer import ConsumerStats
from saga_kit.db import Database
from saga_kit.outbox import OutboxRelay
from saga_kit.periodic import JobStats


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return "{" + inner + "}"


async def render(
    service: str,
    stats: ConsumerStats,
    relay: OutboxRelay,
    db: Database,
    jobs: dict[str, JobStats] | None = None,
) -> str:
    lines = [
        "# HELP saga_events_consumed_total Events consumed, by type and outcome.",
        "# TYPE saga_events_consumed_total counter",
    ]
    for (event_type, outcome), n in sorted(stats.outcomes.items()):
        labels = _labels(service=service, event_type=event_type, outcome=outcome)
        lines.append(f"saga_events_consumed_total{labels} {n}")
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
    s = _labels(service=service)
    lines += [
        "# HELP saga_outbox_published_total Outbox rows published by this process.",
        "# TYPE saga_outbox_published_total counter",
        f"saga_outbox_published_total{s} {relay.published}",
        "# HELP saga_outbox_backlog Outbox rows not yet published.",
        "# TYPE saga_outbox_backlog gauge",
        f"saga_outbox_backlog{s} {backlog}",
        "# HELP saga_outbox_oldest_unsent_seconds Age of the oldest unpublished outbox row.",
        "# TYPE saga_outbox_oldest_unsent_seconds gauge",
        f"saga_outbox_oldest_unsent_seconds{s} {float(oldest):.3f}",
        "# HELP saga_dead_letters Dead letters waiting for an operator (replay or discard).",
        "# TYPE saga_dead_letters gauge",
        f"saga_dead_letters{s} {dead}",
    ]
    lines += [
        "# HELP saga_consumer_retrying 1 while the consumer retries a transient failure.",
        "# TYPE saga_consumer_retrying gauge",
        f"saga_consumer_retrying{s} {int(stats.retrying)}",
    ]
    for metric, what, attr in (
        ("saga_job_runs_total", "Completed runs of a scheduled job.", "runs"),
        ("saga_job_items_total", "Rows a scheduled job acted on (cancelled, pruned).", "items"),
        ("saga_job_failures_total", "Failed runs of a scheduled job.", "failures"),
    ):
        lines += [f"# HELP {metric} {what}", f"# TYPE {metric} counter"]
        for name, job in sorted((jobs or {}).items()):
            lines.append(f"{metric}{_labels(service=service, job=name)} {getattr(job, attr)}")
    return "\n".join(lines) + "\n"
