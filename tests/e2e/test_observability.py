"""One saga is one trace across all three services; logs carry the ids to find it."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

from sagastack.client import SagaClient
from sagastack.system import System
from tests.e2e.conftest import UniqueIds, seed
from tests.e2e.test_audit import entries
from tests.polling import wait_until

#: (consumer service, event it handles, producer service of that event)
HOPS = [
    ("inventory_svc", "OrderCreated", "order_svc"),
    ("payment_svc", "InventoryReserved", "inventory_svc"),
    ("order_svc", "PaymentCompleted", "payment_svc"),
    ("inventory_svc", "OrderApproved", "order_svc"),
]


def spans_of(system: System, trace_id: str) -> list[dict[str, Any]]:
    spans = []
    for path in (system.run_dir / "traces").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            span = json.loads(line)
            if span["trace_id"] == trace_id:
                spans.append(span)
    return spans


def test_one_saga_is_one_trace_across_three_services(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    products, customers = seed(client, uid, {"bell": ("3.00", 2)}, {"ida": "10.00"})
    response = client.http.post(
        f"{system.url('order_svc')}/orders",
        json={"customer_id": customers["ida"], "items": [{"product_id": products["bell"], "quantity": 1}]},
    )
    trace_id = response.headers["X-Trace-Id"]
    order_id = response.json()["order_id"]
    saga = client.wait_for_events(order_id, {"InventoryCommitted"})
    # the timeline: every event of the saga, from every service, recorded in that trace
    assert {e["trace_id"] for e in saga["events"]} == {trace_id}

    # the spans: a consumer span per hop, its parent the span that emitted the event: the
    # POST for OrderCreated, the handling of the event it replies to for the others
    end = time.monotonic() + 15
    while True:
        spans = spans_of(system, trace_id)
        by_id = {s["span_id"]: s for s in spans}
        handles = {(s["service"], s["name"]): s for s in spans if s["kind"] == "CONSUMER"}
        charges = [s for s in spans if s["name"] == "payment provider charge"]
        done = all((svc, f"handle {ev}") in handles for svc, ev, _ in HOPS) and charges
        if done or time.monotonic() > end:
            break
        time.sleep(0.2)
    assert {s["service"] for s in spans} == {"order_svc", "inventory_svc", "payment_svc"}
    root = [s for s in spans if s["parent_id"] is None]
    assert [(r["service"], r["name"], r["kind"]) for r in root] == [("order_svc", "POST /orders", "SERVER")]
    caused_by = {
        "OrderCreated": "POST /orders",
        **{ev: f"handle {prev}" for (_, prev, _), (_, ev, _) in itertools.pairwise(HOPS)},
    }
    for consumer, event_type, producer in HOPS:
        handle = handles[(consumer, f"handle {event_type}")]
        assert handle["attributes"]["saga.order_id"] == order_id
        parent = by_id[handle["parent_id"]]
        while parent["name"] != caused_by[event_type] and parent["parent_id"] in by_id:
            assert parent["service"] == producer  # spans inside the producer's work, e.g. the route's
            parent = by_id[parent["parent_id"]]
        assert (parent["service"], parent["name"]) == (producer, caused_by[event_type])
    # the external step is in the trace too: payment's call to the provider, a CLIENT span
    # under the handling of InventoryReserved, which decided to charge
    (charge,) = charges
    assert (charge["service"], charge["kind"]) == ("payment_svc", "CLIENT")
    assert charge["attributes"]["saga.order_id"] == order_id
    assert (
        charge["attributes"]["payment.outcome"] == "charged" and charge["attributes"]["payment.attempt"] == 1
    )
    assert by_id[charge["parent_id"]]["service"] == "payment_svc"
    # and nothing in the trace points to a span that is not in it
    assert all(s["parent_id"] in by_id for s in spans if s["parent_id"] is not None)

    # logs: the line for each hop names the service, order, event type and trace
    log_lines = [
        json.loads(line)
        for name in ("order_svc", "inventory_svc", "payment_svc")
        for line in system.services[name].log_path.read_text().splitlines()
        if line.startswith("{") and order_id in line
    ]
    for consumer, event_type, _ in HOPS:
        assert any(
            entry["service"] == consumer
            and entry.get("event_type") == event_type
            and entry.get("order_id") == order_id
            and entry.get("trace_id") == trace_id
            for entry in log_lines
        ), f"no log line of {consumer} handling {event_type} in trace {trace_id}"


def test_a_cancellation_continues_the_sagas_trace(system: System, client: SagaClient, uid: UniqueIds) -> None:
    products, customers = seed(client, uid, {"drum": ("3.00", 2)}, {"jo": "10.00"})
    order_id = client.place_order(customers["jo"], {products["drum"]: 1})
    saga = client.wait_for_events(order_id, {"InventoryCommitted"})
    trace_id = saga["events"][0]["trace_id"]
    cancel = client.http.post(f"{system.url('order_svc')}/orders/{order_id}/cancel")
    assert cancel.status_code == 202
    saga = client.wait_for_events(order_id, {"PaymentRefunded", "InventoryReleased"})
    assert {e["trace_id"] for e in saga["events"]} == {trace_id}
    assert cancel.headers["X-Trace-Id"] != trace_id  # the request has its own trace, linked


def test_a_callers_traceparent_is_linked_not_continued(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    """An attack trial sent the trace id of another customer's request as its own
    ``traceparent``: its order's saga, and its audit entry's ``request_id``, were filed
    under that trace. A caller's trace is linked from the request's own
    (``TRACING_TRUST_TRACEPARENT`` continues it, behind a gateway that sets it)."""
    products, customers = seed(client, uid, {"horn": ("3.00", 2)}, {"lu": "10.00"})
    foreign = "4bf92f3577b34da6a3ce929d0e0e4736"
    response = client.http.post(
        f"{system.url('order_svc')}/orders",
        json={"customer_id": customers["lu"], "items": [{"product_id": products["horn"], "quantity": 1}]},
        headers={"traceparent": f"00-{foreign}-00f067aa0ba902b7-01"},
    )
    assert response.status_code == 202, response.text
    trace_id, order_id = response.headers["X-Trace-Id"], response.json()["order_id"]
    assert trace_id != foreign
    saga = client.wait_for_events(order_id, {"InventoryCommitted"})
    assert {e["trace_id"] for e in saga["events"]} == {trace_id}
    at_order = [e for e in entries(system, "order_svc") if e["resource"] == f"/orders/{order_id}"]
    (placed,) = [e for e in at_order if e["action"] == "POST /orders"]
    assert placed["request_id"] == trace_id
    end = time.monotonic() + 15
    while not (posts := [s for s in spans_of(system, trace_id) if s["name"] == "POST /orders"]):
        assert time.monotonic() < end, "the request's span was never exported"
        time.sleep(0.2)
    assert posts[0]["parent_id"] is None and posts[0]["links"] == [foreign]


def scrape(system: System, service: str) -> dict[str, list[Any]]:
    """The service's /metrics, parsed by the reference Prometheus parser (so the format is
    valid), as metric family name → samples."""
    from prometheus_client.parser import text_string_to_metric_families

    body = system.http.get(f"{system.url(service)}/metrics", timeout=10).text
    return {family.name: family.samples for family in text_string_to_metric_families(body)}


def test_metrics_cover_consumption_production_latency_outbox_lag_and_sagas(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    products, customers = seed(client, uid, {"fan": ("2.00", 5)}, {"kim": "1.00"})
    order_id = client.place_order(customers["kim"], {products["fan"]: 1})  # rejected: funds
    client.wait_for_events(order_id, {"InventoryReleased"})
    order = scrape(system, "order_svc")
    inventory = scrape(system, "inventory_svc")
    payment = scrape(system, "payment_svc")

    def value(samples: list[Any], name: str, **want: str) -> float:
        return sum(s.value for s in samples if s.name == name and want.items() <= s.labels.items())

    assert (
        value(inventory["saga_events_consumed"], "saga_events_consumed_total", event_type="OrderCreated") >= 1
    )
    assert (
        value(payment["saga_events_produced"], "saga_events_produced_total", event_type="PaymentFailed") >= 1
    )
    assert value(inventory["saga_batch_seconds"], "saga_batch_seconds_count") >= 1
    assert value(inventory["saga_batch_size"], "saga_batch_size_sum") >= 1
    assert "saga_outbox_backlog" in order and "saga_outbox_oldest_unsent_seconds" in order
    assert "saga_dead_letters" in payment
    rejected = {"from_status": "PENDING", "to_status": "REJECTED", "reason": "insufficient_funds"}
    transitions = order["saga_order_transitions"]
    assert value(transitions, "saga_order_transitions_total", **rejected) >= 1
    assert "saga_orders_in_flight" in order
    assert {s.labels["status"] for s in payment["saga_payments_waiting"]} == {"PENDING", "REFUND_PENDING"}
    rejected_count = value(order["saga_duration_seconds"], "saga_duration_seconds_count", status="REJECTED")
    rejected_inf = value(
        order["saga_duration_seconds"], "saga_duration_seconds_bucket", status="REJECTED", le="+Inf"
    )
    assert rejected_count >= 1 and rejected_inf == rejected_count
    gates = {s.labels["gate"] for s in order["saga_order_admission_refused"] if s.name.endswith("_total")}
    assert gates == {"backlog", "broker", "door"}
    lag = [s for s in inventory["saga_consumer_lag"] if s.labels["topic"] == "orders.events"]
    assert lag and all(s.value >= 0 for s in lag)
    # the lag's reference, asked of the broker at the progress watch's first look and
    # every few seconds after (at most 5 s): fresh while the broker answers
    # (tests/chaos/test_outages.py has it grow through an outage)
    for name in ("order_svc", "inventory_svc", "payment_svc"):
        wait_until(lambda n=name: "saga_consumer_lag_age_seconds" in scrape(system, n), 30, f"{name} looks")
        age = value(scrape(system, name)["saga_consumer_lag_age_seconds"], "saga_consumer_lag_age_seconds")
        assert 0 <= age < 60
    assert value(order["saga_job_runs"], "saga_job_runs_total", job="deadline_sweeper") >= 1
    # the client library's standard figures of the process and of its garbage collector
    assert value(payment["process_cpu_seconds"], "process_cpu_seconds_total") > 0
    assert value(inventory["process_resident_memory_bytes"], "process_resident_memory_bytes") > 0
    assert {s.labels["generation"] for s in order["python_gc_collections"]} == {"0", "1", "2"}


def test_a_first_start_logs_no_error(system: System, client: SagaClient, uid: UniqueIds) -> None:
    """On a new Apache Kafka cluster each service's consumer logged aiokafka's "Group
    Coordinator Request failed: [Error 15] GroupCoordinatorNotAvailableError" at ERROR
    until the cluster had elected one: an operator's first start looked broken. Now the
    service waits for its group's coordinator first, at INFO. Whatever the broker, nothing
    is logged at ERROR from a service's start to its first consumer batch (which comes
    after its consumer joined the group)."""
    products, customers = seed(client, uid, {"gong": ("1.00", 1)}, {"ivo": "5.00"})
    placed = client.place_order(customers["ivo"], {products["gong"]: 1})
    client.wait_for_events(placed, {"InventoryCommitted"})  # every service consumed
    for name in ("order_svc", "inventory_svc", "payment_svc"):
        lines = [
            json.loads(line)
            for line in (system.run_dir / "logs" / f"{name}.log").read_text().splitlines()
            if line.startswith("{")
        ]
        starting = list(itertools.takewhile(lambda line: not line["msg"].startswith("batch of "), lines))
        assert len(starting) < len(lines), f"{name} consumed nothing yet"
        errors = [
            (ln["logger"], ln["msg"])
            for ln in starting
            if ln["level"] in {"error", "critical"}
            # a record an earlier test sent that cannot be processed is the input's error,
            # not the start's (on a shared system run alone after test_nothing_lost, the
            # first batch was one)
            and not (ln["logger"] == "saga_kit.consumer" and ln["msg"].startswith("dead letter "))
        ]
        assert errors == [], name
