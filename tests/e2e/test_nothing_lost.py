"""Nothing lost, whatever arrives: the inputs that once lost records, crashed agents,
left a refund undone or answered 500 — each against the running system."""

from __future__ import annotations

import uuid
from decimal import Decimal

import httpx
import psycopg
import pytest

from events.values import MAX_MONEY
from sagastack.client import SagaClient
from sagastack.system import System
from tests.e2e.conftest import UniqueIds, sagactl, seed
from tests.polling import wait_until
from tests.wire import NotUtf8Name, python_batches

Headers = list[tuple[str, bytes | None]]


def produce(system: System, topic: str, value: bytes, headers: Headers, key: bytes = b"lost?") -> None:
    """One record signed by the topic's rightful producer: it passes the signature check, so
    what is tested is what comes after."""
    producer = {"orders.events": "order_svc", "payment.events": "payment_svc"}[topic]
    system.publish([(topic, key, value)], signed_by=producer, headers=headers)


def letters_from(system: System, service: str, value: bytes) -> list[tuple[int, str]]:
    with psycopg.connect(system.database_urls[service]) as conn:
        return [
            (i, r) for i, r in conn.execute("SELECT id, reason FROM dead_letters WHERE value = %s", (value,))
        ]


def ready(system: System, service: str) -> int:
    return httpx.get(f"{system.url(service)}/health/ready", timeout=5).status_code


def test_records_with_null_or_binary_headers_are_dead_lettered_not_lost(system: System) -> None:
    """Failing inputs 1 and 2: a null header value, a NUL byte in a header."""
    marker = uuid.uuid4().hex.encode()
    produce(system, "orders.events", b"x" + marker, [("x-null", None)])
    produce(system, "orders.events", b"garbage" + marker, [("x-note", b"a\x00b")])
    for service in ("inventory_svc", "payment_svc"):
        for value in (b"x" + marker, b"garbage" + marker):
            wait_until(
                lambda s=service, v=value: letters_from(system, s, v) != [], 30, f"{service}: {value!r}"
            )
            ((letter_id, reason),) = letters_from(system, service, value)
            assert "not an event envelope" in reason
            shown = system.http.get(f"{system.url(service)}/dead-letters/{letter_id}").json()
            assert shown["headers"][0]["key"] in ("x-null", "x-note")
        assert ready(system, service) == 200


def test_a_huge_nested_letter_leaves_the_dead_letter_tooling_working(system: System) -> None:
    """Failing input 4: ``b"[" * 60000``."""
    poison = b"[" * 60000 + uuid.uuid4().hex.encode()
    produce(system, "orders.events", poison, [])
    for service in ("inventory_svc", "payment_svc"):
        wait_until(lambda s=service: letters_from(system, s, poison) != [], 30, f"{service} dead-letters it")
        ((letter_id, _),) = letters_from(system, service, poison)
        base = f"{system.url(service)}/dead-letters"
        for status in ("PENDING", "ALL", "DISCARDED", "REPLAYED"):
            assert system.http.get(base, params={"status": status}).status_code == 200
        shown = system.http.get(f"{base}/{letter_id}").json()
        assert shown["value"]["size"] == len(poison) and shown["value"]["truncated"]
        assert system.http.get(f"{base}/{letter_id}/value").content == poison
        assert system.http.post(f"{base}/{letter_id}/discard").json()["status"] == "DISCARDED"
    listed = sagactl(system, "dlq", "list", "--status", "ALL")
    assert listed.returncode == 0, listed.stdout + listed.stderr


def test_a_refund_is_owed_however_high_the_balance_was_set_since(client: SagaClient, uid: UniqueIds) -> None:
    """Failing input 3: approved at 1.00, balance then set to the largest Money, cancelled."""
    products, customers = seed(client, uid, {"cheap": ("1.00", 5)}, {"rich": "10.00"})
    order_id = client.place_order(customers["rich"], {products["cheap"]: 1})
    assert client.wait_for_events(order_id, {"InventoryCommitted"})["status"] == "APPROVED"
    client.put_account(customers["rich"], MAX_MONEY)
    client.cancel(order_id)
    saga = client.wait_for_events(order_id, {"PaymentRefunded", "InventoryReleased"})
    assert saga["explanation"]["settled"] is True
    assert Decimal(client.account(customers["rich"])["balance"]) == MAX_MONEY + Decimal("1.00")


def test_requests_that_once_answered_500_get_a_reason(system: System) -> None:
    """Failing input 5: a bare ``NaN`` body, a non-ASCII digit in ``Last-Event-ID``."""
    with httpx.Client(
        base_url=system.url("payment_svc"), headers=system.auth()
    ) as http:  # one keep-alive connection
        nan = http.put(
            "/accounts/nan-test", content=b'{"balance": NaN}', headers={"content-type": "application/json"}
        )
        assert nan.status_code == 422 and nan.json()["detail"][0]["loc"] == ["body", "balance"]
        assert http.get("/accounts").status_code == 200  # the connection survived
    digit = system.http.get(
        f"{system.url('order_svc')}/saga-events/stream",
        headers=[(b"Last-Event-ID", "²".encode())],
        timeout=5,
    )
    assert digit.status_code == 422 and "Last-Event-ID" in digit.text


def test_a_record_the_pipeline_cannot_take_is_not_acked_and_comes_back_after_the_fix(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    """A bug in the pipeline itself (simulated): readiness names the stuck record and the
    partition waits; the fixed build gets the same record again and applies it once."""
    products, customers = seed(client, uid, {"held": ("3.00", 2)}, {"hal": "10.00"})
    system.stop_service("payment_svc")
    # not ready: it cannot take a single record
    system.start_service("payment_svc", env={"SAGA_FAULT": "consumer.pipeline_error"}, wait=False)
    try:
        order_id = client.place_order(customers["hal"], {products["held"]: 1}, deadline_seconds=600)
        url = f"{system.url('payment_svc')}/health/ready"

        def stuck() -> bool:
            try:
                check = system.http.get(url).json()["checks"]["consumers"]  # the reason: an operator's
            except (httpx.HTTPError, ValueError, KeyError):
                return False  # still starting
            return "consumer stuck" in check.get("error", "") and "consumer.pipeline_error" in check["error"]

        wait_until(stuck, 60, "payment reports the stuck batch")
        assert httpx.get(url).status_code == 503
        assert client.order(order_id)["status"] == "PENDING"
    finally:  # the "fix" is deployed
        system.stop_service("payment_svc")
        system.start_service("payment_svc", env={"SAGA_FAULT": ""})
    saga = client.wait_for_events(order_id, {"InventoryCommitted"})
    assert saga["status"] == "APPROVED"
    assert [e["event_type"] for e in saga["events"]].count("PaymentCompleted") == 1
    assert client.account(customers["hal"])["balance"] == "7.00"


def test_the_cli_shows_and_replays_letters_whatever_their_reason_or_body(system: System) -> None:
    """A reason quoting markup (``[/x]``) and a body nested deeper than a JSON pretty-printer
    goes: the CLI prints both as they are, and a failed replay is a one-line error."""
    marker = uuid.uuid4().hex
    markup = b'{"event_type": "[/x]", "schema_version": 1, "m": "' + marker.encode() + b'"}'
    nested = b"[" * 2000 + b"]" * 2000 + b" " + marker.encode()
    produce(system, "payment.events", markup, [])
    produce(system, "payment.events", nested, [])
    for value in (markup, nested):
        wait_until(
            lambda v=value: letters_from(system, "order_svc", v) != [], 30, "order_svc dead-letters it"
        )
    ((markup_id, reason),) = letters_from(system, "order_svc", markup)
    assert "[/x]" in reason
    replayed = sagactl(system, "dlq", "replay", "order", str(markup_id))
    assert replayed.returncode == 1 and "Traceback" not in replayed.stderr
    assert "[/x]" in replayed.stderr
    ((nested_id, _),) = letters_from(system, "order_svc", nested)
    shown = sagactl(system, "dlq", "show", "order", str(nested_id))
    assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr


def test_invented_event_types_add_no_metric_series(system: System) -> None:
    """Anyone who can write to a topic could add a metric series per ``event_type`` header
    they invented: first where a service ignores such records (consumed), then where the
    order service, which reads every type on ``payment.events`` for its timeline,
    dead-letters them and publishes their copies (produced). Both count them under
    ``<unknown>`` (saga_kit.labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    invented = [f"Evil{uuid.uuid4().hex}" for _ in range(3)]
    before = dead_letter_count(system)
    for name in invented:
        system.publish([("payment.events", b"k", b"{}")], headers=[("event_type", name.encode())])
    wait_until(lambda: dead_letter_count(system) >= before + 3, 30, "the order service dead-letters them")

    def produced_unknown() -> float:
        text = system.http.get(f"{system.url('order_svc')}/metrics").text
        return sum(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "saga_events_produced_total" and s.labels.get("event_type") == "<unknown>"
        )

    wait_until(lambda: produced_unknown() >= 3, 30, "their copies published, counted as <unknown>")
    for service in ("order_svc", "inventory_svc"):
        text = system.http.get(f"{system.url(service)}/metrics").text
        assert not any(name in text for name in invented), service


def dead_letter_count(system: System) -> int:
    with psycopg.connect(system.database_urls["order_svc"]) as conn:
        (n,) = conn.execute("SELECT count(*) FROM dead_letters").fetchone() or (0,)
    return int(n)


def unreadable_letters(system: System, service: str) -> list[str]:
    return [reason for _, reason in unreadable_ids(system, service)]


def unreadable_ids(system: System, service: str) -> list[tuple[int, str]]:
    with psycopg.connect(system.database_urls[service]) as conn:
        rows = conn.execute(
            "SELECT id, reason FROM dead_letters WHERE reason LIKE 'unreadable_record:%%' ORDER BY id"
        ).fetchall()
    return [(letter_id, reason) for (letter_id, reason) in rows]


def test_a_record_the_kafka_client_cannot_read_is_dead_lettered_and_the_services_go_on(
    system: System, client: SagaClient, uid: UniqueIds, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A header's name that is not UTF-8 made aiokafka's reader raise before the pipeline saw
    the record: inventory and payment crashed, and again at every start, fetching it again;
    on orders.commands the order service did (an attack trial: one record, all three down)."""
    before = {s: len(unreadable_letters(system, s)) for s in ("inventory_svc", "payment_svc", "order_svc")}
    python_batches(monkeypatch)
    system.publish([("orders.events", b"k", b"z")], headers=[(NotUtf8Name(b"x\xffy"), b"v")])
    for service in ("inventory_svc", "payment_svc"):
        more = lambda s=service: len(unreadable_letters(system, s)) > before[s]  # noqa: E731
        wait_until(more, 60, f"{service} dead-letters it")
        letter_id, reason = unreadable_ids(system, service)[-1]
        assert "a header's name in it" in reason and "orders.events partition" in reason, reason
        assert ready(system, service) == 200
        # its key and body are not known, not absent: said so, not a null key and a tombstone
        shown = system.http.get(f"{system.url(service)}/dead-letters/{letter_id}").json()
        assert shown["unread"] is True and (shown["key"], shown["value"]) == (None, None)
        # the pipeline's marker is no header the record held (it was listed: an attack trial)
        assert (shown["headers"], shown["headers_total"]) == ([], 0)
        told = sagactl(system, "dlq", "show", service, str(letter_id))
        assert told.returncode == 0, told.stderr
        assert told.stdout.count("(not read: the Kafka client could not read the record") == 3, told.stdout
        assert "(null)" not in told.stdout and "unreadable " not in told.stdout, told.stdout
    # the order service's commands too, and every service still serves a saga through
    system.publish([("orders.commands", b"k", b"z")], headers=[(NotUtf8Name(b"\xed\xa0\x80"), b"v")])
    products, customers = seed(client, uid, {"pen": ("1.00", 5)}, {"una": "10.00"})
    order_id = client.place_order(customers["una"], {products["pen"]: 1})
    assert client.wait_for_events(order_id, {"InventoryCommitted"})["status"] == "APPROVED"
    more = lambda: len(unreadable_letters(system, "order_svc")) > before["order_svc"]  # noqa: E731
    wait_until(more, 60, "order_svc dead-letters it")
