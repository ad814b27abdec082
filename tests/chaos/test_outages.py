"""Dependencies going away: services say so on /health/ready, keep every event, and
recover by themselves. Runs its own system, since it takes the database and broker down."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from sagastack.client import SagaClient
from sagastack.system import SERVICES, System
from tests.e2e.test_faults import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def system(run_root: Path) -> Iterator[System]:
    with System(run_root / "outages", free_ports=True, fresh=True) as running:
        yield running


def readiness(system: System) -> dict[str, tuple[int, Any]]:
    out = {}
    for name in SERVICES:
        r = httpx.get(f"{system.url(name)}/health/ready", timeout=5)
        out[name] = (r.status_code, r.json())
    return out


def all_ready_answer(system: System, code: int, timeout: float, what: str) -> dict[str, Any]:
    """Wait until every service's /health/ready answers ``code``; return their bodies."""
    wait_until(lambda: all(c == code for c, _ in readiness(system).values()), timeout, what)
    return {name: body for name, (_, body) in readiness(system).items()}


def test_database_outage_not_ready_then_resumes_without_losing_the_order(system: System) -> None:
    client = SagaClient(system.url("order_svc"), system.url("inventory_svc"), system.url("payment_svc"))
    client.put_product("outage-p", "p", Decimal("3.00"), 5)
    client.put_account("outage-c", Decimal("10.00"))
    order_id = client.place_order("outage-c", {"outage-p": 1})
    assert system.postgres is not None
    system.postgres.pause()
    try:
        bodies = all_ready_answer(system, 503, 30, "every service not ready while the database is down")
        for body in bodies.values():
            assert body["checks"]["database"]["ok"] is False
            assert body["checks"]["broker"]["ok"] is True  # it names what is wrong
        # liveness is not readiness: the processes are fine and must not be restarted
        for name in SERVICES:
            assert httpx.get(f"{system.url(name)}/health/live").status_code == 200
    finally:
        system.pids.add("postgres", system.postgres.resume())
    all_ready_answer(system, 200, 60, "every service ready again by itself")
    # the order placed just before the outage finishes, and new orders work
    assert client.wait_for_events(order_id, {"InventoryCommitted"}, timeout=60)["status"] == "APPROVED"
    second = client.place_order("outage-c", {"outage-p": 1})
    assert client.wait_for_events(second, {"InventoryCommitted"}, timeout=60)["status"] == "APPROVED"
    assert client.account("outage-c")["balance"] == "4.00"
    client.close()


def test_broker_outage_makes_every_service_not_ready(system: System) -> None:
    """Last in this module: the embedded broker keeps topics in memory, so it does not
    come back with its data (docs/design.md §2); a real Kafka cluster does."""
    assert system.broker is not None
    system.broker.stop()
    bodies = all_ready_answer(system, 503, 60, "every service not ready while the broker is down")
    for body in bodies.values():
        assert body["checks"]["broker"]["ok"] is False
        assert body["checks"]["database"]["ok"] is True
