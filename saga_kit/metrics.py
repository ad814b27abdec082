"""Prometheus metrics of the shared plumbing, exposed through ``prometheus_client``.

The hot paths only bump plain counters and in-process histograms (``ConsumerStats``,
the relay's counts, ``JobStats``); at scrape time a collector turns them, and what is
read from the database then (outbox backlog, dead letters waiting, a service's own
figures), into metric families of a registry of the service's own — no global registry,
so several services or tests can live in one process.

Every service exports: events consumed by type and outcome, batch time and size,
events produced by topic and type, outbox backlog and the age of its oldest unsent row,
consumer lag per partition, partitions read again by the progress watch, partitions held
at a record the pipeline cannot take, dead letters waiting, scheduled jobs, and the
client library's standard process and garbage-collector families (``process_*``,
``python_gc_*``). A service
adds its own families through ``ServiceSpec.metrics`` (the order service: sagas by
outcome and saga duration).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from saga_kit import deadlines
from saga_kit.consumer import ConsumerStats
from saga_kit.db import Database
from saga_kit.errors import is_transient
from saga_kit.histogram import Histogram
from saga_kit.outbox import OutboxRelay
from saga_kit.periodic import JobStats

log = logging.getLogger(__name__)

#: A service's own metric families, computed from its database at scrape time.
ExtraMetrics = Callable[[AsyncConnection, str], Awaitable[list[Metric]]]


def histogram_family(
    name: str, documentation: str, labels: Sequence[str], series: Iterable[tuple[Sequence[str], Histogram]]
) -> Metric:
    """In-process ``Histogram``s as one Prometheus histogram family (cumulative buckets):
    ``series`` gives each histogram with its values of ``labels``."""
    family = HistogramMetricFamily(name, documentation, labels=list(labels))
    for values, h in series:
        cumulative, buckets = 0, []
        for bound, count in zip(h.buckets, h.counts, strict=True):
            cumulative += count
            buckets.append((f"{bound:g}", cumulative))
        buckets.append(("+Inf", h.n))
        family.add_metric(list(values), buckets, h.total)
    return family


@dataclass
class _Snapshot:
    """What the database said at this scrape (``read``: False when it could not be asked;
    the figures read from it are then left out of the scrape rather than shown stale)."""

    backlog: int = 0
    oldest_unsent: float = 0.0
    dead_letters: int = 0
    extra: list[Metric] = field(default_factory=list)
    read: bool = True


class _PlumbingCollector(Collector):
    def __init__(
        self,
        service: str,
        stats: ConsumerStats,
        relay: OutboxRelay,
        jobs: Mapping[str, JobStats],
        lag: Callable[[], Mapping[tuple[str, int], int]] | None,
        recoveries: Mapping[tuple[str, int, str], int] | None = None,
        lag_age: Callable[[], float | None] | None = None,
    ) -> None:
        self.service, self.stats, self.relay, self.jobs, self.lag = service, stats, relay, jobs, lag
        self.recoveries = recoveries if recoveries is not None else {}
        self.lag_age = lag_age
        self.snapshot = _Snapshot()

    def collect(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> Iterator[Metric]:
        s, svc = self.stats, self.service
        consumed = CounterMetricFamily(
            "saga_events_consumed",
            "Events consumed, by type and outcome.",
            labels=["service", "event_type", "outcome"],
        )
        for (event_type, outcome), n in sorted(s.outcomes.items()):
            consumed.add_metric([svc, event_type, outcome], n)
        yield consumed
        yield histogram_family(
            "saga_batch_seconds",
            "Time of a consumed batch's transaction (lock, inbox, reactions, commit).",
            ["service"],
            [([svc], s.batch_seconds)],
        )
        yield histogram_family(
            "saga_batch_size", "Records per consumed batch.", ["service"], [([svc], s.batch_size)]
        )
        produced = CounterMetricFamily(
            "saga_events_produced",
            "Outbox rows published by this process, by topic and event type (on a dead-letter"
            " topic: the copy's event_type header if it names a type there is, else <unknown>;"
            " <raw> without one).",
            labels=["service", "topic", "event_type"],
        )
        for (topic, event_type), n in sorted(self.relay.published_by_type.items()):
            produced.add_metric([svc, topic, event_type], n)
        yield produced
        lag = GaugeMetricFamily(
            "saga_consumer_lag",
            "Records not yet processed behind the partition's end (the further of the one the"
            " broker gave at the consumer's last progress look and the one its last fetch"
            " reported), per assigned partition.",
            labels=["service", "topic", "partition"],
        )
        for (topic, partition), behind in sorted((self.lag() if self.lag else {}).items()):
            lag.add_metric([svc, topic, str(partition)], behind)
        yield lag
        age = self.lag_age() if self.lag_age else None
        if age is not None:  # left out before the broker's first answer
            lag_age = GaugeMetricFamily(
                "saga_consumer_lag_age_seconds",
                "Seconds since the broker last gave the end offsets saga_consumer_lag is measured"
                " against (the progress watch asks every few seconds). It grows while the broker"
                " cannot be asked, when the lag shown is the last one known.",
                labels=["service"],
            )
            lag_age.add_metric([svc], age)
            yield lag_age
        recovered = CounterMetricFamily(
            "saga_consumer_recoveries",
            "Records lost on the way to the pipeline and read again, found by a gap in a batch"
            " (cause gap) or a partition behind its end with none processed (cause stall), and"
            " partitions whose fetching stopped short of the end (cause stall): saga_kit.progress.",
            labels=["service", "topic", "partition", "cause"],
        )
        for (topic, partition, cause), n in sorted(self.recoveries.items()):
            recovered.add_metric([svc, topic, str(partition), cause], n)
        yield recovered
        from_database = (
            [
                ("saga_outbox_backlog", "Outbox rows not yet published.", self.snapshot.backlog),
                (
                    "saga_outbox_oldest_unsent_seconds",
                    "Age of the oldest unpublished outbox row.",
                    self.snapshot.oldest_unsent,
                ),
                (
                    "saga_dead_letters",
                    "Dead letters waiting for an operator (replay or discard).",
                    self.snapshot.dead_letters,
                ),
            ]
            if self.snapshot.read
            else []
        )
        for name, doc, value in (
            *from_database,
            (
                "saga_metrics_database_up",
                "1 if this scrape could read the service's database (the figures read from it are"
                " left out when it could not).",
                int(self.snapshot.read),
            ),
            ("saga_consumer_retrying", "1 while the consumer retries a transient failure.", int(s.retrying)),
            (
                "saga_consumer_batch_age_seconds",
                "Seconds the batch in flight has been in the pipeline, 0 between batches: it grows"
                " while the pipeline waits on its database without an error (a database that hangs).",
                round(s.batch_age(), 3),
            ),
            (
                "saga_consumer_stuck_partitions",
                "Partitions held at a record the pipeline itself cannot take (not acked, retried).",
                len(s.stuck),
            ),
            (
                "saga_outbox_relay_active",
                "1 while this instance is its database's active relay.",
                int(self.relay.active),
            ),
        ):
            gauge = GaugeMetricFamily(name, doc, labels=["service"])
            gauge.add_metric([svc], value)
            yield gauge
        for metric, doc, attr in (
            ("saga_job_runs", "Completed runs of a scheduled job.", "runs"),
            (
                "saga_job_items",
                "Rows a scheduled job acted on (orders cancelled, rows pruned, data keys rewrapped, …),"
                " counted as each run ends (the payment worker's run lasts while its calls are out:"
                " saga_payment_provider_calls_total counts them as they are answered).",
                "items",
            ),
            ("saga_job_failures", "Failed runs of a scheduled job.", "failures"),
        ):
            family = CounterMetricFamily(metric, doc, labels=["service", "job"])
            for name, job in sorted(self.jobs.items()):
                family.add_metric([svc, name], getattr(job, attr))
            yield family
        if self.snapshot.read:
            yield from self.snapshot.extra


#: How long a scrape waits for the database's figures, in seconds (the readiness checks').
DATABASE_READ_SECONDS = 2.0


class Metrics:
    """A service's registry and what it needs at scrape time."""

    def __init__(
        self,
        service: str,
        stats: ConsumerStats,
        relay: OutboxRelay,
        db: Database,
        jobs: Mapping[str, JobStats] | None = None,
        lag: Callable[[], Mapping[tuple[str, int], int]] | None = None,
        extra: ExtraMetrics | None = None,
        recoveries: Mapping[tuple[str, int, str], int] | None = None,
        lag_age: Callable[[], float | None] | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._collector = _PlumbingCollector(service, stats, relay, jobs or {}, lag, recoveries, lag_age)
        self.registry.register(self._collector)
        # the client library's standard process figures (process_cpu_seconds_total,
        # process_resident_memory_bytes, open file descriptors …) and Python's garbage
        # collector's (python_gc_collections_total by generation: saga_kit.heap)
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._db, self._extra, self._service = db, extra, service

    async def render(self) -> bytes:
        """Read what comes from the database, then the exposition text of everything. A
        database that is away (a transient failure) or does not answer within
        ``DATABASE_READ_SECONDS`` does not fail the scrape, which is when the other figures
        matter most: its figures are left out and ``saga_metrics_database_up`` is 0."""
        try:
            # within the readiness checks' time: a database that holds the read held the
            # scrape until the answer deadline cut it (503), the counters kept in this
            # process with it (a trial)
            self._collector.snapshot = await deadlines.within(self._read(), DATABASE_READ_SECONDS)
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("metrics: the database could not be read (%s); scraped without it", exc)
            self._collector.snapshot = _Snapshot(read=False)
        return generate_latest(self.registry)

    async def _read(self) -> _Snapshot:
        async with self._db.engine.connect() as conn:
            backlog, oldest = (
                await conn.execute(
                    text(
                        "SELECT COUNT(*), COALESCE(EXTRACT(EPOCH FROM now() - MIN(created_at)), 0)"
                        " FROM outbox WHERE sent_at IS NULL"
                    )
                )
            ).one()
            dead = await conn.scalar(text("SELECT COUNT(*) FROM dead_letters WHERE status = 'PENDING'"))
            extra = await self._extra(conn, self._service) if self._extra else []
        return _Snapshot(int(backlog), float(oldest), int(dead or 0), extra)
