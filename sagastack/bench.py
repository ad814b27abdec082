"""``make bench``: measure the saga on a running system — figures, never a pass/fail timer.

Starts the system in a fresh run directory, seeds enough stock and money for every
order to be approved, and offers orders in one of two ways:

* **closed loop** (default): N orders from C concurrent clients, each POSTing as soon as
  its previous POST answered — the most the system accepts;
* **open loop** (``--rate R``): orders at a fixed offered rate, each sent at its
  scheduled time whatever happened to earlier ones, so latency is measured from the
  *scheduled* send time and a stalled system cannot hide its queue (no coordinated
  omission). ``--sweep`` steps the rate up and prints one row per rate.

It prints sagas completed per second, p50/p95/p99 latency to the order's terminal state
(the order's own ``updated_at``; same machine, same clock), the **CPU per saga** of the
stack's processes (services, broker, database and its backends; measured from outside
with psutil, not counting the load generator, whose own CPU is printed beside it), and the
**same-run ceiling**: the null saga (``sagastack.nullsaga``), the same produce→consume
hops through the same broker with no database and no handlers. It also checks the
invariants, so a fast-but-wrong run cannot pass.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

from events.values import MAX_STOCK
from sagastack import dbstats, invariants
from sagastack.cli_types import count, positive_float, positive_int, rates
from sagastack.cpu import CpuMeter, cpu_seconds
from sagastack.embedded import DATABASES
from sagastack.progress import bar
from sagastack.system import PROVIDER, System

#: Rates of ``--sweep`` when none are given (orders/s offered).
SWEEP = (50, 100, 200, 300, 400, 500, 600)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@dataclass
class Load:
    """What one load phase offered and what came of it."""

    offered_rate: float | None  # None: closed loop
    #: order id → the moment it counts from (scheduled send time, or POST start)
    started: dict[str, float] = field(default_factory=dict)
    refused: int = 0  # 429/503 from admission control
    refused_ms: list[float] = field(default_factory=list)
    #: ms from the moment an accepted order counts from to its 202: the wait at the door
    accepted_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    placing_s: float = 0.0
    generator_cpu_s: float = 0.0


def _body(
    i: int, products: Sequence[str], customers: Sequence[str], deadline: float | None = 3600
) -> dict[str, Any]:
    """An order every saga can approve. The default deadline (one hour) measures
    throughput, not deadlines: a queued saga does not time out; ``None`` takes the
    service's own (``ORDER_DEADLINE_SECONDS``), against which admission control acts."""
    body: dict[str, Any] = {
        "customer_id": customers[i % len(customers)],
        "items": [{"product_id": products[i % len(products)], "quantity": 1}],
    }
    if deadline is not None:
        body["deadline_seconds"] = deadline
    return body


async def _post(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], load: Load, counts_from: float
) -> None:
    try:
        async with http.post(url, json=body) as r:
            if r.status == 202:
                load.started[(await r.json())["order_id"]] = counts_from
                load.accepted_ms.append((time.time() - counts_from) * 1000)
            elif r.status in (429, 503):
                load.refused += 1
                load.refused_ms.append((time.time() - counts_from) * 1000)
            else:
                load.errors[f"HTTP {r.status}"] += 1
    except (aiohttp.ClientError, TimeoutError) as exc:
        load.errors[type(exc).__name__] += 1


async def closed_loop(
    url: str,
    n: int,
    concurrency: int,
    products: Sequence[str],
    customers: Sequence[str],
    advance: Callable[[], None],
    auth: Mapping[str, str] | None = None,
) -> Load:
    """``n`` orders by ``concurrency`` clients, each sending its next when the last was
    answered; ``auth``: headers every request carries (the bearer token)."""
    load = Load(None)
    next_i = iter(range(n))

    async def client(http: aiohttp.ClientSession) -> None:
        for i in next_i:
            await _post(http, url, _body(i, products, customers), load, time.time())
            advance()

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60), headers=auth) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return load


async def open_loop(
    url: str,
    n: int,
    rate: float,
    products: Sequence[str],
    customers: Sequence[str],
    advance: Callable[[], None],
    first: int = 0,
    deadline: float | None = 3600,
    auth: Mapping[str, str] | None = None,
) -> Load:
    """``n`` orders at ``rate``/s; order i is sent at t0 + i/rate, however late the earlier
    answers are (each POST is its own task)."""
    load = Load(rate)
    connector = aiohttp.TCPConnector(limit=2000)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=60), headers=auth
    ) as http:
        t0 = time.time()
        tasks = []
        for i in range(n):
            scheduled = t0 + i / rate
            delay = scheduled - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(
                _post(http, url, _body(first + i, products, customers), load, scheduled)
            )
            task.add_done_callback(lambda _: advance())
            tasks.append(task)
        await asyncio.gather(*tasks)
    return load


def _terminal(url: str, ids: Iterable[str], timeout: float) -> list[Any]:
    """Wait until every order of ``ids`` is terminal (or ``timeout``); their rows. Each
    look asks only for the orders still pending: this backend's CPU lands in the
    database's share of the stack's figure, and asking for every order each 0.2 s cost
    it ~15 ms a look at 4,000 orders (``pg_stat_statements``)."""
    pending = set(ids)
    found: list[Any] = []
    end = time.monotonic() + timeout
    with psycopg.connect(url) as conn:
        while True:
            rows = conn.execute(
                "SELECT order_id, status, updated_at FROM orders"
                " WHERE order_id = ANY(%s::uuid[]) AND status <> 'PENDING'",
                (list(pending),),
            ).fetchall()
            found += rows
            pending -= {str(row[0]) for row in rows}
            if not pending or time.monotonic() > end:
                return found
            time.sleep(0.2)


@dataclass
class Figures:
    """One measured phase."""

    load: Load
    rows: list[Any]
    cpu: dict[str, float]

    @property
    def latencies_ms(self) -> list[float]:
        return [
            (datetime.timestamp(updated) - self.load.started[str(oid)]) * 1000
            for oid, _, updated in self.rows
        ]

    @property
    def elapsed_s(self) -> float:
        if not self.rows:
            return float("nan")
        last = max(datetime.timestamp(updated) for _, _, updated in self.rows)
        return last - min(self.load.started.values())

    @property
    def throughput(self) -> float:
        return len(self.rows) / self.elapsed_s if self.rows else 0.0

    def cpu_ms_per_saga(self) -> float:
        """The stack's CPU per completed saga, in ms: not the payment provider's simulator,
        which stands in for an external system, nor the work of PostgreSQL's backends of
        the simulator's database (counted as the simulator's, ``CpuMeter``)."""
        return sum(v for k, v in self.cpu.items() if k != PROVIDER) * 1000 / max(1, len(self.rows))


def measure(
    system: System, run: Callable[[Callable[[], None]], Coroutine[Any, Any, Load]], total: int, label: str
) -> Figures:
    # the simulator's database work is the external provider's, not the stack's
    meter = CpuMeter(system.stack_pids(), {"postgres": {DATABASES[PROVIDER]: PROVIDER}})
    before = meter.sample()
    gen_before = time.process_time()
    with bar() as progress:
        task = progress.add_task(label, total=total)
        t0 = time.time()
        load = asyncio.run(run(lambda: progress.advance(task)))
        load.placing_s = time.time() - t0
    load.generator_cpu_s = time.process_time() - gen_before
    rows = _terminal(system.database_urls["order_svc"], load.started, timeout=120 + total / 5)
    cpu = CpuMeter.spent(before, meter.sample())
    return Figures(load, rows, cpu)


def print_summary(f: Figures) -> None:
    n = len(f.load.started)
    statuses = Counter(status for _, status, _ in f.rows)
    rate = f"{n / f.load.placing_s:.0f} POST/s" if f.load.placing_s else ""
    offered = f", offered {f.load.offered_rate:.0f}/s" if f.load.offered_rate else ""
    print(f"\norders placed        {n} in {f.load.placing_s:.1f} s ({rate}{offered})")
    if f.load.refused or f.load.errors:
        print(f"refused / errors     {f.load.refused} refused (429/503), errors {dict(f.load.errors) or 0}")
    print(
        f"sagas completed      {len(f.rows)} ({', '.join(f'{k} {v}' for k, v in sorted(statuses.items()))})"
    )
    print(
        f"throughput           {f.throughput:.1f} sagas/s (first POST → last terminal: {f.elapsed_s:.1f} s)"
    )
    lat = f.latencies_ms
    if lat:
        p50, p95, p99 = (percentile(lat, q) for q in (50, 95, 99))
        counts = "scheduled send" if f.load.offered_rate else "POST"
        print(
            f"latency POST→final   p50 {p50:.0f} ms   p95 {p95:.0f} ms   p99 {p99:.0f} ms"
            f"   mean {statistics.fmean(lat):.0f} ms  (from the {counts})"
        )
    ours = {name: s for name, s in f.cpu.items() if name != PROVIDER}
    per = ", ".join(f"{name} {s * 1000 / max(1, len(f.rows)):.1f}" for name, s in sorted(ours.items()))
    print(f"stack CPU            {sum(ours.values()):.1f} s = {f.cpu_ms_per_saga():.1f} ms/saga  ({per})")
    if PROVIDER in f.cpu:
        print(
            f"payment provider     {f.cpu[PROVIDER] * 1000 / max(1, len(f.rows)):.1f} ms/saga of CPU in its"
            " simulator and its database (an external system in production; not in the stack's figure)"
        )
    print(
        f"load generator CPU   {f.load.generator_cpu_s:.1f} s"
        f" ({f.load.generator_cpu_s * 1000 / max(1, n):.2f} ms/order; not in the stack's figure)"
    )


#: How often the idle saga's order is read from the order service's database.
IDLE_POLL_SECONDS = 0.001


def idle_latency(system: System, product: str, customer: str, sagas: int) -> list[float]:
    """POST→APPROVED of ``sagas`` orders placed one at a time on an otherwise idle system
    (each after the previous one finished), in ms: from sending the POST to the first
    read of the order service's database that finds the order no longer PENDING (one
    indexed read every ``IDLE_POLL_SECONDS``, as the loaded runs read their orders'
    ``updated_at`` there). Polling ``GET /orders/{id}`` instead keeps the order service
    busy — each read costs it ~3 ms of CPU through the HTTP stack — so the system is no
    longer idle: measured in four runs, alternating saga by saga, 100-106 ms at p50 polled
    through the API every 2 ms against 88-92 ms read from the database.

    Raises ``RuntimeError`` if an order is still PENDING after a minute, or ends in
    another state than APPROVED (every order is seeded to be approvable)."""
    client = system.client()
    latencies = []
    try:
        with psycopg.connect(system.database_urls["order_svc"], autocommit=True) as db:
            for _ in range(sagas):
                time.sleep(0.2)  # let every consumer go idle again
                started = time.perf_counter()
                order_id = client.place_order(customer, {product: 1}, deadline_seconds=3600)
                while (status := _status(db, order_id)) == "PENDING":
                    if time.perf_counter() - started > 60:
                        raise RuntimeError(f"idle saga: order {order_id} still PENDING after 60 s")
                    time.sleep(IDLE_POLL_SECONDS)
                if status != "APPROVED":  # seeded for approval: anything else is a failure
                    raise RuntimeError(f"idle saga: order {order_id} ended {status}, not APPROVED")
                latencies.append((time.perf_counter() - started) * 1000)
    finally:
        client.close()
    return latencies


def _status(db: psycopg.Connection[Any], order_id: str) -> str | None:
    row = db.execute("SELECT status FROM orders WHERE order_id = %s", (order_id,)).fetchone()
    return None if row is None else str(row[0])


def ceiling(system: System, sagas: int, rate: float) -> dict[str, float] | None:
    """Run the null saga through the same broker; its throughput and CPU per saga
    (the null saga's process plus the broker's). Stop the services first: the broker's
    CPU must be the null saga's alone."""
    brokers = list(system.broker_pids().values())  # one Tansu, or every Kafka node
    if not brokers:
        return None
    before = sum(cpu_seconds(pid) for pid in brokers)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sagastack.nullsaga",
            "--bootstrap",
            system.bootstrap,
            "--sagas",
            str(sagas),
            "--rate",
            str(rate),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    clients = 0.0
    while proc.poll() is None:  # sample until it exits; a reaped child's CPU is gone
        clients = max(clients, cpu_seconds(proc.pid))
        time.sleep(0.2)
    out, _ = proc.communicate()
    if proc.returncode != 0:
        return None
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    spent = clients + sum(cpu_seconds(pid) for pid in brokers) - before
    result["cpu_ms_per_saga"] = spent * 1000 / max(1, result["sagas"])
    return result


def print_ceiling(real: Figures, null: dict[str, float] | None) -> None:
    if null is None:
        print("ceiling (null saga)  not measured (external broker)")
        return
    print(
        f"ceiling (null saga)  {null['throughput']:.0f} sagas/s, {null['cpu_ms_per_saga']:.2f} ms CPU/saga,"
        f" p50 {null['p50_ms']:.0f} ms  (same hops, same broker, no database, no handlers)"
    )
    if real.rows:
        print(
            f"efficiency           CPU/saga {real.cpu_ms_per_saga() / null['cpu_ms_per_saga']:.1f}x"
            " the ceiling's;"
            f" throughput {100 * real.throughput / null['throughput']:.0f}% of it"
        )


def seed(system: System, products: Sequence[str], customers: Sequence[str], n: int) -> None:
    client = system.client()
    with bar() as progress:
        task = progress.add_task("seeding", total=len(products) + len(customers))
        for pid in products:
            client.put_product(pid, pid, Decimal("1.00"), n)
            progress.advance(task)
        for cid in customers:
            client.put_account(cid, Decimal(n))
            progress.advance(task)
    client.close()


def sweep(
    system: System, args: argparse.Namespace, products: list[str], customers: list[str]
) -> list[Figures]:
    url = f"{system.url('order_svc')}/orders"
    auth = system.auth()
    rows: list[Figures] = []
    first = 0
    print(
        f"\n{'offered/s':>10} {'achieved/s':>11} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"
        f" {'202 p50':>8} {'202 p99':>8} {'CPU ms/saga':>12} {'approved':>9} {'refused':>8}"
        f" {'refusal p99':>12} {'gen CPU ms/order':>17}"
    )
    for rate in args.sweep:
        n = max(50, int(rate * args.step_seconds))

        async def run(
            advance: Callable[[], None], n: int = n, rate: float = rate, first: int = first
        ) -> Load:
            return await open_loop(url, n, rate, products, customers, advance, first, args.deadline, auth)

        f = measure(system, run, n, f"{rate:.0f} orders/s")
        first += n
        rows.append(f)
        lat = f.latencies_ms or [float("nan")]
        door = f.load.accepted_ms or [float("nan")]
        approved = sum(1 for _, status, _ in f.rows if status == "APPROVED")
        refused_p99 = f"{percentile(f.load.refused_ms, 99):.0f} ms" if f.load.refused_ms else "-"
        print(
            f"{rate:>10.0f} {f.throughput:>11.1f} {percentile(lat, 50):>8.0f} {percentile(lat, 95):>8.0f}"
            f" {percentile(lat, 99):>8.0f} {percentile(door, 50):>8.0f} {percentile(door, 99):>8.0f}"
            f" {f.cpu_ms_per_saga():>12.1f}"
            f" {100 * approved / max(1, len(f.rows)):>8.0f}% {f.load.refused:>8} {refused_p99:>12}"
            f" {f.load.generator_cpu_s * 1000 / n:>17.2f}",
            flush=True,
        )
        invariants.wait_for_quiescence(system.database_urls, timeout=120)
    return rows


def main(args: argparse.Namespace) -> int:
    n = args.orders
    total_orders = n + (sum(max(50, int(r * args.step_seconds)) for r in args.sweep) if args.sweep else 0)
    if total_orders + args.idle > MAX_STOCK:  # each product is stocked for every order
        print(
            f"sagastack bench: error: {total_orders + args.idle:,} orders in all (--orders, --idle and"
            f" the sweep's rates times --step-seconds): at most {MAX_STOCK:,}, a product's largest stock",
            file=sys.stderr,
        )
        return 2
    products = [f"bench-p{i}" for i in range(args.products)]
    customers = [f"bench-c{i}" for i in range(args.customers)]
    print(f"signed events: {'on' if args.signing else 'off'}", flush=True)
    preload = dbstats.PRELOAD if args.db_statements else ()
    with System(
        Path(args.run_dir), free_ports=True, fresh=True, signing=args.signing, postgres_options=preload
    ) as system:
        initial = total_orders + args.idle  # every order (and idle saga) can be approved
        seed(system, products, customers, initial)
        url = system.url("order_svc") + "/orders"
        auth = system.auth()
        idle = idle_latency(system, products[0], customers[0], args.idle) if args.idle else []
        figures: list[Figures] = []
        if n:
            if args.rate:
                print(f"offering {n} orders at {args.rate:.0f}/s (open loop) …", flush=True)

                async def run(advance: Callable[[], None]) -> Load:
                    return await open_loop(url, n, args.rate, products, customers, advance, auth=auth)

            else:
                print(f"placing {n} orders with {args.concurrency} concurrent clients …", flush=True)

                async def run(advance: Callable[[], None]) -> Load:
                    return await closed_loop(url, n, args.concurrency, products, customers, advance, auth)

            if args.db_statements:  # counted over this run alone
                for problem in dbstats.reset(system.database_urls):
                    print(f"--db-statements: {problem}", flush=True)
            figures.append(measure(system, run, n, "placing orders"))
            print_summary(figures[0])
            if args.db_statements:
                dbstats.print_top(system.database_urls, args.db_statements, len(figures[0].rows))
        if args.sweep:
            invariants.wait_for_quiescence(system.database_urls, timeout=120)
            figures += sweep(system, args, products, customers)
        main_figures = max(figures, key=lambda f: f.throughput) if figures else None
        invariants.wait_for_quiescence(system.database_urls, timeout=120)
        violations = invariants.check(
            system.database_urls,
            {p: initial for p in products},
            {c: Decimal(initial) for c in customers},
            system.provider_url,
        )
        null = None
        if args.ceiling_sagas:
            # the services stop first: their consumers' idle fetches would count as the null saga's
            for key in list(system.services):
                system.stop_service(key)
            null = ceiling(system, args.ceiling_sagas, args.ceiling_rate)
    if main_figures is not None and len(figures) > 1:
        how = (
            f"at {main_figures.load.offered_rate:.0f} offered"
            if main_figures.load.offered_rate
            else "in the closed loop"
        )
        print(f"\nbest run: {main_figures.throughput:.1f} sagas/s {how}")
    if idle:
        print(
            f"idle saga            POST→APPROVED p50 {percentile(idle, 50):.0f} ms,"
            f" p95 {percentile(idle, 95):.0f} ms"
            f" ({len(idle)} sagas one at a time; read from the order service's database)"
        )
    if args.ceiling_sagas and main_figures is not None:
        print_ceiling(main_figures, null)
    if any(len(f.rows) < len(f.load.started) for f in figures):
        violations.append("not every accepted order reached a terminal state")
    for v in violations:
        print(f"FAIL: {v}")
    return 1 if violations else 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="measure sagas/s, latency, CPU per saga and the same-run ceiling")
    p.add_argument("--orders", type=positive_int, default=2000, help="orders of the closed- or open-loop run")
    p.add_argument("--concurrency", type=positive_int, default=16, help="clients of the closed loop")
    p.add_argument("--rate", type=positive_float, default=None, help="open loop: orders offered per second")
    p.add_argument(
        "--sweep",
        type=rates,
        nargs="?",
        const=list(SWEEP),
        default=None,
        help=f"step the offered rate up (default {','.join(map(str, SWEEP))}) and print a table (0: none)",
    )
    p.add_argument("--step-seconds", type=positive_float, default=10.0, help="seconds offered per sweep step")
    p.add_argument(
        "--deadline",
        type=positive_float,
        default=None,
        help="sweep orders' deadline in seconds (default: the service's own, 30 s: admission control acts)",
    )
    p.add_argument("--products", type=positive_int, default=20)
    p.add_argument("--customers", type=positive_int, default=50)
    p.add_argument("--ceiling-sagas", type=count, default=2000, help="null sagas for the ceiling (0: skip)")
    p.add_argument(
        "--ceiling-rate", type=positive_float, default=2000.0, help="null sagas offered per second"
    )
    p.add_argument(
        "--idle", type=count, default=20, help="sagas one at a time on the idle system first (0: skip)"
    )
    p.add_argument(
        "--signing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="services sign and verify events (--no-signing: to measure what it costs)",
    )
    p.add_argument(
        "--db-statements",
        type=count,
        default=0,
        metavar="N",
        help="after the closed- or open-loop run, each database's N statements with the most"
        " execution time in it (pg_stat_statements; 0: none)",
    )
    p.add_argument("--run-dir", default=".run/bench")
    p.set_defaults(func=main)
