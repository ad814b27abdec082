"""Bad conditions: redelivered events, poison messages, a crash between commit and publish."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from decimal import Decimal
from pathlib import Path

import httpx
import psycopg
import pytest

from order_svc.placing import stored_idempotency_key
from sagastack import invariants
from sagastack.client import SagaClient
from sagastack.system import BrokerKind, System
from tests.e2e.conftest import UniqueIds, seed
from tests.polling import wait_until


def metric_sum(system: System, service: str, name: str, **labels: str) -> int:
    """Sum of the samples ``name`` with ``labels`` on the service's /metrics (read with the
    reference Prometheus parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = system.http.get(f"{system.url(service)}/metrics").text
    return int(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )
    )


def consumed(system: System, service: str, outcome: str) -> int:
    """Sum of saga_events_consumed_total{outcome=...} on the service's /metrics."""
    return metric_sum(system, service, "saga_events_consumed_total", outcome=outcome)


def outbox_of(system: System, service: str, order_id: str) -> list[tuple[str, bytes | None, bytes]]:
    """The records ``service`` published for the order, as ``(topic, key, value)``."""
    url = system.database_urls[service]
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT topic, key, value FROM outbox WHERE key = %s ORDER BY id", (order_id.encode(),)
        ).fetchall()
    return [(t, bytes(k) if k else None, bytes(v)) for t, k, v in rows]


def test_every_event_of_a_saga_published_again_has_no_second_effect(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    products, customers = seed(client, uid, {"dup": ("4.00", 3)}, {"dana": "10.00"})
    pid, cid = products["dup"], customers["dana"]
    order_id = client.place_order(cid, {pid: 2})
    client.wait_for_events(order_id, {"InventoryCommitted"})
    assert (
        sum(len(outbox_of(system, s, order_id)) for s in ("order_svc", "inventory_svc", "payment_svc")) == 5
    )
    before = {s: consumed(system, s, "duplicate") for s in ("order_svc", "inventory_svc", "payment_svc")}
    for service in ("order_svc", "inventory_svc", "payment_svc"):  # every event twice more
        system.publish(outbox_of(system, service, order_id) * 2, signed_by=service)
    # Each service dedupes, twice each, the events it reacts to: order_svc all 3 participant
    # events (it keeps the timeline); inventory OrderCreated and OrderApproved; payment
    # InventoryReserved. Events a service has no handler for are "ignored", not counted.
    expected = {"order_svc": 6, "inventory_svc": 4, "payment_svc": 2}
    for service, n in expected.items():
        wait_until(
            lambda s=service, n=n: consumed(system, s, "duplicate") >= before[s] + n,  # type: ignore[misc]
            30,
            f"{service} saw its duplicates",
        )
    assert client.product(pid)["sold"] == 2 and client.product(pid)["available"] == 1
    assert client.account(cid)["balance"] == "2.00"
    saga = client.saga(order_id)
    assert len(saga["events"]) == 5
    found = invariants.check(system.database_urls, {pid: 3}, {cid: Decimal("10.00")}, system.provider_url)
    assert found == []


def test_a_poison_message_is_dead_lettered_and_the_saga_behind_it_completes(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    before = consumed(system, "inventory_svc", "dead_lettered")
    # signed by the topic's rightful producer: what is inside is garbage all the same
    system.publish(
        [
            ("orders.events", b"poison", b"\x00 not an event"),
            ("orders.events", b"poison", b'{"event_type": "OrderCreated", "schema_version": 1}'),
        ],
        signed_by="order_svc",
    )
    products, customers = seed(client, uid, {"after": ("1.00", 1)}, {"eve": "5.00"})
    order_id = client.place_order(customers["eve"], {products["after"]: 1})
    assert client.wait_for_events(order_id, {"InventoryCommitted"})["status"] == "APPROVED"
    wait_until(lambda: consumed(system, "inventory_svc", "dead_lettered") >= before + 2, 30, "dead letters")
    with psycopg.connect(system.database_urls["inventory_svc"]) as conn:
        reasons = [r for (r,) in conn.execute("SELECT reason FROM dead_letters WHERE key = 'poison'")]
    assert any("not an event envelope" in r for r in reasons)
    assert any("invalid OrderCreated" in r for r in reasons)


def test_killed_between_commit_and_publish_the_event_is_published_after_restart(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    products, customers = seed(client, uid, {"crash": ("2.00", 2)}, {"fay": "10.00"})
    system.stop_service("order_svc")
    system.start_service("order_svc", env={"SAGA_FAULT": "relay.before_publish"})
    with contextlib.suppress(httpx.HTTPError):  # the process may die before its answer leaves
        client.place_order(customers["fay"], {products["crash"]: 1}, idempotency_key="crash-1")
    proc = system.services["order_svc"].proc
    assert proc is not None
    try:
        assert proc.wait(30) == -signal.SIGKILL
        with psycopg.connect(system.database_urls["order_svc"]) as conn:
            ((order_id, status),) = conn.execute(
                "SELECT order_id, status FROM orders WHERE idempotency_key = %s",
                (stored_idempotency_key(customers["fay"], "crash-1"),),
            ).fetchall()
            unsent = conn.execute(
                "SELECT COUNT(*) FROM outbox WHERE key = %s AND sent_at IS NULL",
                (str(order_id).encode(),),
            ).fetchone()
        assert status == "PENDING" and unsent == (1,), "committed, never published"
        assert client.product(products["crash"])["reserved"] == 0  # nobody heard of it yet
    finally:  # whatever was found, the tests after this one need the order service
        system.start_service("order_svc", env={"SAGA_FAULT": ""})
    saga = client.wait_for_events(str(order_id), {"InventoryCommitted"})
    assert saga["status"] == "APPROVED"
    assert [e["event_type"] for e in saga["events"]].count("OrderCreated") == 1
    assert client.account(customers["fay"])["balance"] == "8.00"


def test_a_record_lost_on_the_way_to_the_pipeline_is_read_again(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    """faust-streaming can lose records between the fetcher and the stream, or stop
    delivering a partition, with no error (saga_kit.progress). Here the inventory service
    loses the first record it takes after its start (SAGA_FAULT=consumer.drop_first_record),
    as those defects do: neither processed nor acked. Its progress watch finds the
    partition behind its end with nothing processed (or the next batch past a gap), seeks
    back, and the saga completes; without the watch it waited for its deadline."""
    products, customers = seed(client, uid, {"lost": ("3.00", 2)}, {"gus": "10.00"})
    system.stop_service("inventory_svc")
    system.start_service(
        "inventory_svc", env={"SAGA_FAULT": "consumer.drop_first_record", "CONSUMER_STALL_SECONDS": "2"}
    )
    try:
        order_id = client.place_order(customers["gus"], {products["lost"]: 1})
        saga = client.wait_for_events(order_id, {"InventoryCommitted"})
        assert saga["status"] == "APPROVED"
        log = system.log_tail("inventory_svc", 400, since_start=True)
        assert "fault injection: the record at" in log, log
        assert "consumer lost records on the way" in log, log
        assert metric_sum(system, "inventory_svc", "saga_consumer_recoveries_total") >= 1
        assert client.product(products["lost"])["sold"] == 1
    finally:  # the tests after this one need the inventory service as it was
        system.start_service("inventory_svc")


def test_records_skipped_on_the_way_are_read_again_at_the_next_batch(system: System, uid: UniqueIds) -> None:
    """The gap: records of a partition skipped before the pipeline, and a later record of
    it taken. The inventory service loses the first record keyed ``key`` after its start;
    the next record with that key (the same partition) shows the gap, and the lost one is
    read again at once — long before the stall (60 s here) would have been noticed. The
    records are garbage, so each ends as a dead letter: three, one per record."""
    key = f"gap-{uid('k')}".encode()
    system.publish([("orders.events", key, b"first, before the restart")], signed_by="order_svc")
    wait_until(lambda: _dead_letters(system, key) == 1, 30, "the first record dead-lettered")
    time.sleep(2)  # its offset committed (every second): the restart reads on from there
    try:
        _lose_one_then_another(system, key, letters_after=3)
    finally:  # the tests after this one need the inventory service as it was
        system.start_service("inventory_svc")


def _dead_letters(system: System, key: bytes) -> int:
    with psycopg.connect(system.database_urls["inventory_svc"]) as conn:
        return conn.execute("SELECT COUNT(*) FROM dead_letters WHERE key = %s", (key,)).fetchone()[0]


def _lose_one_then_another(system: System, key: bytes, letters_after: int) -> None:
    """Restart the inventory service losing the first record keyed ``key``; publish that
    record, then another with the key (the same partition), and wait until both are dead
    letters, ``letters_after`` with that key in all: the lost one was read again, found
    by the gap."""
    system.stop_service("inventory_svc")
    system.start_service(
        "inventory_svc",
        env={"SAGA_FAULT": f"consumer.drop_first_record={key.decode()}", "CONSUMER_STALL_SECONDS": "60"},
    )
    system.publish([("orders.events", key, b"lost on the way")], signed_by="order_svc")
    dropped = lambda: "is dropped" in system.log_tail("inventory_svc", 400, since_start=True)  # noqa: E731
    wait_until(dropped, 30, "the record dropped")
    system.publish([("orders.events", key, b"after the gap")], signed_by="order_svc")
    wait_until(
        lambda: _dead_letters(system, key) == letters_after,
        30,
        "the lost record read again and dead-lettered",
    )
    log = system.log_tail("inventory_svc", 400, since_start=True)
    assert "consumer lost records on the way" in log and "a gap in a batch" in log, log


@pytest.mark.broker_independent  # the watch's arithmetic; a stack of its own, on the embedded broker
def test_records_lost_before_a_groups_first_commit_are_read_again(
    run_root: Path, broker_kind: BrokerKind, uid: UniqueIds
) -> None:
    """A brand-new consumer group reads a partition from its earliest offset, and has no
    committed offset there to measure a gap against: a record lost on the way in its first
    batch, with more records behind it on the partition, went unnoticed, and its saga
    waited for its deadline. The watch now asks the broker for that earliest offset. On a
    stack of its own (the shared one's groups committed on every partition long ago), the
    inventory service loses the first record keyed ``key``, the partition's first; the
    next one, its first batch there, shows the gap. Garbage, each ends as a dead letter."""
    key = f"first-{uid('k')}".encode()
    with System(run_root / "first-batch-gap", free_ports=True, fresh=True, broker_kind=broker_kind) as system:
        # nothing consumed yet from orders.events: the inventory group committed nothing there
        _lose_one_then_another(system, key, letters_after=2)
        assert metric_sum(system, "inventory_svc", "saga_consumer_recoveries_total", cause="gap") == 1


def test_transaction_markers_are_no_lost_records(system: System, uid: UniqueIds) -> None:
    """Apache Kafka gives each transaction's commit marker an offset and never delivers it:
    one-record transactions to a partition leave offsets no consumer receives, and the
    last marker sits past the last record. Taken for lost records (an attack trial), each
    batch after a marker warned of a gap and was sought back, and the trailing marker kept
    the partition "stalled" for good: the order service not ready, sought back every few
    seconds. Now the watch probes quietly, finds nothing there, and takes those offsets
    as consumed: no warning, no recovery counted, ready."""
    if system.broker_kind != "kafka":
        pytest.skip("transactions need Apache Kafka (the embedded Tansu has none)")
    import asyncio

    from aiokafka import AIOKafkaProducer

    system.stop_service("order_svc")
    system.start_service("order_svc", env={"CONSUMER_STALL_SECONDS": "2"})
    try:

        async def transactions(n: int) -> None:
            producer = AIOKafkaProducer(
                bootstrap_servers=system.bootstrap,
                transactional_id=uid("txn"),
                **system.kafka_security.client_kwargs(),
            )
            await producer.start()
            try:
                for i in range(n):
                    async with producer.transaction():
                        await producer.send_and_wait(
                            "orders.commands", key=f"txn-{i}".encode(), value=b"not a command", partition=0
                        )
            finally:
                await producer.stop()

        before = consumed(system, "order_svc", "dead_lettered")
        asyncio.run(transactions(3))
        wait_until(lambda: consumed(system, "order_svc", "dead_lettered") >= before + 3, 30, "consumed")
        time.sleep(10)  # five stall periods past the last record
        log = system.log_tail("order_svc", 600, since_start=True)
        assert "consumer stalled" not in log and "consumer lost records" not in log, log
        assert metric_sum(system, "order_svc", "saga_consumer_recoveries_total") == 0
        ready = system.http.get(f"{system.url('order_svc')}/health/ready")
        assert ready.status_code == 200, ready.text
    finally:  # the tests after this one need the order service as it was
        system.start_service("order_svc")


def test_a_service_whose_port_is_taken_says_so_and_exits(system: System) -> None:
    """An operator who starts a second copy on a port in use gets an error and exit code 1
    within seconds, not a process that hangs until killed (uvicorn exits through the event
    loop, past the runner's stop, and faust's consumer thread kept the process alive)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        system.start_service("inventory_svc#2", wait=False, env={"INVENTORY_HTTP_PORT": str(port)})
        process = system.services["inventory_svc#2"].proc
        assert process is not None
        try:
            code = process.wait(timeout=60)
        finally:
            said = system.log_tail("inventory_svc#2")
            system.stop_service("inventory_svc#2", signal.SIGKILL)
            del system.services["inventory_svc#2"]
    assert code == 1, said
    assert f"inventory_svc cannot start: its HTTP port 127.0.0.1:{port} could not be bound" in said
    assert "listening on" not in said and "Traceback" not in said  # it said both once
    # the first instance is unaffected
    assert httpx.get(f"{system.url('inventory_svc')}/health/live").status_code == 200


def test_a_service_stopped_while_its_consumers_start_against_a_broker_gone_away_stops(
    system: System,
) -> None:
    """SIGTERM must stop a service whose faust consumers are starting while the broker stops
    answering (paused just after the checks before them passed): the start waited for the
    broker, through the SIGTERM, for 40 minutes (found while testing the supervisor)."""
    key = "inventory_svc#2"
    system.start_service(key, wait=False)
    sp = system.services[key]
    assert sp.proc is not None
    brokers = system.broker_pids()
    paused = False
    try:
        end = time.monotonic() + 60
        while "[^--_ConsumerThread]: Starting..." not in system.log_tail(key, 200, since_start=True):
            assert sp.proc.poll() is None and time.monotonic() < end, system.log_tail(key)
            time.sleep(0.002)
        for pid in brokers.values():  # the broker answers nothing from here on
            os.kill(pid, signal.SIGSTOP)
        paused = True
        time.sleep(3)
        sp.proc.send_signal(signal.SIGTERM)
        code = sp.proc.wait(timeout=60)  # the start waited for ever; a stop gives up each step after 5 s
    finally:
        if paused:
            for pid in brokers.values():
                os.kill(pid, signal.SIGCONT)
        said = system.log_tail(key)
        system.stop_service(key, signal.SIGKILL)
        del system.services[key]
    assert code == 0, said
    assert "Traceback" not in said, said
