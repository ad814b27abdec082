"""The payment provider's circuit breaker, with the simulator in process: it opens after
repeated failures, fails fast while open, and closes once the provider is back — even
when no payment is waiting to be the probe; a payment that comes due while it is open is
said to wait at once."""

from __future__ import annotations

import asyncio
import logging
import uuid
from decimal import Decimal

import pytest

from tests.integration.conftest import ServiceUnderTest, add_account, balance_of, event
from tests.unit.samples import reserved_payload


async def test_the_breaker_opens_fails_fast_and_closes_without_a_payment_to_probe_with(
    payment: ServiceUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="payment_svc.provider")
    provider, worker = payment.provider, payment.worker
    assert provider is not None and worker is not None
    await payment.work()  # nothing of earlier tests left due
    assert (await provider.request("PUT", "/v1/faults", {"outage": True})).status_code == 200
    try:
        for _ in range(5):  # PAYMENT_PROVIDER_BREAKER_FAILURES in the fixture
            await provider.probe()
        assert provider.state == "open"
        said = [(r.levelno, r.getMessage()) for r in caplog.records]
        assert [m for level, m in said if level == logging.WARNING and "probe failed" in m][:1]
        assert [m for level, m in said if level == logging.ERROR and "circuit breaker open after" in m]
        outages = (await provider.request("GET", "/v1/faults")).json()["injected"]["outage"]
        await provider.probe()  # fails fast: the provider hears nothing
        assert (await provider.request("GET", "/v1/faults")).json()["injected"]["outage"] == outages
        assert provider.calls[("probe", "breaker_open")] >= 1
    finally:
        assert (await provider.request("PUT", "/v1/faults", {})).status_code == 200
    await asyncio.sleep(provider.retry_after() + 0.2)  # the fixture's recovery: 1 s
    assert provider.state == "half_open"
    assert await worker.round() == 0  # nothing due: the round probes
    assert provider.state == "closed" and provider.opened_at is None
    assert any("circuit breaker closed" in r.getMessage() for r in caplog.records)


async def test_a_payment_due_while_the_breaker_is_open_is_said_to_wait_at_once_and_charged_after(
    payment: ServiceUnderTest,
) -> None:
    """Charges that come due while the breaker is open are each answered by the open
    breaker in the next round, without a call: PaymentPending at once (the sixth order of a
    burst into an outage waited 26 s for its first try, its saga silent: a newcomer trial),
    once, counted as nothing done; charged once the provider is back."""
    provider, worker = payment.provider, payment.worker
    assert provider is not None and worker is not None
    await payment.work()  # nothing of earlier tests left due
    cid, orders = await add_account(payment, "10.00"), [uuid.uuid4() for _ in range(3)]
    assert (await provider.request("PUT", "/v1/faults", {"outage": True})).status_code == 200
    try:
        for _ in range(5):  # PAYMENT_PROVIDER_BREAKER_FAILURES in the fixture
            await provider.probe()
        assert provider.state == "open"
        outages = (await provider.request("GET", "/v1/faults")).json()["injected"]["outage"]
        for oid in orders:
            await payment.deliver(event(reserved_payload(cid, "p", qty=1), oid), work=False)
        assert await worker.round() == 3  # each said to wait
        assert await worker.round() == 0  # once
        for oid in orders:
            (pending,) = await payment.emitted(oid)
            assert pending.event_type == "PaymentPending"
            assert pending.payload.reason.startswith("circuit breaker open: ")  # type: ignore[attr-defined]
        rows = await payment.rows(
            "SELECT status, attempts, nothing_done_calls, waiting_since IS NOT NULL AS waits,"
            " next_attempt_at > now() AS later FROM payments WHERE order_id = ANY(:o)",
            o=orders,
        )
        assert [(r.status, r.attempts, r.nothing_done_calls, r.waits, r.later) for r in rows] == [
            ("PENDING", 1, 1, True, True)
        ] * 3
        # the open breaker sent nothing
        assert (await provider.request("GET", "/v1/faults")).json()["injected"]["outage"] == outages
    finally:
        assert (await provider.request("PUT", "/v1/faults", {})).status_code == 200
    await asyncio.sleep(provider.retry_after() + 1.3)  # the recovery, and the payments' backoff
    await payment.work()  # the probe charges one, and the closed breaker the others
    assert provider.state == "closed"
    for oid in orders:
        assert [e.event_type for e in await payment.emitted(oid)] == ["PaymentPending", "PaymentCompleted"]
    assert await balance_of(payment, cid) == Decimal("2.50")
