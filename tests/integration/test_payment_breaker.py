"""The payment provider's circuit breaker, with the simulator in process: it opens after
repeated failures, fails fast while open, and closes once the provider is back — even
when no payment is waiting to be the probe."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.integration.conftest import ServiceUnderTest


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
