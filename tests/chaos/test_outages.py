"""Dependencies going away: services say so on /health/ready, keep every event, and
recover by themselves. Runs its own system (on ``--broker``), since it takes the database
and broker down.

The broker's recovery is tested on Apache Kafka only: it keeps its log on disk, so a
crashed node comes back with its topics and committed offsets. The embedded Tansu keeps
everything in memory and comes back empty (docs/design.md §2)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from sagastack.apache_kafka import ApacheKafka
from sagastack.system import SERVICES, BrokerKind, System
from tests.e2e.test_faults import metric_sum
from tests.polling import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def system(run_root: Path, broker_kind: BrokerKind) -> Iterator[System]:
    with System(run_root / "outages", free_ports=True, fresh=True, broker_kind=broker_kind) as running:
        yield running


def kafka_of(system: System) -> ApacheKafka:
    """The system's Apache Kafka; skips the test on Tansu, which cannot come back with its data."""
    if not isinstance(system.broker, ApacheKafka):
        pytest.skip(
            "broker recovery needs a broker that keeps its data across a restart (--broker kafka);"
            " the embedded Tansu keeps topics and offsets in memory (docs/design.md §2)"
        )
    return system.broker


def readiness(system: System) -> dict[str, tuple[int, Any]]:
    out = {}
    for name in SERVICES:
        r = system.http.get(f"{system.url(name)}/health/ready", timeout=5)  # the reasons: an operator's
        out[name] = (r.status_code, r.json())
    return out


def all_ready_answer(system: System, code: int, timeout: float, what: str) -> dict[str, Any]:
    """Wait until every service's /health/ready answers ``code``; return their bodies."""
    wait_until(lambda: all(c == code for c, _ in readiness(system).values()), timeout, what)
    return {name: body for name, (_, body) in readiness(system).items()}


def test_database_outage_not_ready_then_resumes_without_losing_the_order(system: System) -> None:
    client = system.client()
    client.put_product("outage-p", "p", Decimal("3.00"), 5)
    client.put_account("outage-c", Decimal("10.00"))
    order_id = client.place_order("outage-c", {"outage-p": 1})
    assert system.postgres is not None
    feed_url = f"{system.url('order_svc')}/saga-events/stream"
    # the live feed, opened before the outage, must carry on after it
    with client.http.stream("GET", feed_url, timeout=httpx.Timeout(10, read=60)) as feed:
        assert feed.status_code == 200
        lines = feed.iter_lines()  # a keep-alive comment comes at least every second
        said: list[str] = []
        system.postgres.pause()
        try:
            # the feed says so while the outage lasts (read now: an outage shorter than the
            # hub's poll interval went unnoticed by the hub, and the assertion with it)
            deadline = time.monotonic() + 30
            for line in lines:
                said.append(line)
                if line == ": the database is away; waiting for it" or time.monotonic() > deadline:
                    break
            assert ": the database is away; waiting for it" in said, said[-5:]
            bodies = all_ready_answer(system, 503, 30, "every service not ready while the database is down")
            for body in bodies.values():
                assert body["checks"]["database"]["ok"] is False
                assert body["checks"]["broker"]["ok"] is True  # it names what is wrong
            # liveness is not readiness: the processes are fine and must not be restarted
            for name in SERVICES:
                assert httpx.get(f"{system.url(name)}/health/live").status_code == 200
            # a request that needs the database is told to come back (503, Retry-After), never
            # answered 500; a POST retried with the same key after the outage places one order
            body = {"customer_id": "outage-c", "items": [{"product_id": "outage-p", "quantity": 1}]}
            key = {"Idempotency-Key": "outage-retried"}
            requests = [
                ("POST", f"{system.url('order_svc')}/orders", body, key),
                ("GET", f"{system.url('order_svc')}/orders/{order_id}", None, {}),
                ("GET", f"{system.url('inventory_svc')}/products/outage-p", None, {}),
                ("GET", f"{system.url('payment_svc')}/payments/{order_id}", None, {}),
                # routes that pass another server's 503 on: the provider's, a service's
                ("GET", f"{system.url('payment_svc')}/accounts/outage-c", None, {}),
                ("GET", f"{system.url('order_svc')}/dashboard/api/stock", None, {}),
            ]
            for method, url, json_body, headers in requests:
                r = client.http.request(method, url, json=json_body, headers=headers)
                assert r.status_code == 503, (method, url, r.status_code, r.text)
                assert r.json()["reason"] == "service_unavailable", r.text
                assert int(r.headers["Retry-After"]) >= 1
            # a scrape still answers, without the figures the database would have given
            for name in SERVICES:
                scrape = client.http.get(f"{system.url(name)}/metrics")
                assert scrape.status_code == 200, (name, scrape.text)
                assert f'saga_metrics_database_up{{service="{name}"}} 0.0' in scrape.text
                assert "saga_outbox_backlog{" not in scrape.text
        finally:
            system.pids.add("postgres", system.postgres.resume())
        all_ready_answer(system, 200, 60, "every service ready again by itself")
        for name in SERVICES:
            scrape = client.http.get(f"{system.url(name)}/metrics")
            assert f'saga_metrics_database_up{{service="{name}"}} 1.0' in scrape.text
        # a 503 did nothing, so it leaves no audit entry to fail writing; an outage is
        # warnings that say what is retried, never a traceback (a connection the database
        # dropped mid-pipeline once made the pool log one: saga_kit.db.discard_if_unusable)
        assert "audit entry not written" not in (system.run_dir / "logs" / "order_svc.log").read_text()
        for name in SERVICES:
            logs = (system.run_dir / "logs" / f"{name}.log").read_text()
            assert "Traceback" not in logs, (name, [ln for ln in logs.splitlines() if "Traceback" in ln])
        # the order placed just before the outage finishes, and new orders work
        assert client.wait_for_events(order_id, {"InventoryCommitted"}, timeout=60)["status"] == "APPROVED"
        second = client.place_order("outage-c", {"outage-p": 1}, idempotency_key="outage-retried")
        assert client.place_order("outage-c", {"outage-p": 1}, idempotency_key="outage-retried") == second
        assert client.wait_for_events(second, {"InventoryCommitted"}, timeout=60)["status"] == "APPROVED"
        assert client.account("outage-c")["balance"] == "4.00"
        deadline = time.monotonic() + 60
        for line in lines:
            said.append(line)
            if second in line or time.monotonic() > deadline:
                break
        assert any(second in line for line in said), said[-5:]
    client.close()


def test_broker_crash_loses_no_order_and_services_recover_by_themselves(system: System) -> None:
    """Apache Kafka's node is SIGKILLed (a crash) while an order is in flight and another is
    placed during the outage; once the node is back every service is ready again by
    itself and both orders finish."""
    kafka = kafka_of(system)
    client = system.client()
    client.put_product("crash-p", "p", Decimal("2.00"), 5)
    client.put_account("crash-c", Decimal("10.00"))
    # deadlines far beyond the outage: the test is about losing nothing, not about timeouts
    before = client.place_order("crash-c", {"crash-p": 1}, deadline_seconds=600)
    for node in kafka.nodes:
        kafka.kill(node)
    try:
        all_ready_answer(system, 503, 60, "every service not ready while the broker is down")
        during = client.place_order("crash-c", {"crash-p": 1}, deadline_seconds=600)  # in the outbox
    finally:
        for node in kafka.nodes:
            kafka.restart(node, wait=False)
        kafka.wait_ready(120)
    all_ready_answer(system, 200, 120, "every service ready again by itself")
    for order_id in (before, during):
        assert client.wait_for_events(order_id, {"InventoryCommitted"}, timeout=60)["status"] == "APPROVED"
    assert client.account("crash-c")["balance"] == "6.00"
    client.close()


def test_a_broker_that_stops_answering_is_said_by_the_relay_and_loses_nothing(system: System) -> None:
    """The broker's process is paused (SIGSTOP: it keeps its connections and answers
    nothing, as a broker stuck in a long pause). An order placed meanwhile is in the
    outbox; the relay says within ``<SVC>_RELAY_ACK_WARNING_SECONDS`` (10) that the broker has
    not acknowledged it — it used to be silent for ~90 s, until the producer's own
    timeouts — and once the broker goes on, that it answers again, and the order finishes."""
    assert system.broker is not None and system.broker.proc is not None
    client = system.client()
    client.put_product("pause-p", "p", Decimal("2.00"), 5)
    client.put_account("pause-c", Decimal("10.00"))
    log = system.run_dir / "logs" / "order_svc.log"
    said_before = log.read_text().count("not acknowledged by the broker")
    broker = system.broker.proc.pid
    os.kill(broker, signal.SIGSTOP)
    try:
        order_id = client.place_order("pause-c", {"pause-p": 1}, deadline_seconds=600)
        wait_until(
            lambda: log.read_text().count("not acknowledged by the broker") > said_before,
            30,
            "the relay's warning that the broker does not acknowledge",
        )
        # paused past the producer's request timeout (15 s): the producer may give up on
        # the batch and the relay send it again (seen on Tansu; Apache Kafka's client kept
        # waiting), and the answer to either must end the warning
        time.sleep(20)
    finally:
        os.kill(broker, signal.SIGCONT)
    assert client.wait_for_events(order_id, {"InventoryCommitted"}, timeout=120)["status"] == "APPROVED"
    wait_until(lambda: "the broker acknowledged them after" in log.read_text(), 30, "the relay says so")
    client.close()


def _waiting_on_a_lock(url: str) -> bool:
    """Whether a query of the database at ``url`` waits on a lock (read on a connection of its
    own: ``pg_stat_activity`` is read once per transaction)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return row is not None and row[0] > 0


def test_a_database_that_hangs_is_a_wait_not_records_lost(system: System) -> None:
    """The inventory's database holds its queries without refusing them (an attack trial
    stopped PostgreSQL with SIGSTOP; here a lock held elsewhere stands in, on that database
    alone): the batch in flight waits with no error, so the pipeline neither retries nor
    holds. The progress watch took the records behind it for offsets holding nothing —
    probed, none came, the lag read 0 and the log said "hold no record". Held well past
    the stall time (20 s) and a probe's (20 s more): the lag keeps every record waiting,
    readiness says why, and every order completes once the database answers."""
    client = system.client()
    client.put_product("hang-p", "p", Decimal("1.00"), 50)
    client.put_account("hang-c", Decimal("100.00"))
    first = client.place_order("hang-c", {"hang-p": 1})
    assert client.wait_for_events(first, {"InventoryCommitted"}, timeout=60)["status"] == "APPROVED"
    log = system.run_dir / "logs" / "inventory_svc.log"
    # this test's lines only: the module's stack is shared, and a record stranded by the
    # broker pause before may be found and read again (rightly said) while this one runs
    before = log.stat().st_size

    def said() -> str:
        return log.read_bytes()[before:].decode()

    with psycopg.connect(system.database_urls["inventory_svc"]) as holder:
        holder.execute("LOCK TABLE products IN ACCESS EXCLUSIVE MODE")  # held until the block ends
        held_at = time.monotonic()
        orders = [client.place_order("hang-c", {"hang-p": 1}, deadline_seconds=600)]
        wait_until(  # that one's batch is in flight; these arrive behind it
            lambda: _waiting_on_a_lock(system.database_urls["inventory_svc"]), 60, "inventory's batch held"
        )
        orders += [client.place_order("hang-c", {"hang-p": 1}, deadline_seconds=600) for _ in range(4)]
        wait_until(
            lambda: "waited" in readiness(system)["inventory_svc"][1]["checks"]["consumers"].get("error", ""),
            60,
            "inventory not ready, saying it waits on a batch",
        )
        assert metric_sum(system, "inventory_svc", "saga_consumer_batch_age_seconds") >= 20
        time.sleep(max(0.0, 50 - (time.monotonic() - held_at)))  # past a probe's time too
        lag = metric_sum(system, "inventory_svc", "saga_consumer_lag", topic="orders.events")
        metrics = f"{system.url('inventory_svc')}/metrics"
        assert lag >= 5, "\n".join(  # scraped again only when it failed, to say why
            ln for ln in system.http.get(metrics).text.splitlines() if ln.startswith("saga_consumer")
        )
        assert "hold no record" not in said()
        assert "consumer stalled" not in said()
        holder.rollback()
    for order_id in orders:
        assert client.wait_for_events(order_id, {"InventoryCommitted"}, timeout=60)["status"] == "APPROVED"
    wait_until(
        lambda: metric_sum(system, "inventory_svc", "saga_consumer_lag", topic="orders.events") == 0,
        30,
        "the lag back to 0",
    )
    assert readiness(system)["inventory_svc"][0] == 200
    assert "hold no record" not in said() and "lost records" not in said()
    client.close()


def test_broker_outage_makes_every_service_not_ready(system: System) -> None:
    """Last in this module: the broker stays down (the embedded Tansu would come back
    without its data, docs/design.md §2), and the services are stopped while it is."""
    assert system.broker is not None
    system.broker.stop()
    bodies = all_ready_answer(system, 503, 60, "every service not ready while the broker is down")
    for body in bodies.values():
        assert body["checks"]["broker"]["ok"] is False
        assert body["checks"]["database"]["ok"] is True

    # the lag shown is the last one known (it read 0 through the outage): how old it is
    # grows, past the progress watch's interval (at most 5 s) several times over
    wait_until(
        lambda: all(metric_sum(system, name, "saga_consumer_lag_age_seconds") > 20 for name in SERVICES),
        60,
        "every lag's reference aging",
    )
    # asked to stop while the broker is away (offsets to commit, a coordinator gone), each
    # service still stops by itself (exit 0), not by the supervisor's SIGKILL
    procs = {name: sp.proc for name, sp in system.services.items() if sp.proc is not None}
    for proc in procs.values():
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 40
    codes: dict[str, int | None] = {}
    for name, proc in procs.items():
        try:
            codes[name] = proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            codes[name] = None  # still running: the fixture's teardown kills it
    assert codes == dict.fromkeys(SERVICES, 0)
