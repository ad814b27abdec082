"""``make chaos``: a random workload under injected faults, then every invariant checked.

What it does, in one run directory of its own:

1. Starts the whole system, seeds a catalogue with **scarce stock** (demand exceeds it)
   and customers of whom some are **short of funds** and some have **no account**.
2. Places orders at a steady rate with several concurrent clients. Some orders carry a
   **short deadline** (they race their own timeout), some are **cancelled** by the
   customer a moment later (while PENDING or after approval), a few ask for an unknown
   product. A POST that fails because a service is down is retried with the same
   ``Idempotency-Key`` — exactly what a real client must do.
3. Meanwhile it injects faults, all at random (seeded) moments:
   * **SIGKILL** of a random service, restarted after a pause — sometimes with its
     outbox relay slowed down (``SAGA_FAULT=relay.delay=…``: **delayed events**);
   * a **database restart** (all three services lose every connection at once);
   * **duplicates**: a tap consumer re-publishes a share of all domain events at once,
     and another share **late** (seconds afterwards, after newer events of the saga);
   * **poison messages** on every domain topic, some with null, NUL or non-UTF-8 headers,
     some unsigned, some signed by the topic's rightful producer (so they fail at decoding).

   It also supervises, as compose's ``restart: unless-stopped`` does: a service that
   exits on its own — as one must when a broker failover leaves its idempotent producer
   unable to continue (``saga_kit.outbox``) — is restarted, and the report says so.
4. After the last fault it waits for quiescence, then for every consumer group to have
   consumed its topics to the end, then for quiescence again, and checks every invariant
   of docs/design.md §6 against the three databases, plus: every order a client was told
   about exists, every order whose cancellation was accepted is CANCELLED, and the only
   dead letters are the poison messages it sent.
5. Prints a report and exits 1 on any violation, or if the system did not settle within
   ``--settle-limit`` seconds of the last fault.

Sizes, rates, fault counts and the seed are options (``python -m sagastack chaos -h``);
the same seed gives the same workload and fault schedule (timing still varies).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from events.topics import COMMANDS, DOMAIN_TOPICS, TOPIC_OF_PRODUCER
from saga_kit.auth import Role
from sagastack import invariants
from sagastack.apache_kafka import ApacheKafka
from sagastack.cli_types import count, positive_float, positive_int, ratio
from sagastack.progress import bar
from sagastack.system import BROKER_KINDS, SERVICES, BrokerKind, System, broker_from_env, service_of

POISON_KEY = b"chaos-poison"
#: Seconds the consumer groups get, once the system is quiet, to commit their last offsets.
CONSUMED_WAIT_SECONDS = 20.0
#: Distinct warnings and errors of each service's log a failed run prints, and their width.
LOG_DIGEST_LINES, LOG_DIGEST_WIDTH = 25, 240


@dataclass(frozen=True)
class Config:
    orders: int = 2000
    kills: int = 10
    db_restarts: int = 1
    seed: int = 1
    rate: float = 12.0
    clients: int = 8
    products: int = 12
    customers: int = 60
    cancel_ratio: float = 0.08
    short_deadline_ratio: float = 0.08
    duplicate_ratio: float = 0.05
    late_ratio: float = 0.03
    poison: int = 6
    settle_limit: float = 60.0
    run_dir: Path = Path(".run/chaos")
    #: The embedded broker (None: ``SAGA_BROKER``, else Tansu); on Apache Kafka a cluster
    #: of ``kafka_nodes`` (3: replicated topics, min ISR 2).
    broker: BrokerKind | None = None
    kafka_nodes: int = 3
    #: Apache Kafka cluster only: SIGKILLs of the node leading a partition of
    #: ``orders.events``, restarted after a pause (0 elsewhere: Tansu restarts empty).
    broker_kills: int = 0
    #: episodes of payment provider faults (latency, errors, outage, lost responses,
    #: timeouts), each a few seconds long
    provider_faults: int = 8
    #: processes per service (one consumer group each): kills pick among all of them, and
    #: clients spread their requests over the order service's
    instances: int = 1

    def broker_kills_impossible(self) -> bool:
        """Broker kills asked for without the embedded 3-node Apache Kafka, the broker
        resolved as ``System`` resolves it (``SAGA_BROKER``, else Tansu)."""
        broker = self.broker or broker_from_env()
        return bool(self.broker_kills) and (
            broker != "kafka" or self.kafka_nodes != 3 or bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
        )


#: What one provider fault episode sets (``PUT /v1/faults`` of the simulator), by kind.
PROVIDER_FAULTS: dict[str, Callable[[random.Random], dict[str, Any]]] = {
    "latency": lambda rng: {"latency_ms": rng.randint(200, 1500)},
    "errors": lambda rng: {"error_rate": round(rng.uniform(0.3, 0.8), 2)},
    "outage": lambda rng: {"outage": True},
    "lost_responses": lambda rng: {"lose_response_rate": round(rng.uniform(0.3, 0.7), 2)},
    "timeouts": lambda rng: {"timeout_rate": round(rng.uniform(0.2, 0.5), 2), "timeout_ms": 3000},
}


@dataclass
class Report:
    placed: dict[str, str] = field(default_factory=dict)  # order_id → idempotency key
    #: orders whose cancellation was accepted (202: CANCELLED now, and for good)
    cancelled: set[str] = field(default_factory=set)
    post_retries: int = 0
    cancels: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    fault_log: list[str] = field(default_factory=list)
    #: payment's /health/ready sampled every half second: status → samples
    breaker_samples: Counter[str] = field(default_factory=Counter)
    #: times the breaker was seen going from closed to not closed
    breaker_opened: int = 0
    last_fault: float = 0.0
    t0: float = field(default_factory=time.monotonic)

    def fault(self, kind: str, detail: str = "") -> None:
        self.faults[kind] += 1
        self.last_fault = time.monotonic()
        self.fault_log.append(f"{self.last_fault - self.t0:7.1f}s  {kind} {detail}".rstrip())


class Chaos:
    def __init__(self, config: Config) -> None:
        self.cfg = config
        self.rng = random.Random(config.seed)
        self.report = Report()
        self.system = System(
            config.run_dir,
            free_ports=True,
            fresh=True,
            broker_kind=config.broker,
            kafka_nodes=config.kafka_nodes,
            instances=config.instances,
            # prune often, so pruning runs under faults too (the redelivery window stays
            # far longer than a run)
            service_env={
                name: {f"{prefix}_PRUNE_INTERVAL_SECONDS": "5"} for name, (prefix, _) in SERVICES.items()
            },
        )
        self.products = [f"chaos-p{i}" for i in range(config.products)]
        self.customers = [f"chaos-c{i}" for i in range(config.customers)]
        self.initial_stock: dict[str, int] = {}
        self.initial_balance: dict[str, Decimal] = {}
        self.workload_done = asyncio.Event()
        self.faults_done = asyncio.Event()
        #: services the run took down on purpose (killed, not yet restarted)
        self._down: set[str] = set()
        self.broker_kills_done = 0
        #: the reconciliation with the provider's ledger, for the report
        self.reconciliation: list[str] = []

    # -- set-up ----------------------------------------------------------------------------
    def seed_data(self) -> None:
        """Stock for about 60% of expected demand; a quarter of customers short of money,
        and a few with no account at all."""
        mean_units = 2.5  # per order, see _order_body
        demand_per_product = self.cfg.orders * mean_units / len(self.products)
        with httpx.Client(timeout=10, headers=self.system.auth()) as http, bar() as progress:
            task = progress.add_task("seeding", total=len(self.products) + len(self.customers))
            for i, pid in enumerate(self.products):
                stock = max(1, int(demand_per_product * 0.6))
                price = Decimal(5 + 3 * i) / 2
                self.initial_stock[pid] = stock
                r = http.put(
                    f"{self.system.url('inventory_svc')}/products/{pid}",
                    json={"name": pid, "price": str(price), "stock": stock},
                )
                r.raise_for_status()
                progress.advance(task)
            per_customer = self.cfg.orders / len(self.customers)
            for i, cid in enumerate(self.customers):
                progress.advance(task)
                if i % 20 == 19:
                    continue  # no account: unknown_account
                rich = i % 4 != 0
                balance = Decimal(int(per_customer * (40 if rich else 6)))
                self.initial_balance[cid] = balance
                r = http.put(
                    f"{self.system.url('payment_svc')}/accounts/{cid}", json={"balance": str(balance)}
                )
                r.raise_for_status()

    def _order_body(self, i: int) -> dict[str, Any]:
        rng = self.rng
        lines = rng.choice((1, 1, 2, 2, 3))
        items = [
            {"product_id": pid, "quantity": rng.choice((1, 1, 1, 2, 3))}
            for pid in rng.sample(self.products, lines)
        ]
        if rng.random() < 0.01:
            items.append({"product_id": f"chaos-unknown-{i}", "quantity": 1})
        body: dict[str, Any] = {"customer_id": rng.choice(self.customers), "items": items}
        if rng.random() < self.cfg.short_deadline_ratio:
            body["deadline_seconds"] = round(rng.uniform(1.0, 3.0), 2)
        return body

    # -- workload --------------------------------------------------------------------------
    def _order_url(self) -> str:
        """One of the order service's instances, at random (a load balancer's choice)."""
        keys = [k for k in self.system.services if service_of(k) == "order_svc"]
        return self.system.url(random.choice(keys))

    async def _retrying(self, http: httpx.AsyncClient, method: str, path: str, **kw: Any) -> httpx.Response:
        """Send to an order service instance; retry (on another, maybe) while it is down
        (connection refused, 5xx), for up to 3 minutes."""
        end = time.monotonic() + 180
        while True:
            url = self._order_url() + path
            try:
                r = await http.request(method, url, **kw)
                if r.status_code < 500:
                    return r
            except httpx.HTTPError:
                pass
            if time.monotonic() > end:
                raise TimeoutError(f"{method} {path} kept failing")
            self.report.post_retries += 1
            await asyncio.sleep(0.3)

    async def _one_order(
        self, http: httpx.AsyncClient, i: int, body: dict[str, Any], cancel_after: float | None
    ) -> None:
        key = f"chaos-{self.cfg.seed}-{i}"
        r = await self._retrying(
            http,
            "POST",
            "/orders",
            json=body,
            headers={"Idempotency-Key": key},
        )
        if r.status_code != 202:
            raise RuntimeError(f"order {i} refused: {r.status_code} {r.text}")
        order_id = r.json()["order_id"]
        self.report.placed[order_id] = key
        if cancel_after is not None:
            await asyncio.sleep(cancel_after)
            # the customer cancels, with its own token (an operator's would say cancelled_by_operator)
            customer = self.system.auth(str(body["customer_id"]), (Role.CUSTOMER,))
            c = await self._retrying(http, "POST", f"/orders/{order_id}/cancel", headers=customer)
            self.report.cancels["accepted" if c.status_code == 202 else f"refused ({c.status_code})"] += 1
            if c.status_code == 202:
                self.report.cancelled.add(order_id)

    async def workload(self) -> None:
        cfg = self.cfg
        sem = asyncio.Semaphore(cfg.clients)
        tasks: list[asyncio.Task[None]] = []
        async with httpx.AsyncClient(timeout=15, headers=self.system.auth()) as http:

            async def run(i: int, body: dict[str, Any], cancel_after: float | None) -> None:
                async with sem:
                    await self._one_order(http, i, body, cancel_after)

            start = time.monotonic()
            with bar() as progress:
                task = progress.add_task("placing orders", total=cfg.orders)
                for i in range(cfg.orders):
                    body = self._order_body(i)
                    cancel_after = self.rng.uniform(0, 4) if self.rng.random() < cfg.cancel_ratio else None
                    await asyncio.sleep(max(0.0, start + i / cfg.rate - time.monotonic()))
                    tasks.append(asyncio.create_task(run(i, body, cancel_after)))
                    tasks[-1].add_done_callback(lambda _: progress.advance(task))
                await asyncio.gather(*tasks)
        self.workload_done.set()

    # -- faults ----------------------------------------------------------------------------
    async def faults(self) -> None:
        """Each kind of fault on its own schedule over the workload's duration, the kinds
        concurrently (a service may be killed while a broker is down or the provider is
        failing); within a kind one at a time, each waiting for its recovery."""
        cfg = self.cfg
        duration = cfg.orders / cfg.rate
        rng = self.rng
        series: list[tuple[list[float], Callable[[], Awaitable[None]]]] = [
            ([rng.uniform(0.05, 0.9) * duration for _ in range(cfg.kills)], self.kill_and_restart),
            ([rng.uniform(0.2, 0.8) * duration for _ in range(cfg.db_restarts)], self.restart_database),
            (
                [rng.uniform(0.1, 0.8) * duration for _ in range(cfg.broker_kills)],
                self.kill_and_restart_broker_node,
            ),
            ([rng.uniform(0.05, 0.85) * duration for _ in range(cfg.provider_faults)], self.provider_fault),
        ]
        start = time.monotonic()
        await self.poison()

        async def run(times: list[float], action: Callable[[], Awaitable[None]]) -> None:
            for at in sorted(times):
                await asyncio.sleep(max(0.0, start + at - time.monotonic()))
                await action()

        await asyncio.gather(*(run(times, action) for times, action in series))
        self.faults_done.set()

    async def kill_and_restart(self) -> None:
        name = self.rng.choice(sorted(self.system.services))
        pause = self.rng.uniform(0.2, 3.0)
        slow = self.rng.random() < 0.3
        self._down.add(name)
        await asyncio.to_thread(self.system.stop_service, name, signal.SIGKILL)
        self.report.fault(
            "kill", f"{name} (down {pause:.1f}s{', restarted with a slow relay' if slow else ''})"
        )
        await asyncio.sleep(pause)
        env = {"SAGA_FAULT": "relay.delay=1.0" if slow else ""}
        await asyncio.to_thread(self.system.start_service, name, wait=False, env=env)
        self._down.discard(name)
        if slow:
            self.report.faults["delayed_relay"] += 1
        await asyncio.to_thread(self.system.wait_ready, name, 180)
        self.report.last_fault = time.monotonic()

    async def kill_and_restart_broker_node(self) -> None:
        """SIGKILL a Kafka node and restart it after a pause: every other time the node
        leading a random partition of ``orders.events`` (its partitions fail over to the
        other two, min ISR 2 keeps ``acks=all`` writes going), otherwise the active KRaft
        controller (the quorum elects another)."""
        kafka = self.system.broker
        assert isinstance(kafka, ApacheKafka) and len(kafka.nodes) > 1
        self.broker_kills_done += 1
        if self.broker_kills_done % 2 == 0:
            node = await asyncio.to_thread(kafka.active_controller)
            what = "the active controller"
        else:
            partition = self.rng.randrange(6)
            leader = await asyncio.to_thread(kafka.partition_leader, DOMAIN_TOPICS[0], partition)
            node = leader if leader is not None else self.rng.choice(list(kafka.nodes))
            what = f"leader of {DOMAIN_TOPICS[0]}/{partition}"
        pause = self.rng.uniform(1.0, 5.0)
        await asyncio.to_thread(kafka.kill, node)
        self.report.fault("broker_kill", f"Kafka node {node} ({what}; down {pause:.1f}s)")
        await asyncio.sleep(pause)
        await asyncio.to_thread(kafka.restart, node)
        self.report.last_fault = time.monotonic()

    async def provider_fault(self) -> None:
        """One episode of payment provider trouble: a kind at random, for 2-8 s, then the
        provider is well again. Overlapping episodes are not needed: short deadlines,
        cancellations and kills happen meanwhile. The episodes follow one another, so
        together they last at most half the workload's duration (each cut to its share):
        a short run's eight episodes of ~5 s took the provider away for four times its
        10 s of orders, and a payment service killed at the start then approved nothing."""
        kind = self.rng.choice(sorted(PROVIDER_FAULTS))
        faults = PROVIDER_FAULTS[kind](self.rng) | {"seed": self.rng.randrange(2**31)}
        share = self.cfg.orders / self.cfg.rate / 2 / max(1, self.cfg.provider_faults)
        length = min(self.rng.uniform(2.0, 8.0), max(0.5, share))
        shown = ", ".join(f"{k}={v}" for k, v in faults.items() if k != "seed")
        await asyncio.to_thread(self.system.provider_faults, **faults)
        self.report.fault("provider_" + kind, f"{shown} for {length:.1f}s")
        await asyncio.sleep(length)
        await asyncio.to_thread(self.system.provider_faults)
        self.report.last_fault = time.monotonic()

    def supervise(self, stop: threading.Event) -> None:
        """Restart, every half second, a service that exited although the run did not take
        it down (the orchestrator's restart policy), until ``stop`` is set (a thread: it
        also watches while the run waits for quiescence)."""
        while not stop.wait(0.5):
            for name, sp in list(self.system.services.items()):
                code = sp.proc.poll() if sp.proc is not None else None
                if code is None or name in self._down:
                    continue
                self.report.fault("exited", f"{name} (exit code {code}; restarted by the supervisor)")
                self.system.start_service(name, wait=False)

    async def watch_breaker(self) -> None:
        """Sample payment's readiness (its breaker) every half second until the faults end."""
        was = "ready"
        async with httpx.AsyncClient(timeout=2, headers=self.system.auth()) as http:
            while not self.faults_done.is_set():
                try:
                    body = (await http.get(f"{self.system.url('payment_svc')}/health/ready")).json()
                    status = str(body.get("status"))
                    breaker = body.get("checks", {}).get("payment_provider", {})
                    if breaker.get("degraded"):
                        status = "circuit open or half-open"
                except (httpx.HTTPError, ValueError):
                    status = "payment_svc unreachable"
                self.report.breaker_samples[status] += 1
                if status == "circuit open or half-open" and was != status:
                    self.report.breaker_opened += 1
                was = status
                await asyncio.sleep(0.5)

    async def restart_database(self) -> None:
        self.report.fault("db_restart", "PostgreSQL (all three databases)")
        await asyncio.to_thread(self.system.restart_database)
        self.report.last_fault = time.monotonic()

    async def poison(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.system.bootstrap, acks="all", **self.system.kafka_security.client_kwargs()
        )
        await producer.start()
        try:
            samples = [b"\x00\xffnot json", b"[]", b'{"event_type": "OrderTeleported", "schema_version": 1}']
            # headers Kafka allows and a pipeline may choke on: null, NUL, not UTF-8
            odd_headers: list[list[tuple[str, bytes | None]]] = [
                [("x-null", None)],
                [("x-note", b"a\x00b"), ("x-bin", b"\xff\xfe")],
                [],
            ]
            producer_of = {topic: service for service, topic in TOPIC_OF_PRODUCER.items()}
            for i in range(self.cfg.poison):
                topic = DOMAIN_TOPICS[i % len(DOMAIN_TOPICS)]
                value = samples[i % len(samples)]
                headers = odd_headers[(i // len(DOMAIN_TOPICS)) % len(odd_headers)]
                if i % 2:  # signed by the rightful producer: it fails later, at decoding
                    headers = [
                        *headers,
                        *self.system.signer(producer_of[topic]).headers(topic, POISON_KEY, value),
                    ]
                await producer.send_and_wait(topic, value, key=POISON_KEY, headers=headers)
                self.report.fault("poison", topic)
        finally:
            await producer.stop()

    async def tap(self) -> None:
        """Re-publish a share of every domain event at once, and another share late."""
        consumer = AIOKafkaConsumer(
            *DOMAIN_TOPICS,
            bootstrap_servers=self.system.bootstrap,
            **self.system.kafka_security.client_kwargs(),
            group_id=f"chaos-tap-{self.cfg.seed}",
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=2000,
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=self.system.bootstrap, acks="all", **self.system.kafka_security.client_kwargs()
        )
        await consumer.start()
        await producer.start()
        late: list[asyncio.Task[None]] = []

        async def later(delay: float, record: Any) -> None:
            await asyncio.sleep(delay)
            if not self.faults_done.is_set():
                await self._republish(producer, record, "late_duplicate")

        try:
            while not self.faults_done.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=500)
                for records in batch.values():
                    for record in records:
                        if record.key == POISON_KEY:
                            continue
                        roll = self.rng.random()
                        if roll < self.cfg.duplicate_ratio:
                            await self._republish(producer, record, "duplicate")
                        elif roll < self.cfg.duplicate_ratio + self.cfg.late_ratio:
                            late.append(asyncio.create_task(later(self.rng.uniform(2, 10), record)))
        finally:
            for task in late:
                task.cancel()
            with contextlib.suppress(Exception):
                await consumer.stop()
            await producer.stop()

    async def _republish(self, producer: AIOKafkaProducer, record: Any, kind: str) -> None:
        with contextlib.suppress(Exception):
            await producer.send_and_wait(
                record.topic, record.value, key=record.key, headers=list(record.headers or ())
            )
            self.report.faults[kind] += 1
            self.report.last_fault = time.monotonic()

    # -- verdict ---------------------------------------------------------------------------
    def extra_checks(self) -> list[str]:
        v: list[str] = []
        url = invariants.plain_url(self.system.database_urls["order_svc"])
        with psycopg.connect(url) as conn:
            known = {str(o): status for o, status in conn.execute("SELECT order_id, status FROM orders")}
        for order_id in self.report.placed:
            if order_id not in known:
                v.append(f"order {order_id} was accepted (202) but does not exist")
        for order_id in sorted(self.report.cancelled):
            if known.get(order_id, "CANCELLED") != "CANCELLED":
                v.append(
                    f"order {order_id}: its cancellation was accepted (202), but it is {known[order_id]}"
                )
        expected_poison = 2 * self.cfg.poison  # each domain topic has two other consumers
        poison = 0
        for name in SERVICES:
            letters = self.system.http.get(
                f"{self.system.url(name)}/dead-letters", params={"status": "ALL", "limit": 1000}
            ).json()
            for d in letters:
                detail = self.system.http.get(f"{self.system.url(name)}/dead-letters/{d['id']}").json()
                if (detail["key"] or {}).get("text") == POISON_KEY.decode():
                    poison += 1
                else:
                    v.append(
                        f"{name} dead-lettered a real event: {d['event_type']} {d['order_id']}: {d['reason']}"
                    )
        if poison != expected_poison:
            v.append(f"{poison} poison messages dead-lettered, expected {expected_poison}")
        return v

    def consumed(self) -> list[str]:
        """What the services' consumer groups have not consumed (``unconsumed``), once
        they had ``CONSUMED_WAIT_SECONDS`` to reach their topics' ends."""
        return asyncio.run(
            unconsumed(
                self.system.bootstrap,
                self.system.kafka_security.client_kwargs(),
                service_reads(),
                CONSUMED_WAIT_SECONDS,
            )
        )

    def outcomes(self) -> tuple[Counter[str], Counter[str]]:
        """Orders by status and reason; compensating events by type (from the timelines)."""
        url = invariants.plain_url(self.system.database_urls["order_svc"])
        with psycopg.connect(url) as conn:
            by_outcome = Counter(
                f"{status} ({reason})" if reason else status
                for status, reason in conn.execute("SELECT status, reason FROM orders")
            )
            compensations = Counter(
                {
                    event_type: n
                    for event_type, n in conn.execute(
                        "SELECT event_type, COUNT(*) FROM saga_events WHERE event_type IN"
                        " ('OrderCancelled', 'InventoryReleased', 'PaymentRefunded', 'PaymentVoided',"
                        " 'OrderRejected')"
                        " GROUP BY event_type"
                    )
                }
            )
            compensations["approved, then cancelled"] = conn.execute(
                "SELECT COUNT(DISTINCT order_id) FROM saga_events WHERE event_type = 'OrderApproved'"
                " AND order_id IN (SELECT order_id FROM orders WHERE status = 'CANCELLED')"
            ).fetchone()[0]  # type: ignore[index]
        return by_outcome, compensations

    async def drive(self) -> None:
        tap = asyncio.create_task(self.tap())
        watch = asyncio.create_task(self.watch_breaker())
        try:
            await asyncio.gather(self.workload(), self.faults())
        finally:
            self.faults_done.set()
            await tap
            await watch

    def run(self) -> int:
        cfg = self.cfg
        print(
            f"chaos: {cfg.orders} orders at {cfg.rate:g}/s, {cfg.instances} instance(s) per service,"
            f" {cfg.kills} kills, {cfg.db_restarts} database restarts, {cfg.broker_kills} broker kills,"
            f" {cfg.provider_faults} provider fault episodes, seed {cfg.seed}",
            flush=True,
        )
        if cfg.broker_kills_impossible():
            print(BROKER_KILLS_NEED, file=sys.stderr)
            return 2
        with self.system:
            print(f"broker: {self.system.broker_description()}", flush=True)
            self.seed_data()
            self.report.t0 = time.monotonic()
            stop_supervising = threading.Event()
            supervisor = threading.Thread(target=self.supervise, args=(stop_supervising,), daemon=True)
            supervisor.start()
            try:
                asyncio.run(self.drive())
                drive_done = time.monotonic()
                print("workload and faults done; waiting for quiescence …", flush=True)
                quiet = invariants.wait_for_quiescence(
                    self.system.database_urls, timeout=cfg.settle_limit + 120
                )
            finally:
                stop_supervising.set()
                supervisor.join()
            # a restart by the supervisor is the last fault if it came after the others
            faults_over = self.report.last_fault or drive_done
            settled = time.monotonic() - faults_over
            # quiescence is read in the databases: events published and not yet consumed
            # (a group rebalancing after a kill, the last duplicates) leave nothing unsettled
            # there. The groups reach their topics' ends first, the databases settle again
            # after what those events did, and only then are the invariants checked
            behind = self.consumed()
            if quiet:
                quiet = invariants.wait_for_quiescence(self.system.database_urls, timeout=cfg.settle_limit)
            violations = invariants.check(
                self.system.database_urls, self.initial_stock, self.initial_balance, self.system.provider_url
            )
            violations += self.extra_checks() + behind
            self.reconciliation = invariants.ledger_summary(
                invariants.ProviderLedger.fetch(self.system.provider_url)
            )
            with contextlib.suppress(httpx.HTTPError, ValueError):
                injected = (
                    httpx.get(f"{self.system.provider_url}/v1/faults", timeout=10).json().get("injected")
                )
                self.reconciliation.append(f"provider faults injected (by the simulator): {injected}")
            if not quiet:
                violations.append("the system never became quiet")
            elif settled > cfg.settle_limit:
                violations.append(
                    f"quiescence took {settled:.1f}s after the last fault (limit {cfg.settle_limit:g}s)"
                )
            outcomes, compensations = self.outcomes()
            elapsed = time.monotonic() - self.report.t0
        self.print_report(outcomes, compensations, settled, elapsed, violations)
        return 1 if violations else 0

    def print_report(
        self,
        outcomes: Counter[str],
        compensations: Counter[str],
        settled: float,
        elapsed: float,
        violations: list[str],
    ) -> None:
        r = self.report
        print("\n== chaos report " + "=" * 56)
        print(f"seed {self.cfg.seed}; {len(r.placed)} orders placed; run took {elapsed:.0f}s")
        print("orders by outcome:")
        for outcome, n in outcomes.most_common():
            print(f"  {n:6d}  {outcome}")
        print("compensating events: " + ", ".join(f"{k} {v}" for k, v in sorted(compensations.items())))
        print(
            "customer cancellations: "
            + (", ".join(f"{k} {v}" for k, v in sorted(r.cancels.items())) or "none")
        )
        print("faults injected:")
        for kind, n in sorted(r.faults.items()):
            print(f"  {n:6d}  {kind}")
        print(f"client retries while a service was down: {r.post_retries}")
        print(
            "payment provider breaker, from payment's readiness every 0.5 s (an opening between two"
            f" samples goes unseen; payment_svc's log has every one): seen opening {r.breaker_opened}"
            " times; samples: "
            + (", ".join(f"{k} {v}" for k, v in r.breaker_samples.most_common()) or "none")
        )
        for line in self.reconciliation:
            print(line)
        print(f"time to quiescence after the last fault: {settled:.1f}s")
        read_again = progress_recoveries(self.system.run_dir / "logs")
        print(
            "partitions a consumer read again (saga_kit.progress; records lost on the way or a"
            " partition no longer delivered): "
            + (", ".join(f"{k} {v}" for k, v in sorted(read_again.items())) or "none")
        )
        print("fault log:")
        for line in r.fault_log:
            if line.split()[1] != "poison":
                print(f"  {line}")
        print(f"logs: {self.system.run_dir / 'logs'}")
        print(
            f"violations: {len(violations)} (the invariants of docs/design.md §6; every order a client"
            " was told of exists, and is CANCELLED if its cancellation was accepted; the only dead"
            " letters are the poison sent; every consumer group consumed its topics to the end)"
        )
        for v in violations:
            print(f"  FAIL: {v}")
        if violations:  # what the services said, for a run whose directory is gone (CI)
            for path in sorted((self.system.run_dir / "logs").glob("*_svc*.log")):
                print(f"{path.stem}'s warnings and errors, repeats counted:")
                for line in log_digest(path, LOG_DIGEST_LINES):
                    print(f"  {line}")


BROKER_KILLS_NEED = (
    "sagastack chaos: error: --broker-kills needs the embedded 3-node Apache Kafka"
    " (--broker kafka --kafka-nodes 3, no KAFKA_BOOTSTRAP_SERVERS)"
)


def log_digest(path: Path, limit: int) -> list[str]:
    """The last ``limit`` distinct warnings and errors of a service's JSON log, each with
    the times it was logged and the time it was first logged; lines that are not JSON
    (a crash's traceback) count as errors."""
    seen: dict[str, list[Any]] = {}  # message -> [count, first ts]
    with contextlib.suppress(OSError), path.open(encoding="utf-8", errors="replace") as f:
        for raw in f:
            try:
                entry = json.loads(raw)
                level, ts = str(entry.get("level", "")), str(entry.get("ts", ""))[11:23]
                text = f"{level} {entry.get('logger', '')}: {entry.get('msg', '')}"
            except (ValueError, AttributeError):
                level, ts, text = "error", "", raw.rstrip()
            if level not in ("warning", "error", "critical") or not text.strip():
                continue
            text = text[:LOG_DIGEST_WIDTH]
            seen.setdefault(text, [0, ts])[0] += 1
            seen[text] = seen.pop(text)  # most recent last
    return [f"{first} x{n} {text}" for text, (n, first) in list(seen.items())[-limit:]]


def progress_recoveries(logs: Path) -> Counter[str]:
    """How often each service's consumer read a partition again (``saga_kit.progress``),
    from the services' logs: "<service> lost" (records lost on the way, read again) or
    "<service> stall" (a partition whose fetching stopped) → count."""
    found: Counter[str] = Counter()
    for path in sorted(logs.glob("*_svc*.log")):
        with contextlib.suppress(OSError), path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                if "consumer lost records on the way" in line:
                    found[f"{path.stem} lost"] += 1
                elif "consumer stalled at" in line:
                    found[f"{path.stem} stall"] += 1
    return found


def service_reads(commands: bool = False) -> dict[str, list[str]]:
    """Each service's consumer group → the topics it reads: the other services' domain
    topics, and the order service the commands topic too when ``commands``."""
    reads = {service: [t for t in DOMAIN_TOPICS if t != TOPIC_OF_PRODUCER[service]] for service in SERVICES}
    if commands:
        reads["order_svc"].append(COMMANDS)
    return reads


async def partition_ends(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """Each partition's end offset (the offset its next record will have), exact on either
    broker: the broker's answer to ListOffsets, or the high watermark of a fetch from just
    below it if that is further. The embedded Tansu answers ListOffsets with its last
    batch's first offset + 1, short of the end by the rest of that batch (a chaos run's
    committed offsets were 1-4 past it); its fetch's high watermark is exact, and is what
    the services' lag counts from too (``saga_kit.faust_app``). ``consumer`` is assigned
    the non-empty partitions and fetches from each once, a record at most."""
    ends = dict(await consumer.end_offsets(partitions))
    filled = [tp for tp in partitions if ends[tp] > 0]
    if not filled:
        return ends
    consumer.assign(filled)
    for tp in filled:  # on Tansu, its last batch's first record; on Apache Kafka, its last
        consumer.seek(tp, ends[tp] - 1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(consumer.highwater(tp) is None for tp in filled):
        await consumer.getmany(*filled, timeout_ms=500, max_records=1)
    for tp in filled:
        ends[tp] = max(ends[tp], consumer.highwater(tp) or 0)
    return ends


async def unconsumed(
    bootstrap: str,
    client_kwargs: dict[str, Any],
    reads: dict[str, list[str]],
    wait: float,
) -> list[str]:
    """What the consumer groups have not consumed: for each group of ``reads`` (group id →
    the topics it reads), one line per partition whose committed offset is short of the
    partition's end offset (``partition_ends``), or past it (a log that lost records under
    the group); none when every group is at every end.

    A partition a consumer stopped fetching leaves no other trace in a chaos run: its
    sagas end by their deadline, nothing stays held, and the invariants hold. Groups
    commit every second or so, so they get up to ``wait`` seconds to reach the ends."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_kwargs)
    ends = AIOKafkaConsumer(bootstrap_servers=bootstrap, **client_kwargs)
    await admin.start()
    await ends.start()
    try:
        topics = sorted({t for read in reads.values() for t in read})
        # asked of the broker: a consumer's own metadata lists only the topics it has used
        # (none yet, on Apache Kafka), and a topic left out would pass as consumed
        listed = {
            d["topic"]: sorted(p["partition"] for p in d["partitions"])
            for d in await admin.describe_topics(topics)
            if not d.get("error_code")
        }
        partitions = [TopicPartition(t, p) for t in topics for p in listed.get(t, ())]
        unlisted = [
            f"{group} reads {t}, whose partitions the broker's metadata does not list: nothing checked"
            for group, read in reads.items()
            for t in read
            if not listed.get(t)
        ]
        deadline = time.monotonic() + wait
        while True:
            end = await partition_ends(ends, partitions)
            behind: list[str] = list(unlisted)
            for group, read in reads.items():
                own = [tp for tp in partitions if tp.topic in read]
                committed = await admin.list_consumer_group_offsets(group, partitions=own)
                for tp in own:
                    at = committed[tp].offset if tp in committed else -1
                    if at < end[tp] and end[tp] > 0:  # an empty partition has nothing to commit
                        behind.append(
                            f"{group} has not consumed {tp.topic}/{tp.partition} to its end:"
                            f" committed offset {at}, end offset {end[tp]}"
                        )
                    elif at > end[tp]:  # the log lost records under the group
                        behind.append(
                            f"{group}'s committed offset on {tp.topic}/{tp.partition} is past its end:"
                            f" committed offset {at}, end offset {end[tp]} (the log lost records)"
                        )
            if not behind or time.monotonic() >= deadline:
                return behind
            await asyncio.sleep(1.0)
    finally:
        await ends.stop()
        await admin.close()


def main(args: argparse.Namespace) -> int:
    config = Config(
        orders=args.orders,
        kills=args.kills,
        db_restarts=args.db_restarts,
        seed=args.seed,
        rate=args.rate,
        clients=args.clients,
        cancel_ratio=args.cancel_ratio,
        short_deadline_ratio=args.short_deadline_ratio,
        duplicate_ratio=args.duplicate_ratio,
        late_ratio=args.late_ratio,
        settle_limit=args.settle_limit,
        run_dir=Path(args.run_dir),
        broker=args.broker,
        kafka_nodes=args.kafka_nodes,
        broker_kills=args.broker_kills,
        provider_faults=args.provider_faults,
        instances=args.instances,
    )
    if config.broker_kills_impossible():  # before Chaos makes its System and run directory
        print(BROKER_KILLS_NEED, file=sys.stderr)
        return 2
    return Chaos(config).run()


def add_parser(sub: Any) -> None:
    d = Config()
    p = sub.add_parser("chaos", help="random workload under injected faults; check every invariant")
    p.add_argument("--orders", type=positive_int, default=d.orders)
    p.add_argument("--kills", type=count, default=d.kills, help="services SIGKILLed and restarted")
    p.add_argument("--db-restarts", type=count, default=d.db_restarts)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--rate", type=positive_float, default=d.rate, help="orders per second")
    p.add_argument("--clients", type=positive_int, default=d.clients, help="concurrent HTTP clients")
    p.add_argument("--cancel-ratio", type=ratio, default=d.cancel_ratio, help="orders the customer cancels")
    p.add_argument(
        "--short-deadline-ratio",
        type=ratio,
        default=d.short_deadline_ratio,
        help="orders with a 1-3 s deadline",
    )
    p.add_argument(
        "--duplicate-ratio", type=ratio, default=d.duplicate_ratio, help="events re-published at once"
    )
    p.add_argument("--late-ratio", type=ratio, default=d.late_ratio, help="events re-published 2-10 s later")
    p.add_argument(
        "--settle-limit", type=positive_float, default=d.settle_limit, help="seconds after the last fault"
    )
    p.add_argument("--run-dir", default=str(d.run_dir))
    p.add_argument(
        "--broker", choices=BROKER_KINDS, default=None, help="embedded broker ($SAGA_BROKER, else tansu)"
    )
    p.add_argument(
        "--kafka-nodes", type=int, choices=(1, 3), default=d.kafka_nodes, help="Apache Kafka nodes"
    )
    p.add_argument(
        "--broker-kills",
        type=count,
        default=d.broker_kills,
        help="Kafka nodes SIGKILLed (3-node cluster only)",
    )
    p.add_argument(
        "--instances",
        type=positive_int,
        default=d.instances,
        help="processes per service (one consumer group)",
    )
    p.add_argument(
        "--provider-faults",
        type=count,
        default=d.provider_faults,
        help="episodes of payment provider latency, errors, outage, lost responses or timeouts",
    )
    p.set_defaults(func=main)
