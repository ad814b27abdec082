"""The runtime starts the card processor's simulator beside the services: the payment
service is told its URL, its faults are set through ``System``, it survives a crash
like a service, and nothing of it outlives ``System.stop``."""

from __future__ import annotations

import json
import signal
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from sagastack.system import PROVIDER, System

pytestmark = pytest.mark.e2e


def recorded(system: System) -> dict[str, Any]:
    """The run directory's pid file: what a later run would stop if this one died."""
    pids: dict[str, Any] = json.loads((system.run_dir / "pids.json").read_text())
    return pids


def test_system_runs_the_provider_and_sets_its_faults(system: System) -> None:
    url = system.provider_url
    assert system.provider is not None and url == system.url(PROVIDER)
    assert url.startswith("http://127.0.0.1:")
    assert system.services["payment_svc"].env["PAYMENT_PROVIDER_URL"] == url
    assert httpx.get(f"{url}/health/ready").status_code == 200
    assert PROVIDER in recorded(system) and PROVIDER in system.stack_pids()

    account, key = f"acct-{uuid.uuid4().hex[:8]}", f"charge-{uuid.uuid4().hex[:8]}"
    assert httpx.put(f"{url}/v1/accounts/{account}", json={"balance": "10.00"}).status_code == 200
    body = {"account_id": account, "amount": "4.00", "reference": "e2e"}
    try:
        view = system.provider_faults(outage=True)
        assert view["outage"] is True
        r = httpx.post(f"{url}/v1/charges", json=body, headers={"Idempotency-Key": key})
        assert (r.status_code, r.json()["error"]) == (503, "unavailable")
        assert system.provider_fault_counts()["injected"]["outage"] >= 1
    finally:
        assert system.provider_faults()["outage"] is False  # every fault off for the other tests
    assert httpx.post(f"{url}/v1/charges", json=body, headers={"Idempotency-Key": key}).status_code == 201

    # a crash, then a restart on the same port with the ledger kept
    assert system.provider.proc is not None
    old_pid = system.provider.proc.pid
    assert system.kill_provider() == -signal.SIGKILL
    assert PROVIDER not in recorded(system)
    system.start_provider()
    assert system.provider_url == url
    assert system.provider.proc is not None and system.provider.proc.pid != old_pid
    assert recorded(system)[PROVIDER][0] == system.provider.proc.pid
    assert httpx.get(f"{url}/v1/charges/{key}").json()["status"] == "succeeded"
    assert httpx.get(f"{url}/v1/accounts/{account}").json()["balance"] == "6.00"


def test_nothing_of_the_provider_outlives_stop(system: System, run_root: Path) -> None:
    """A second System that runs only the simulator (on the first one's database)."""
    alone = System(run_root / "provider-alone", free_ports=True)
    alone.provider_database_url = system.provider_database_url
    try:
        alone.start_provider()
        assert alone.provider is not None and alone.provider.proc is not None
        proc = alone.provider.proc
        assert recorded(alone)[PROVIDER][0] == proc.pid
    finally:
        alone.stop()
    assert proc.poll() is not None
    assert recorded(alone) == {}
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{alone.provider_url}/health/live")
