"""``sagactl dlq`` against the running services: list, show, discard, replay."""

from __future__ import annotations

import json
import uuid

import psycopg

from sagastack.system import System
from tests.e2e.conftest import sagactl
from tests.e2e.test_faults import consumed
from tests.polling import wait_until


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
    assert "replay it once the cause is fixed, or discard it" in replayed.stderr  # what next

    discarded = sagactl(system, "dlq", "discard", "payment", letter_id)
    # which service's letter it was (a newcomer trial: "dead letter 1: DISCARDED")
    assert (discarded.returncode, discarded.stdout) == (0, f"payment's dead letter {letter_id}: DISCARDED\n")
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
    assert result.returncode == 3 and "cannot reach" in result.stderr


def test_a_record_published_as_it_is_is_a_dead_letter_with_its_reason(system: System) -> None:
    """``sagactl publish``: what anyone who can write to a topic may send, sent as it is
    (an operator trial found no way in the README but the broker's own console tools,
    which the embedded Tansu does not have). Unsigned, it is a dead letter of inventory's,
    which shows the type its header names and why."""
    marker = uuid.uuid4().hex[:8]
    sent = sagactl(
        system,
        "publish",
        "orders.events",
        "--key",
        marker,
        "-H",
        "event_type=OrderCreated",
        "--value",
        "{not json",
        "--bootstrap",
        system.bootstrap,
    )
    assert sent.returncode == 0, sent.stderr
    words = sent.stdout.split()  # sent to orders.events partition P offset O
    assert words[:3] == ["sent", "to", "orders.events"], sent.stdout
    partition, offset = int(words[4]), int(words[6])

    def letter() -> tuple[str, ...] | None:
        with psycopg.connect(system.database_urls["inventory_svc"]) as conn:
            row = conn.execute(
                "SELECT id, reason FROM dead_letters WHERE source_topic = 'orders.events'"
                " AND source_partition = %s AND source_offset = %s AND key = %s",
                (partition, offset, marker.encode()),
            ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    wait_until(lambda: letter() is not None, 30, "inventory's dead letter")
    letter_id, reason = letter() or ("", "")
    assert reason.startswith("bad_signature"), reason
    shown = sagactl(system, "dlq", "show", "inventory", letter_id)
    assert shown.returncode == 0, shown.stderr
    assert "OrderCreated" in shown.stdout and "bad_signature" in shown.stdout

    refused = sagactl(system, "publish", "orders.events", "-H", "no-equals-sign", "--value", "x")
    assert refused.returncode == 2 and "is not NAME=VALUE" in refused.stderr
    # a misspelt topic is not made on first use (Tansu would), nor a huge body blamed on the broker
    misspelt = sagactl(system, "publish", "order.events", "--value", "x", "--bootstrap", system.bootstrap)
    assert misspelt.returncode == 2 and "the broker has no topic 'order.events'" in misspelt.stderr
    assert "orders.events" in misspelt.stderr
    huge = sagactl(system, "publish", "orders.events", "--bootstrap", system.bootstrap, stdin="x" * 2_000_000)
    assert huge.returncode == 2 and "is larger than the Kafka client sends" in huge.stderr, huge.stderr
