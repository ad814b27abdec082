"""The payment service's one provider client and worker, made from its settings at start
(``configure``), and what the service reports about them: a readiness check that says
*degraded* while the circuit breaker is not closed, and /metrics families."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from payment_svc.provider import PaymentProvider
from payment_svc.settings import Settings
from payment_svc.worker import WAITING, HandOff, PaymentWorker
from saga_kit.db import Database
from saga_kit.http import Degraded

_state: dict[str, Any] = {}

#: Set after a commit that made a provider call due (a new charge, a refund): the worker
#: runs at once; its interval (``provider_poll_seconds``) only catches retries coming due.
WORK_DUE = asyncio.Event()

#: Payments the consumer claimed for the worker (``payment_svc.worker.HandOff``); open
#: once the worker runs.
HANDOFF = HandOff()

#: /metrics: the breaker's state as a number (Prometheus has no strings)
BREAKER_CODES = {"closed": 0, "half_open": 1, "open": 2}


def configure(settings: Any) -> None:
    """Make the provider client from the service's settings (called once at start)."""
    assert isinstance(settings, Settings)
    _state.pop("worker", None)  # a worker of an earlier run in this process called another client
    _state["provider"] = PaymentProvider(
        settings.provider_url,
        timeout=settings.provider_timeout_seconds,
        breaker_failures=settings.provider_breaker_failures,
        breaker_recovery=settings.provider_breaker_recovery_seconds,
    )


async def close() -> None:
    """Release the payments handed off and not called (``PaymentWorker.stop``), and close
    the provider client's connections (called once at stop, before the database closes)."""
    worker: PaymentWorker | None = _state.get("worker")
    if worker is not None:
        await worker.stop()
    HANDOFF.close()
    made: PaymentProvider | None = _state.get("provider")
    if made is not None:
        await made.aclose()


def finish() -> None:
    """At a graceful stop: the worker's round in progress makes no new call
    (``PaymentWorker.finish``) and is waited for ``finish_grace``."""
    worker: PaymentWorker | None = _state.get("worker")
    if worker is not None:
        worker.finish()


def finish_grace(settings: Any) -> float:
    """Seconds a round in progress is given at a graceful stop: a call already out ends
    within ``provider_timeout_seconds`` (its whole budget), and its answer's record takes
    a transaction; 2 s for that."""
    return float(settings.provider_timeout_seconds) + 2.0


def provider() -> PaymentProvider:
    """The process's provider client; ``configure`` must have run."""
    made: PaymentProvider = _state["provider"]
    return made


async def work(db: Database, settings: Any) -> int:
    """One round of the payment worker (a scheduled job, every ``provider_poll_seconds``)."""
    worker: PaymentWorker | None = _state.get("worker")
    if worker is None:
        worker = PaymentWorker(
            db,
            provider(),
            settings.retry_policy(),
            batch=settings.provider_batch,
            concurrency=settings.provider_concurrency,
            fault=settings.fault,
            handoff=HANDOFF,
            claim_every=settings.provider_poll_seconds,
            wake=WORK_DUE.set,
        )
        _state["worker"] = worker
    return await worker.round()


async def provider_check() -> None:
    """Readiness: the service is ready while the breaker is open (payments wait, nothing is
    lost), but says so: ``degraded`` with since when and the last failure; and so while
    the provider's latest answers are refusals (``PaymentProvider.refusing``)."""
    p = provider()
    if p.state == "closed":
        if p.refusing is not None:
            refusing_since, said = p.refusing
            at = datetime.fromtimestamp(refusing_since, UTC).isoformat(timespec="seconds")
            raise Degraded(
                f"the payment provider refuses the service's calls since {at} (the last: {said}):"
                " charges and refunds wait and are asked again slowly; a wrong PAYMENT_PROVIDER_URL"
                " or credentials?"
            )
        return
    since = (
        datetime.fromtimestamp(p.opened_at, UTC).isoformat(timespec="seconds") if p.opened_at else "unknown"
    )
    probe = f"probing again in {p.retry_after():.0f} s" if p.state == "open" else "probing"
    raise Degraded(
        f"payment provider circuit {p.state.replace('_', '-')} since {since}: {p.last_failure};"
        f" charges and refunds wait and are retried ({probe})"
    )


async def render(conn: AsyncConnection, service: str) -> list[Metric]:
    """``saga_payment_provider_calls_total{operation, outcome}`` (outcome: the answer's HTTP
    status; with no answer, ``unreachable``, ``timeout`` or ``broken``; ``breaker_open``),
    ``saga_payment_provider_circuit_state`` (0 closed, 1 half-open, 2 open),
    ``saga_payment_provider_circuit_open_seconds``, and from the table:
    ``saga_payments_waiting{status}`` (charges PENDING, refunds REFUND_PENDING) and
    ``saga_payments_oldest_waiting_seconds`` (the oldest of them). Both read the waiting payments
    only, through the ``payments_due`` index: a scrape costs the same however many
    payments the table keeps (every payment ever made; counting them all by status read
    the table whole). What became of the others is in the calls' outcomes."""
    p = provider()
    calls = CounterMetricFamily(
        "saga_payment_provider_calls",
        "Calls to the payment provider by operation (charge, refund; probe: the lookup a half-open"
        " breaker sends when no payment is due) and outcome (the answer's HTTP status, 429 and 5xx"
        " retried; with no answer, retried: unreachable, nothing sent; timeout or broken, it may"
        " have been done; breaker_open: not sent).",
        labels=["service", "operation", "outcome"],
    )
    for (operation, outcome), n in sorted(p.calls.items()):
        calls.add_metric([service, operation, outcome], n)
    state = GaugeMetricFamily(
        "saga_payment_provider_circuit_state",
        "The provider circuit breaker: 0 closed, 1 half-open, 2 open.",
        labels=["service"],
    )
    state.add_metric([service], BREAKER_CODES[p.state])
    opened = GaugeMetricFamily(
        "saga_payment_provider_circuit_open_seconds",
        "Seconds since the breaker opened (0 while closed).",
        labels=["service"],
    )
    opened.add_metric([service], time.time() - p.opened_at if p.opened_at else 0.0)
    by_status = GaugeMetricFamily(
        "saga_payments_waiting",
        "Payments waiting on the provider, by status: charges PENDING, refunds REFUND_PENDING.",
        labels=["service", "status"],
    )
    waiting_now = dict.fromkeys(("PENDING", "REFUND_PENDING"), 0)
    for status, n in await conn.execute(
        text(f"SELECT status, COUNT(*) FROM payments WHERE {WAITING} GROUP BY 1")
    ):
        waiting_now[status] = n
    for status, n in waiting_now.items():
        by_status.add_metric([service, status], n)
    waiting = GaugeMetricFamily(
        "saga_payments_oldest_waiting_seconds",
        "Age of the oldest charge or refund still waiting on the provider (0: none).",
        labels=["service"],
    )
    oldest = await conn.scalar(
        text(
            "SELECT COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - MIN(waiting_since)), 0)"
            f" FROM payments WHERE {WAITING}"
        )
    )
    waiting.add_metric([service], float(oldest or 0))
    return [calls, state, opened, by_status, waiting]
