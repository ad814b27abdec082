"""Integration fixtures: the real embedded PostgreSQL with each service's schema, and the
real consumer pipeline (decode → inbox → handler → outbox) fed records directly."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_asyncio
import uvicorn
from psycopg import pq
from sqlalchemy import text
from starlette.types import ASGIApp, Message

from events import EventPayload, decode, encode, new_envelope
from events.envelope import Envelope
from events.topics import TOPIC_OF_PRODUCER
from inventory_svc.app import SPEC as INVENTORY
from order_svc.app import SPEC as ORDER
from payment_provider.app import build_app, prepare
from payment_provider.settings import Settings as ProviderSettings
from payment_svc.app import SPEC as PAYMENT
from payment_svc.provider import PaymentProvider
from payment_svc.worker import PaymentWorker
from saga_kit import outbox
from saga_kit.consumer import ConsumerPipeline, Record
from saga_kit.db import Database, create_engine
from saga_kit.migrations import PLUMBING, migrate
from saga_kit.retry import RetryPolicy
from saga_kit.service import ServiceSpec
from saga_kit.settings import ServiceSettings, async_postgres_url
from sagastack.embedded import DATABASES, PidFile, Postgres, RunDirectoryClaim, free_port
from sagastack.watchdog import Watchdog

SPECS = {s.name: s for s in (ORDER, INVENTORY, PAYMENT)}
_offsets = itertools.count()


@pytest.fixture(scope="session")
def postgres(run_root: Path) -> Iterator[Postgres]:
    """The session's PostgreSQL, in a run directory of its own with a watchdog
    (``sagastack.watchdog``): a session killed, or interrupted past its teardown, left the
    server running for over an hour."""
    run_dir = run_root / "integration"
    run_dir.mkdir()
    claim = RunDirectoryClaim(run_dir)
    watchdog = Watchdog(run_dir)
    pg = Postgres(run_dir / "pgdata")
    PidFile(run_dir / "pids.json").add("postgres", pg.start())
    try:
        yield pg
    finally:
        pg.stop()
        watchdog.dismiss()
        claim.release()


class ServiceUnderTest:
    """One service's database and consumer pipeline, without Kafka. The payment service's
    also has its worker, calling the payment provider's simulator (in this process, over
    its own database, served by uvicorn on a free port): a delivery runs the worker until
    nothing is due, so a reservation delivered is a charge asked and answered."""

    def __init__(self, spec: ServiceSpec, db: Database, provider: PaymentProvider | None = None) -> None:
        self.spec = spec
        self.db = db
        self.pipeline = ConsumerPipeline(spec.name, db, spec.subscription, retry=RetryPolicy(0.01, 0.2, 0.01))
        self.provider = provider
        self.worker = (
            PaymentWorker(db, provider, RetryPolicy(0.01, 0.2, 0.01), batch=64, concurrency=8)
            if provider is not None
            else None
        )

    async def work(self) -> None:
        """The payment worker's rounds until no payment is due (nothing, elsewhere)."""
        while self.worker is not None and await self.worker.round():
            pass

    async def deliver(self, envelope: Envelope[Any], *, work: bool = True) -> str:
        """Deliver like Kafka would: the encoded bytes, at a fresh offset; then, with
        ``work``, the payment worker's rounds."""
        topic = TOPIC_OF_PRODUCER[envelope.producer]
        return (await self.deliver_bytes(encode(envelope), topic, work=work)).value

    async def deliver_bytes(
        self,
        value: bytes,
        topic: str,
        offset: int | None = None,
        *,
        work: bool = True,
        headers: Sequence[tuple[str, bytes]] = (),
        key: bytes | None = None,
    ) -> Any:
        """``value`` consumed from ``topic`` (at ``offset``; keyed by ``key``, or as the relay
        would key it), then the service's work done (``work``); the pipeline's outcome."""
        at = next(_offsets) if offset is None else offset
        record = Record(topic, 0, at, relay_key(value) if key is None else key, value, tuple(headers))
        result = await self.pipeline.process(record)
        if work:
            await self.work()
        return result

    async def relay_caught_up(self) -> None:
        """Mark every event in the outbox sent, as a running relay leaves it (no test here
        runs one): admission's broker gate refuses every order once the oldest unsent event
        is past half a deadline old, which, in a whole session's run, the other tests'
        events may be (``POST /orders`` answered 503 ``broker_unavailable`` in a slow run)."""
        async with self.db.unit_of_work() as uow:
            await uow.conn.execute(text("UPDATE outbox SET sent_at = now() WHERE sent_at IS NULL"))

    async def scalar(self, sql: str, **params: Any) -> Any:
        async with self.db.engine.connect() as conn:
            return await conn.scalar(text(sql), params)

    async def rows(self, sql: str, **params: Any) -> list[Any]:
        async with self.db.engine.connect() as conn:
            return list(await conn.execute(text(sql), params))

    async def emitted(self, order_id: uuid.UUID) -> list[Envelope[EventPayload]]:
        """Domain events this service queued in its outbox for ``order_id``, in order."""
        rows = await self.rows(
            "SELECT value FROM outbox WHERE key = :k AND topic NOT LIKE '%.deadletter' ORDER BY id",
            k=str(order_id).encode(),
        )
        return [decode(bytes(r.value)) for r in rows]


@pytest_asyncio.fixture(scope="session")
async def provider_endpoint(postgres: Postgres) -> AsyncIterator[str]:
    """The payment provider's simulator, served in this process by uvicorn on a free port
    over its own database (fault control on, no faults): its URL."""
    url = async_postgres_url(postgres.url(DATABASES["payment_provider"]))
    engine = create_engine(url, pool_size=12)
    await prepare(engine)
    app = build_app(ProviderSettings(database_url=url, fault_control=True), engine)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()  # raises why it could not start
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await serving
    await engine.dispose()


@pytest_asyncio.fixture(scope="session")
async def services(postgres: Postgres, provider_endpoint: str) -> AsyncIterator[dict[str, ServiceUnderTest]]:
    out = {}
    provider = PaymentProvider(provider_endpoint, timeout=2.0, breaker_failures=5, breaker_recovery=1.0)
    for name, spec in SPECS.items():
        url = ServiceSettings._async_driver(postgres.url(DATABASES[name]))
        engine = create_engine(url, pool_size=10)
        await migrate(engine, PLUMBING + spec.migrations)
        db = Database(engine, name, emit_hooks=spec.emit_hooks)
        out[name] = ServiceUnderTest(spec, db, provider if name == "payment_svc" else None)
    yield out
    for s in out.values():
        await s.db.engine.dispose()
    await provider.aclose()


@pytest.fixture
def inventory(services: dict[str, ServiceUnderTest]) -> ServiceUnderTest:
    return services["inventory_svc"]


@pytest.fixture
def payment(services: dict[str, ServiceUnderTest]) -> ServiceUnderTest:
    return services["payment_svc"]


@pytest.fixture
def order(services: dict[str, ServiceUnderTest]) -> ServiceUnderTest:
    return services["order_svc"]


@contextlib.contextmanager
def commit_states() -> Iterator[list[pq.TransactionStatus]]:
    """Within the block: the transaction status each psycopg connection is in when its own
    ``commit`` is called, in order. ``IDLE`` means ``COMMIT`` went earlier, in the round
    trip of the last flush (``UnitOfWork.flush(commit=True)``), and the connection's commit
    sends nothing."""
    found: list[pq.TransactionStatus] = []
    commit = psycopg.AsyncConnection.commit

    async def spy(self: psycopg.AsyncConnection[Any]) -> None:
        found.append(self.pgconn.transaction_status)
        await commit(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(psycopg.AsyncConnection, "commit", spy)
        yield found


def relay_key(value: bytes) -> bytes:
    """The key the relay would give ``value``: its ``order_id``, when it has one."""
    try:
        body = json.loads(value)
    except (ValueError, RecursionError):
        return b"k"
    order_id = body.get("order_id") if isinstance(body, dict) else None
    return order_id.encode() if isinstance(order_id, str) else b"k"


def record_of(envelope: Envelope[Any]) -> Record:
    """``envelope`` as the relay publishes it: on its producer's topic, keyed by its order,
    with the routing headers, at a fresh offset."""
    return Record(
        TOPIC_OF_PRODUCER[envelope.producer],
        0,
        next(_offsets),
        str(envelope.order_id).encode(),
        encode(envelope),
        outbox.envelope_headers(envelope),
    )


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def event(payload: EventPayload, order_id: uuid.UUID, cause: Envelope[Any] | None = None) -> Envelope[Any]:
    return new_envelope(payload, order_id=order_id, causation_id=cause.event_id if cause else None)


async def add_product(svc: ServiceUnderTest, stock: int, price: str = "2.50") -> str:
    pid = uid("p")
    async with svc.db.unit_of_work() as uow:
        await uow.conn.execute(
            text("INSERT INTO products (product_id, name, price, available) VALUES (:p, 'x', :pr, :s)"),
            {"p": pid, "pr": Decimal(price), "s": stock},
        )
    return pid


async def add_account(svc: ServiceUnderTest, balance: str) -> str:
    """An account at the payment provider (which holds the funds)."""
    assert svc.provider is not None, "accounts live at the payment provider"
    cid = uid("c")
    answer = await svc.provider.request("PUT", f"/v1/accounts/{cid}", {"balance": balance})
    assert answer.status_code == 200, answer.text
    return cid


async def balance_of(svc: ServiceUnderTest, cid: str) -> Decimal:
    """The customer's balance at the payment provider."""
    assert svc.provider is not None
    answer = await svc.provider.request("GET", f"/v1/accounts/{cid}")
    assert answer.status_code == 200, answer.text
    return Decimal(answer.json()["balance"])


async def broken_off_answer(app: ASGIApp, path: str) -> tuple[int, Any]:
    """POST ``path`` a chunked JSON body whose client goes away after its first chunk: the
    status and JSON body the app answered."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"transfer-encoding", b"chunked"),
            (b"idempotency-key", b"broken-off"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    told: list[Message] = [
        {"type": "http.request", "body": b'{"customer_id": "broken-off", "ite', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return told.pop(0) if told else {"type": "http.disconnect"}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)
