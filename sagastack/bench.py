"""``make bench``: place N orders against the running system and measure.

Starts the system in a fresh run directory, seeds enough stock and money for every
order to be approved, places N orders over HTTP with C concurrent clients, waits until
every order is terminal, then prints sagas completed per second and the p50/p95/p99
latency from the start of each POST to the moment its order became terminal (the
order's own ``updated_at``; same machine, same clock). No target: the figure is the
baseline. It also checks the invariants, so a fast-but-wrong run cannot pass.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg

from sagastack import invariants
from sagastack.client import SagaClient
from sagastack.progress import bar
from sagastack.system import System


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def place_all(
    order_url: str, n: int, concurrency: int, products: list[str], customers: list[str]
) -> dict[str, float]:
    with bar() as progress:
        task = progress.add_task("placing orders", total=n)
        return await _place_all(
            order_url, n, concurrency, products, customers, lambda: progress.advance(task)
        )


async def _place_all(
    order_url: str,
    n: int,
    concurrency: int,
    products: list[str],
    customers: list[str],
    advance: Callable[[], None],
) -> dict[str, float]:
    started: dict[str, float] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            body = {
                "customer_id": customers[i % len(customers)],
                "items": [{"product_id": products[i % len(products)], "quantity": 1}],
                # throughput, not deadlines, is measured here: no saga may time out queued
                "deadline_seconds": 3600,
            }
            t0 = time.time()
            r = await client.post(f"{order_url}/orders", json=body)
            r.raise_for_status()
            started[r.json()["order_id"]] = t0
            advance()

    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return started


def wait_terminal(url: str, n: int, timeout: float) -> list[Any]:
    end = time.monotonic() + timeout
    with psycopg.connect(url) as conn:
        while True:
            rows = conn.execute(
                "SELECT order_id, status, updated_at FROM orders WHERE status <> 'PENDING'"
            ).fetchall()
            if len(rows) >= n or time.monotonic() > end:
                return rows
            time.sleep(0.2)


def main(args: argparse.Namespace) -> int:
    n, concurrency = args.orders, args.concurrency
    products = [f"bench-p{i}" for i in range(args.products)]
    customers = [f"bench-c{i}" for i in range(args.customers)]
    with System(Path(args.run_dir), free_ports=True, fresh=True) as system:
        client = SagaClient(system.url("order_svc"), system.url("inventory_svc"), system.url("payment_svc"))
        with bar() as progress:
            task = progress.add_task("seeding", total=len(products) + len(customers))
            for pid in products:
                client.put_product(pid, pid, Decimal("1.00"), n)
                progress.advance(task)
            for cid in customers:
                client.put_account(cid, Decimal(n))
                progress.advance(task)
        client.close()
        print(f"placing {n} orders with {concurrency} concurrent clients …", flush=True)
        t0 = time.time()
        started = asyncio.run(place_all(system.url("order_svc"), n, concurrency, products, customers))
        placed_s = time.time() - t0
        rows = wait_terminal(system.database_urls["order_svc"], n, timeout=60 + n / 5)
        invariants.wait_for_quiescence(system.database_urls, timeout=60)
        by_status: dict[str, int] = {}
        latencies = []
        last = 0.0
        for order_id, status, updated_at in rows:
            by_status[status] = by_status.get(status, 0) + 1
            finished = datetime.timestamp(updated_at)
            latencies.append((finished - started[str(order_id)]) * 1000)
            last = max(last, finished)
        violations = (
            invariants.check(
                system.database_urls,
                {p: n for p in products},
                {c: Decimal(n) for c in customers},
            )
            if len(rows) == n
            else ["not every order reached a terminal state"]
        )
    elapsed = last - min(started.values())
    print(f"\norders placed        {n} in {placed_s:.1f} s ({n / placed_s:.0f} POST/s)")
    print(f"sagas completed      {len(rows)} ({', '.join(f'{k} {v}' for k, v in sorted(by_status.items()))})")
    rate = len(rows) / elapsed
    print(f"throughput           {rate:.1f} sagas/s (first POST → last terminal: {elapsed:.1f} s)")
    p50, p95, p99 = (percentile(latencies, q) for q in (50, 95, 99))
    print(
        f"latency POST→final   p50 {p50:.0f} ms   p95 {p95:.0f} ms   p99 {p99:.0f} ms"
        f"   mean {statistics.fmean(latencies):.0f} ms"
    )
    for v in violations:
        print(f"FAIL: {v}")
    return 1 if violations else 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="measure sagas/s and POST→terminal latency")
    p.add_argument("--orders", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--products", type=int, default=20)
    p.add_argument("--customers", type=int, default=50)
    p.add_argument("--run-dir", default=".run/bench")
    p.set_defaults(func=main)
