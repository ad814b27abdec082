"""``sagactl`` answers "why was order X rejected, and was everything compensated?" alone."""

from __future__ import annotations

import re

from sagastack.client import SagaClient
from sagastack.system import System
from tests.e2e.conftest import UniqueIds, sagactl, seed


def test_why_was_it_rejected_and_was_it_compensated(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    products, customers = seed(client, uid, {"oar": ("9.00", 4)}, {"lea": "5.00"})
    order_id = client.place_order(customers["lea"], {products["oar"]: 1})
    client.wait_for_events(order_id, {"InventoryReleased"})

    shown = sagactl(system, "saga", order_id)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    out = shown.stdout
    assert "REJECTED" in out and "payment was declined (insufficient funds)" in out
    assert "✓ give reserved or sold stock back" in out
    assert re.search(r"compensated\s+yes", out)
    # the causation tree: the release hangs under the PaymentFailed that caused it
    lines = out.splitlines()
    failed = next(i for i, ln in enumerate(lines) if "PaymentFailed payment_svc" in ln)
    released = next(i for i, ln in enumerate(lines) if "InventoryReleased inventory_svc" in ln)
    assert released > failed
    assert lines[released].index("InventoryReleased") > lines[failed].index("PaymentFailed")
    assert "Δ" in lines[released] and "ms" in lines[released]

    listed = sagactl(system, "orders", "--status", "rejected", "--limit", "200", "-o", "wide")
    assert listed.returncode == 0 and order_id in listed.stdout

    stock = sagactl(system, "stock")
    assert products["oar"] in stock.stdout
    balances = sagactl(system, "balances")
    assert customers["lea"] in balances.stdout and "5.00" in balances.stdout


def test_tail_prints_events_as_they_are_recorded(system: System, client: SagaClient, uid: UniqueIds) -> None:
    tail = sagactl(system, "tail", "--from-start", "--count", "3")
    assert tail.returncode == 0, tail.stdout + tail.stderr
    assert len([ln for ln in tail.stdout.splitlines() if ln.strip()]) == 3


def test_unknown_order_is_a_clear_error(system: System) -> None:
    result = sagactl(system, "saga", "00000000-0000-0000-0000-000000000000")
    assert result.returncode == 1 and "404" in result.stderr and result.stdout == ""
