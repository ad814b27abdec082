"""The runner every service's ``__main__`` calls: one process serves its consumers, its
outbox relay and its HTTP API on one event loop.

Start order: database reachable → migrations → topics → the consumer group's
coordinator → producer → relay → faust consumers → HTTP. Stop (SIGTERM/SIGINT): HTTP,
consumers (commit acked offsets), relay, producer, database. A relay, server or consumer
that dies takes the process down (exit 1) so a supervisor restarts it; nothing is
half-running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
import uvloop
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from fastapi import APIRouter, FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine
from sse_starlette.sse import AppStatus
from starlette.types import ASGIApp

from saga_kit import audit, consumer_api, deadletters, heap, logs, metrics, signing, tracing
from saga_kit.consumer import ConsumerPipeline, HandlerErrorLimit, Subscription
from saga_kit.db import Database, EmitHook, create_engine
from saga_kit.errors import (
    ConfigurationError,
    described,
    is_kafka_authorization_error,
    is_transient,
    is_transient_kafka_error,
)
from saga_kit.faust_app import build_faust_app
from saga_kit.http import Check, NotReady, create_app, server_options
from saga_kit.kafka import (
    ConnectionErrors,
    broker_ping,
    cluster_id,
    create_producer,
    ensure_topics,
    find_group_coordinator,
)
from saga_kit.kafka_acls import topics_used
from saga_kit.kafka_security import KafkaSecurity
from saga_kit.migrations import PLUMBING, Migration, migrate
from saga_kit.outbox import OutboxRelay, on_broker
from saga_kit.periodic import JobStats, Periodic, finish, run_forever
from saga_kit.progress import fetched_end, partition_lag
from saga_kit.pruning import PRUNING
from saga_kit.retry import RetryPolicy
from saga_kit.settings import ServiceSettings, load_or_exit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceSpec:
    """Everything that makes one service different from another."""

    name: str
    title: str
    migrations: tuple[Migration, ...]
    subscription: Subscription
    routers: Callable[[], Sequence[APIRouter]]
    emit_hooks: tuple[EmitHook, ...] = field(default=())
    #: Scheduled jobs of this service; every service also runs the shared pruning job.
    periodic: tuple[Periodic, ...] = field(default=())
    #: Called once with the service's settings before it consumes (e.g. defaults its
    #: reactions need).
    configure: Callable[[ServiceSettings], None] | None = None
    #: Awaited once when the service stops, after its consumers and jobs (e.g. closes the
    #: HTTP clients ``configure`` made).
    close: Callable[[], Coroutine[object, object, None]] | None = None
    #: Service-specific /metrics lines, computed from its database at scrape time.
    metrics: metrics.ExtraMetrics | None = None
    #: ASGI middleware wrapped around the whole app as uvicorn serves it — outside the
    #: framework, its error handling and its server span, so the first and cheapest code a
    #: request meets (e.g. the order service's admission at the door); made with the app
    #: and the service's settings.
    outer_middleware: tuple[Callable[[ASGIApp, ServiceSettings], ASGIApp], ...] = field(default=())
    #: Service-specific readiness checks, beside the shared ones (``saga_kit.http``: a
    #: check raises to fail, or raises ``Degraded`` to pass with a warning).
    checks: Mapping[str, Check] = field(default_factory=dict)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling and without its own exit: the runner owns
    shutdown, and a server that cannot start is a failure the runner reports."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        #: Set once the start is over: the port bound (``started``) or not.
        self.started_or_failed = asyncio.Event()

    async def startup(self, sockets: list[Any] | None = None) -> None:
        """uvicorn's start, except that a port it cannot bind ends ``serve`` unstarted
        instead of raising ``SystemExit`` through the event loop — which skipped the
        runner's stop, so faust's consumer thread kept the process alive until a SIGKILL
        (a service started on a port already taken never exited)."""
        try:
            await super().startup(sockets=sockets)
        except SystemExit:
            self.should_exit = True
        finally:
            self.started_or_failed.set()  # ``started`` tells which


class StoppedWhileStarting(Exception):
    """SIGTERM or SIGINT came while the service waited for a dependency to start."""


class CannotStart(Exception):
    """What the service needs to run is not there (a port, a dependency): it exits 1 with
    one line saying what, and a supervisor may start it again."""


class ConsumersCrashed(Exception):
    """faust's consumer crashed (its fetcher or its thread ended on an error it does not
    retry): the process exits 1 with one line saying why, for a supervisor to start it
    again, rather than serve HTTP with no consumer behind it."""


async def _until_crashed(consumers: Any, interval: float = 1.0) -> None:
    """Return never; raise ``ConsumersCrashed`` once ``consumers`` (the faust app) has
    crashed. Polled: faust's consumer runs on a loop of its own, in a thread."""
    # polled, not awaited: the crash is set on faust's events from the consumer's thread
    while not consumers.crashed:  # noqa: ASYNC110
        await asyncio.sleep(interval)
    reason = consumers.crash_reason
    if reason is not None and is_kafka_authorization_error(reason):
        raise ConsumersCrashed(
            f"the broker refuses this service's Kafka user ({described(reason)}): grant it what"
            " 'sagactl kafka-acls' lists; its consumer group's offsets wait where they are"
        )
    raise ConsumersCrashed(f"its consumers crashed: {described(reason) if reason else 'no reason given'}")


class DependencyUnavailable(CannotStart):
    """A dependency did not come up within ``STARTUP_TIMEOUT_SECONDS``."""


#: After this long waiting for one dependency, each further try is logged at WARNING.
_QUIET_WAIT = 10.0


async def _until_up(
    what: str,
    probe: Callable[[], Awaitable[object]],
    retry: RetryPolicy,
    stop: asyncio.Event,
    deadline: float,
) -> None:
    """Retry ``probe`` until it succeeds (dependencies may start after us): each try
    logged, at INFO for the first ``_QUIET_WAIT`` seconds, then at WARNING. Raises
    ``StoppedWhileStarting`` as soon as ``stop`` is set (a SIGTERM while waiting for a
    database that never comes was taken only after the 120 s wait), and
    ``DependencyUnavailable`` after ``deadline`` seconds of transient failures: a
    dependency that never appears is worth exiting for. Any other failure is raised."""
    began = time.monotonic()

    def transient(exc: BaseException) -> bool:
        return is_transient(exc) or is_transient_kafka_error(exc)

    def waiting(exc: BaseException) -> None:
        level = logging.INFO if time.monotonic() - began < _QUIET_WAIT else logging.WARNING
        log.log(level, "waiting for %s: %s", what, _described(exc))

    trying = asyncio.ensure_future(
        retry.until(
            probe,
            transient,
            waiting,
            give_up_after=deadline,
        )
    )
    await _unless_stopped(what, trying, stop)
    exc = trying.exception()
    if exc is not None and transient(exc):
        raise DependencyUnavailable(
            f"gave up waiting for {what} after {deadline:.0f} s (STARTUP_TIMEOUT_SECONDS): {_described(exc)}"
        ) from exc
    trying.result()  # raises what is not transient


async def _unless_stopped(what: str, work: asyncio.Future[Any], stop: asyncio.Event) -> None:
    """Wait until ``work`` is done (its result or exception left in it) unless ``stop`` is
    set first: then cancel it, give it ``_STOP_TIMEOUT`` seconds to end, and raise
    ``StoppedWhileStarting(what)``. A start step that waits on the broker must end with
    SIGTERM: faust's consumer start, begun just as the broker went away, waited for it
    for 40 minutes through a SIGTERM (found while testing this project's supervisor)."""
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if not work.done():
        work.cancel()
        await asyncio.wait({work}, timeout=_STOP_TIMEOUT)  # a start that swallows it: left
        raise StoppedWhileStarting(what)


async def apply_migrations(
    engine: AsyncEngine,
    migrations: Sequence[Migration],
    retry: RetryPolicy,
    stop: asyncio.Event,
    deadline: float,
) -> list[str]:
    """``saga_kit.migrations.migrate``, tried again as ``_until_up`` tries a dependency: a
    connection the server cuts (a database restart while the service starts) is a
    transient failure, not the end of the service. The migrations are one transaction,
    so one cut off left nothing half done. Returns the names applied, each logged."""
    applied: list[str] = []

    async def once() -> None:
        applied[:] = await migrate(engine, migrations)

    await _until_up("the database's migrations", once, retry, stop, deadline)
    for name in applied:
        log.info("applied migration %s", name)
    return applied


def _described(exc: BaseException) -> str:
    """``exc`` in words: its message, or its type when it has none (a timeout's is empty)."""
    return str(exc) or type(exc).__name__


_STOP_TIMEOUT = 5.0


async def _bounded(what: str, stopping: Coroutine[object, object, object]) -> None:
    """Stop ``what`` but never hang on it: with the broker gone, a clean consumer or
    producer stop can wait forever. Giving up is safe — offsets not committed now are
    redelivered and deduplicated by the inbox.

    Not ``asyncio.wait_for``: on timeout it cancels *and waits* for the stop to end, and a
    stop that does not end on cancellation (faust's consumer thread, whose shutdown is
    lost when its Kafka client raises while the broker is away) would hold it forever.
    A stop given up on is cancelled and left; ``main`` bounds what is left at exit."""
    task = asyncio.create_task(stopping, name=f"stopping {what}")
    done, _ = await asyncio.wait({task}, timeout=_STOP_TIMEOUT)
    if not done:
        task.cancel()
        log.warning("stopping %s: gave up after %.0fs", what, _STOP_TIMEOUT)
    elif not task.cancelled() and task.exception() is not None:
        log.warning("stopping %s failed: %s", what, task.exception())


async def _cancel_leftovers(seconds: float) -> list[str]:
    """Cancel every task still running on this loop (besides the caller) and wait for
    them at most ``seconds``; return the names of those that did not end."""
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    for task in tasks:
        task.cancel()
    if not tasks:
        return []
    _, pending = await asyncio.wait(tasks, timeout=seconds)
    return sorted(t.get_name() for t in pending)


def http_app(
    spec: ServiceSpec,
    db: Database,
    settings: ServiceSettings,
    checks: Mapping[str, Check],
    render_metrics: Callable[[], Awaitable[bytes]],
) -> FastAPI:
    """The service's HTTP API: its own routes, then those every service has (health,
    metrics, dead letters, consumer, docs)."""
    return create_app(
        spec.name,
        spec.title,
        db,
        settings,
        [*spec.routers(), deadletters.router, consumer_api.router, audit.router],
        checks,
        render_metrics,
        inner_middleware=[audit.AuditTrail],
    )


async def _note_broker(
    engine: AsyncEngine, bootstrap: str, security: KafkaSecurity, settings: ServiceSettings
) -> None:
    """Tell the outbox which broker cluster it publishes to (``saga_kit.outbox.on_broker``):
    to a new one, what it sent and still keeps is published again."""
    cluster = await cluster_id(bootstrap, security)
    if cluster is None:
        log.info("the broker names no cluster id: one that lost its log cannot be told from the last")
        return
    again = await on_broker(engine, cluster)
    if again:
        log.warning(
            "the broker (cluster %s) is not the one this service published to: its log is gone,"
            " so the %d events sent in the last %.0f s are published again (consumers drop those"
            " they had processed)",
            cluster,
            again,
            settings.outbox_retention_seconds,
        )


async def _create_topics(spec: ServiceSpec, settings: ServiceSettings, security: KafkaSecurity) -> None:
    """Create the topics this service uses that do not exist yet. Raises ``CannotStart``
    when the broker's ACLs refuse this service's Kafka user one of them: a service started
    without its dead letter topic would hold its whole outbox behind its first dead letter.
    A connection the broker refuses (a wrong password, a certificate not trusted) is
    raised as a ``KafkaConnectionError`` that says so, and waited out like the broker
    away: its SCRAM user may be made after the broker starts (compose.secure.yaml)."""
    try:
        with ConnectionErrors() as connecting:
            await ensure_topics(
                settings.kafka_bootstrap_servers,
                topics_used(spec.name, spec.subscription.topics),
                partitions=settings.topic_partitions,
                replication=settings.topic_replication,
                security=security,
            )
    except KafkaConnectionError as exc:
        refusal = connecting.refusal(security)
        if refusal is None:
            raise
        raise KafkaConnectionError(refusal) from exc
    except Exception as exc:
        if not is_kafka_authorization_error(exc):
            raise
        raise CannotStart(
            f"the broker refuses this service's Kafka user a topic it uses ({described(exc)}):"
            " create the topic, or grant the user what 'sagactl kafka-acls' lists"
        ) from exc


async def serve(spec: ServiceSpec, settings: ServiceSettings, stop: asyncio.Event) -> None:
    # every setting that names a key or a file is read before anything is made or
    # connects: one unfit stops the start with a ConfigurationError (exit 2), no client left
    kafka_security = settings.kafka_client_security()
    if kafka_security.protocol == "PLAINTEXT":
        log.warning("Kafka over PLAINTEXT: events cross the network unencrypted and unauthenticated")
    signer, verifier = signing.load_keys(
        spec.name,
        settings.event_signing_key_file,
        settings.event_signing_kid,
        settings.event_trust_file,
        production=settings.saga_env == "production",
    )
    if signer is None or verifier is None:
        log.warning("events are not signed or not verified: anyone who can write to a topic is believed")
    settings.token_verifier()  # the HTTP app makes its own (create_app); this one checks the keys now
    if spec.configure is not None:
        spec.configure(settings)
    engine = create_engine(settings.database_url, pool_size=settings.db_pool_size)

    def new_producer() -> AIOKafkaProducer:
        return create_producer(
            settings.kafka_bootstrap_servers,
            spec.name,
            idempotent=settings.kafka_idempotent_producer,
            security=kafka_security,
        )

    producer = new_producer()
    db = Database(engine, spec.name, emit_hooks=(*spec.emit_hooks, audit.record_compensations), signer=signer)
    retry = settings.retry_policy()
    relay: OutboxRelay | None = None
    try:
        wait = settings.startup_timeout_seconds
        await _until_up("database", db.ping, retry, stop, wait)
        await apply_migrations(engine, PLUMBING + spec.migrations, retry, stop, wait)
        await _until_up(
            "broker",
            lambda: _create_topics(spec, settings, kafka_security),
            retry,
            stop,
            wait,
        )
        await _until_up(
            "the broker's cluster id",
            lambda: _note_broker(engine, settings.kafka_bootstrap_servers, kafka_security, settings),
            retry,
            stop,
            wait,
        )
        await _until_up(
            "the consumer group's coordinator",
            lambda: find_group_coordinator(
                settings.kafka_bootstrap_servers, spec.name, security=kafka_security
            ),
            retry,
            stop,
            wait,
        )
        await _until_up("producer", producer.start, retry, stop, wait)
        relay = OutboxRelay(
            engine,
            producer,
            batch_size=settings.relay_batch_size,
            poll_interval=settings.relay_poll_interval,
            retry=retry,
            fault=settings.fault,
            ack_warning_seconds=settings.relay_ack_warning_seconds,
            new_producer=new_producer if settings.kafka_idempotent_producer else None,
        )
        db.set_on_commit(relay.wake)
        pipeline = ConsumerPipeline(
            spec.name,
            db,
            spec.subscription,
            retry=retry,
            verifier=verifier,
            handler_errors=HandlerErrorLimit(
                max_consecutive=settings.dlq_max_consecutive_handler_errors,
                max_ratio=settings.dlq_max_handler_error_ratio,
            ),
            fault=settings.fault,
        )
        jobs = (PRUNING, *spec.periodic)
        job_stats = {job.name: JobStats() for job in jobs}
        consumers = build_faust_app(
            spec.name,
            settings.kafka_bootstrap_servers,
            spec.subscription.topics,
            pipeline,
            settings.kafka_fetch_max_wait_ms,
            fetch_idle_wait_ms=settings.kafka_fetch_idle_wait_ms,
            batch_max=settings.consumer_batch_max,
            batch_linger=settings.consumer_batch_linger_ms / 1000,
            data_dir=settings.data_dir,
            security=kafka_security,
            stall_seconds=settings.consumer_stall_seconds,
            fault=settings.fault,
        )
        progress = consumers.saga_progress

        async def consumers_running() -> None:
            if not consumers.started or consumers.crashed:
                raise NotReady(f"consumers {consumers.state}")
            if pipeline.stats.stuck:
                where = "; ".join(pipeline.stats.stuck[tp] for tp in sorted(pipeline.stats.stuck))
                raise NotReady(f"consumer stuck (not acked, retrying) at {where}")
            if pipeline.stats.retrying:
                raise NotReady("consumer is retrying a transient failure")
            held = pipeline.stats.batch_age()
            if held >= settings.consumer_stall_seconds:
                raise NotReady(f"consumer has waited {held:.0f} s on one batch (its database hangs?)")
            if progress.stalls:
                raise NotReady("consumer stalled at " + "; ".join(s.describe() for s in progress.stalls))

        def assigned() -> set[Any]:
            """The partitions assigned to this service's consumers (``TopicPartition``s);
            none while they are not started or rebalancing."""
            try:
                return set(consumers.consumer.assignment())
            except Exception:  # not started or rebalancing: nothing known
                return set()

        def consumer_lag(partitions: set[Any] | None = None) -> dict[tuple[str, int], int]:
            """Records not yet processed (a batch in flight still counts) behind the end
            of each assigned partition (or of ``partitions``) with a known next offset
            (``partition_lag``)."""
            lag: dict[tuple[str, int], int] = {}
            for tp in assigned() if partitions is None else partitions:
                key = (tp.topic, tp.partition)
                position = progress.next_offset(key, taken=False)
                fetched = fetched_end(consumers.consumer, tp)
                behind = partition_lag(position, progress.ends.get(key), fetched)
                if behind is not None:
                    lag[key] = behind
            return lag

        def caught_up() -> bool:
            """Every partition assigned to this service's consumers has a known lag, and
            it is 0: what the partitions held when looked at is processed. False while
            nothing is assigned (a start, a rebalance)."""
            partitions = assigned()
            lag = consumer_lag(partitions)
            return bool(partitions) and len(lag) == len(partitions) and not any(lag.values())

        async def relay_healthy() -> None:
            if not relay.healthy:
                raise NotReady(f"outbox relay is retrying: {relay.failure}")

        app = http_app(
            spec,
            db,
            settings,
            {
                "database": db.ping,
                "broker": lambda: broker_ping(relay.producer),
                "consumers": consumers_running,
                "outbox_relay": relay_healthy,
                **spec.checks,
            },
            metrics.Metrics(
                spec.name,
                pipeline.stats,
                relay,
                db,
                job_stats,
                consumer_lag,
                spec.metrics,
                recoveries=progress.recoveries,
                lag_age=progress.ends_age,
            ).render,
        )
        app.state.pipeline = pipeline
        app.state.relay = relay
        served: ASGIApp = app
        for middleware in spec.outer_middleware:
            served = middleware(served, settings)
        server = _Server(
            uvicorn.Config(
                served,
                host=settings.http_host,
                port=settings.http_port,
                timeout_graceful_shutdown=3,  # open dashboards (event streams) must not hold a stop
                **server_options(
                    settings.http_max_header_bytes, settings.http_header_timeout_seconds, name=spec.name
                ),
            )
        )
        relay_task = asyncio.create_task(relay.run(), name="outbox-relay")
        progress_task = asyncio.create_task(progress.run(), name="consumer-progress")
        job_tasks = [
            asyncio.create_task(run_forever(job, db, settings, job_stats[job.name], caught_up), name=job.name)
            for job in jobs
        ]
        starting = asyncio.ensure_future(consumers.start())
        try:
            await _unless_stopped("the consumers to start", starting, stop)
        except StoppedWhileStarting:
            await _bounded("consumers", consumers.stop())
            raise
        starting.result()
        crash_task = asyncio.create_task(_until_crashed(consumers), name="consumers")
        server_task = asyncio.create_task(server.serve(), name="http")
        stop_task = asyncio.create_task(stop.wait(), name="stop")
        started = asyncio.create_task(server.started_or_failed.wait())
        await asyncio.wait({started, server_task}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if server.started:  # said only once true: a port taken logged it, then failed
            log.info("%s listening on http://%s:%d", spec.name, settings.http_host, settings.http_port)
            heap.settle(settings.gc_gen0_threshold)
        done, _ = await asyncio.wait(
            {relay_task, crash_task, server_task, stop_task}, return_when=asyncio.FIRST_COMPLETED
        )
        failed = [t for t in done if t is not stop_task]
        # open event streams (sse-starlette) end first, each with its last chunk: the
        # runner owns the signals, so sse-starlette's own watch for uvicorn's never fires,
        # and the streams were cancelled at the graceful timeout, a traceback each
        AppStatus.should_exit = True
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server_task, 10)
        await _bounded("consumers", consumers.stop())
        # before the relay stops: a round given its grace records answers to the outbox
        await finish(jobs, job_tasks, [job_stats[job.name] for job in jobs], settings)
        for background in (relay_task, crash_task, progress_task):
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await background
        for task in failed:
            if isinstance(task.exception(), ConsumersCrashed):
                raise task.exception()  # type: ignore[misc]
            if task.exception() is not None:
                raise RuntimeError(f"{task.get_name()} died") from task.exception()
            if task is server_task and not server.started:
                raise CannotStart(
                    f"its HTTP port {settings.http_host}:{settings.http_port} could not be bound:"
                    " another process listens there (the service's *_HTTP_PORT moves it)"
                )
    finally:
        if spec.close is not None:
            await _bounded("close", spec.close())
        await _bounded("producer", (producer if relay is None else relay.producer).stop())
        await engine.dispose()


def exit_past_stuck_threads(name: str, code: int, seconds: float = _STOP_TIMEOUT) -> None:
    """Wait at most ``seconds`` in all for the process's non-daemon threads; if any is
    still running, log their names and end the process now with ``code``.

    The interpreter would otherwise wait for them, unbounded, after ``main`` returns:
    faust runs its Kafka consumer on a thread of its own with its own event loop, and
    when the broker is away its stop can be lost while the thread goes on retrying
    fetches (a stop given up on by ``_bounded``). Ending the process is safe here: the
    database is closed, spans are flushed, and offsets not committed are redelivered
    and deduplicated by the inbox. Returns normally when every thread has ended."""
    deadline = time.monotonic() + seconds
    stuck = []
    for thread in threading.enumerate():
        if thread is threading.current_thread() or thread.daemon:
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            stuck.append(thread.name)
    if stuck:
        log.warning("%s: threads %s did not stop; exiting without them", name, ", ".join(stuck))
        logging.shutdown()
        os._exit(code)


def main(spec: ServiceSpec, settings_factory: Callable[[], ServiceSettings]) -> None:
    """Entry point of ``python -m <service>``. Settings that do not validate stop it
    before anything starts: one log line naming each variable and what is wrong with it
    (never its value: it may be a secret), exit code 2."""
    settings = load_or_exit(spec.name, settings_factory)
    logs.configure(spec.name, settings.log_level)
    provider = tracing.configure(
        spec.name,
        settings.tracing_exporter,
        settings.tracing_dir,
        trust_traceparent=settings.tracing_trust_traceparent,
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        failed: BaseException | None = None
        try:
            await serve(spec, settings, stop)
        except BaseException as exc:
            failed = exc
            raise
        finally:
            # The event loop's own shutdown would wait, unbounded, for every task left
            # (a stop given up on, faust's and aiokafka's background tasks). Wait a while;
            # if some never end, leave now: the database is closed, spans are flushed,
            # and uncommitted offsets are redelivered and deduplicated by the inbox.
            stuck = await _cancel_leftovers(_STOP_TIMEOUT)
            if stuck:
                log.warning("%s: tasks %s did not stop; exiting without them", spec.name, ", ".join(stuck))
                if failed is not None:
                    log.error("%s stopped on error", spec.name, exc_info=failed)
                else:
                    log.info("%s stopped", spec.name)
                provider.shutdown()
                logging.shutdown()
                os._exit(1 if failed is not None else 0)

    code = 0
    try:
        uvloop.run(run())
    except ConfigurationError as exc:  # keys or secrets missing or unfit: it says which
        log.error("%s cannot start: %s", spec.name, exc)
        code = 2
    except StoppedWhileStarting as exc:
        log.info("%s stopped while waiting for %s", spec.name, exc)
    except CannotStart as exc:
        log.error("%s cannot start: %s", spec.name, exc)
        code = 1
    except ConsumersCrashed as exc:
        log.error("%s stops: %s", spec.name, exc)
        code = 1
    except Exception:
        log.exception("%s stopped on error", spec.name)
        code = 1
    else:
        log.info("%s stopped", spec.name)
    finally:
        provider.shutdown()  # flush finished spans
    exit_past_stuck_threads(spec.name, code)
    if code:
        raise SystemExit(code)
