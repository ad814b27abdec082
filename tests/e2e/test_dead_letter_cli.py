"""``sagactl dlq`` against the running services: list, show, discard, replay."""

from __future__ import annotations

import json
import uuid

from sagastack.system import System
from tests.e2e.conftest import sagactl
from tests.e2e.test_faults import consumed, wait_until


def test_list_show_discard_and_replay_dead_letters(system: System) -> None:
    marker = uuid.uuid4().hex[:8]
    before = consumed(system, "payment_svc", "dead_lettered")
    # a v1 InventoryReserved does not exist: no upcaster, so payment dead-letters it
    bad = {
        "event_id": str(uuid.uuid4()),
        "event_type": "InventoryReserved",
        "schema_version": 0,
        "marker": marker,
    }
    system.publish(
        [("inventory.events", marker.encode(), json.dumps(bad).encode())], signed_by="inventory_svc"
    )
    wait_until(lambda: consumed(system, "payment_svc", "dead_lettered") > before, 30, "dead letter")

    listed = sagactl(system, "dlq", "list", "--service", "payment")
    assert listed.returncode == 0, listed.stderr
    line = next(
        ln for ln in listed.stdout.splitlines() if "InventoryReserved" in ln and "schema_version" in ln
    )
    letter_id = line.split("│")[2].strip()

    shown = sagactl(system, "dlq", "show", "payment", letter_id)
    assert shown.returncode == 0, shown.stderr
    assert marker in shown.stdout and "inventory.events" in shown.stdout

    replayed = sagactl(system, "dlq", "replay", "payment", letter_id)
    assert replayed.returncode == 1 and "failed again" in replayed.stderr  # still unreadable

    discarded = sagactl(system, "dlq", "discard", "payment", letter_id)
    assert discarded.returncode == 0 and "DISCARDED" in discarded.stdout
    again = sagactl(system, "dlq", "discard", "payment", letter_id)
    assert again.returncode == 1 and "already DISCARDED" in again.stderr
    assert letter_id not in {
        ln.split("│")[2].strip()
        for ln in sagactl(system, "dlq", "list", "--service", "payment").stdout.splitlines()
        if ln.count("│") > 3
    }
    missing = sagactl(system, "dlq", "show", "payment", "999999999")
    assert missing.returncode == 1 and "404" in missing.stderr


def test_sagactl_says_clearly_when_a_service_is_unreachable(system: System) -> None:
    result = sagactl(system, "--payment-url", "http://127.0.0.1:9", "dlq", "list", "--service", "payment")
    assert result.returncode == 2 and "cannot reach" in result.stderr
