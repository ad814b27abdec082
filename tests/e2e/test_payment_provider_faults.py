"""The step you cannot roll back: payment through the payment provider (the simulator,
with its fault controls), on the running system. For each fault the saga ends as it
should and the provider's ledger holds exactly one charge for the order: a timeout, 5xx
errors, an outage (the circuit breaker opens, fails fast and recovers; an order
cancelled during it is voided, never charged), a charge whose response is lost, a
decline, and a payment service that crashes between recording the intent and calling,
or between the provider's answer and recording it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from sagastack.client import SagaClient
from sagastack.system import System
from tests.e2e.conftest import UniqueIds, seed
from tests.polling import wait_until


def charges_of(system: System, order_id: str) -> list[dict[str, Any]]:
    """The provider's successful charges for the order (by its reference)."""
    ledger = httpx.get(f"{system.provider_url}/v1/ledger", timeout=10).json()
    return [c for c in ledger["charges"] if c["reference"] == order_id and c["status"] == "succeeded"]


def payment(system: System, order_id: str) -> Any:
    return system.http.get(f"{system.url('payment_svc')}/payments/{order_id}", timeout=10).json()


def readiness(system: System) -> Any:
    return system.http.get(f"{system.url('payment_svc')}/health/ready", timeout=10).json()


@pytest.fixture
def provider_well(system: System) -> Iterator[None]:
    """Every test leaves the provider well and payment's breaker closed for the next."""
    system.provider_faults()
    yield
    system.provider_faults()


def order_of(client: SagaClient, uid: UniqueIds, balance: str = "100.00") -> tuple[str, str, str]:
    products, customers = seed(client, uid, {"thing": ("5.00", 10)}, {"payer": balance})
    return products["thing"], customers["payer"], balance


def test_a_timeout_is_retried_with_the_same_key_and_charges_once(
    system: System, client: SagaClient, uid: UniqueIds, provider_well: None
) -> None:
    pid, cid, _ = order_of(client, uid)
    # the provider sleeps past payment's 2 s timeout, then charges: nobody reads the answer
    system.provider_faults(timeout_rate=1.0, timeout_ms=3000)
    order_id = client.place_order(cid, {pid: 1})
    wait_until(lambda: payment(system, order_id).get("attempts", 0) >= 1, 30, "a first call")
    wait_until(lambda: charges_of(system, order_id), 30, "the provider charging after the timeout")
    system.provider_faults()
    saga = client.wait_for_events(order_id, {"PaymentPending", "PaymentCompleted", "InventoryCommitted"}, 60)
    assert client.order(order_id)["status"] == "APPROVED"
    assert len(charges_of(system, order_id)) == 1
    assert client.account(cid)["balance"] == "95.00"
    pending = next(e for e in saga["events"] if e["event_type"] == "PaymentPending")
    assert "did not answer within 2 s" in pending["payload"]["reason"]


def test_server_errors_are_retried_until_the_provider_answers(
    system: System, client: SagaClient, uid: UniqueIds, provider_well: None
) -> None:
    pid, cid, _ = order_of(client, uid)
    system.provider_faults(error_rate=1.0)
    order_id = client.place_order(cid, {pid: 2})
    wait_until(lambda: payment(system, order_id).get("attempts", 0) >= 2, 30, "retries")
    assert charges_of(system, order_id) == []  # a 500 did nothing
    assert "500" in (payment(system, order_id)["last_error"] or "")
    system.provider_faults()
    client.wait_for_events(order_id, {"PaymentCompleted", "InventoryCommitted"}, 60)
    assert client.order(order_id)["status"] == "APPROVED"
    assert len(charges_of(system, order_id)) == 1


def test_an_outage_opens_the_breaker_which_fails_fast_and_recovers(
    system: System, client: SagaClient, uid: UniqueIds, provider_well: None
) -> None:
    pid, cid, _ = order_of(client, uid)
    system.provider_faults(outage=True)
    order_id = client.place_order(cid, {pid: 1})
    degraded = wait_until(
        lambda: readiness(system)["checks"]["payment_provider"].get("degraded"), 30, "the breaker opening"
    )
    ready = readiness(system)
    assert ready["status"] == "degraded"  # still 200: payments wait, nothing is lost
    assert "circuit open" in degraded and "503" in degraded

    def outage_hits() -> int:
        faults = httpx.get(f"{system.provider_url}/v1/faults", timeout=10).json()
        return int(faults["injected"].get("outage", 0))

    # while open, the breaker fails fast: the provider hears nothing, or one probe
    before = outage_hits()
    time.sleep(2.0)
    assert outage_hits() - before <= 1

    # the saga says so once its PaymentPending has reached the order service (it may be
    # on its way still when the breaker opens, ~1 s after the first failed call)
    def waiting_verdict() -> str | None:
        verdict: str = client.saga(order_id)["explanation"]["verdict"]
        return verdict if verdict.startswith("in flight: waiting on the payment provider since") else None

    wait_until(waiting_verdict, 30, "the saga saying it waits on the payment provider")
    assert client.order(order_id)["status"] == "PENDING"
    system.provider_faults()
    client.wait_for_events(order_id, {"PaymentPending", "PaymentCompleted", "InventoryCommitted"}, 60)
    assert len(charges_of(system, order_id)) == 1
    wait_until(lambda: readiness(system)["status"] == "ready", 30, "the breaker closing")


def test_an_order_cancelled_during_an_outage_is_voided_never_charged(
    system: System, client: SagaClient, uid: UniqueIds, provider_well: None
) -> None:
    """Every call answered 503 (the provider's "nothing done"): the cancellation voids the
    payment; when the provider is back nobody charges, so there is nothing to refund."""
    pid, cid, balance = order_of(client, uid)
    system.provider_faults(outage=True)
    order_id = client.place_order(cid, {pid: 1})
    wait_until(
        lambda: "PaymentPending" in {e["event_type"] for e in client.saga(order_id)["events"]},
        30,
        "the payment waiting on the provider",
    )
    client.cancel(order_id)
    saga = client.wait_for_events(order_id, {"OrderCancelled", "InventoryReleased", "PaymentVoided"}, 30)
    assert payment(system, order_id)["status"] == "VOIDED"
    assert not payment(system, order_id)["charge_in_doubt"]
    system.provider_faults()
    wait_until(lambda: readiness(system)["status"] == "ready", 30, "the breaker closing")
    assert charges_of(system, order_id) == []
    assert client.account(cid)["balance"] == balance
    assert {e["event_type"] for e in saga["events"]}.isdisjoint({"PaymentCompleted", "PaymentRefunded"})
    assert client.saga(order_id)["explanation"]["settled"] is True


def test_a_charge_whose_response_is_lost_is_charged_once(
    system: System, client: SagaClient, uid: UniqueIds, provider_well: None
) -> None:
    pid, cid, _ = order_of(client, uid)
    system.provider_faults(lose_response_rate=1.0)
    order_id = client.place_order(cid, {pid: 3})
    wait_until(lambda: charges_of(system, order_id), 30, "the charge the answer of which is lost")
    wait_until(lambda: payment(system, order_id).get("attempts", 0) >= 2, 30, "a retry of the lost charge")
    assert client.order(order_id)["status"] == "PENDING"  # payment does not know yet
    system.provider_faults()
    client.wait_for_events(order_id, {"PaymentCompleted", "InventoryCommitted"}, 60)
    assert len(charges_of(system, order_id)) == 1
    assert client.account(cid)["balance"] == "85.00"


def test_a_decline_is_a_business_answer_and_the_reservation_is_released(
    system: System, client: SagaClient, uid: UniqueIds, provider_well: None
) -> None:
    pid, cid, _ = order_of(client, uid, balance="4.00")
    order_id = client.place_order(cid, {pid: 1})
    saga = client.wait_for_events(order_id, {"PaymentFailed", "InventoryReleased"}, 60)
    order = client.order(order_id)
    assert (order["status"], order["reason"]) == ("REJECTED", "insufficient_funds")
    assert "PaymentPending" not in {e["event_type"] for e in saga["events"]}
    assert payment(system, order_id)["attempts"] == 1  # no retry of a decline
    assert charges_of(system, order_id) == []
    assert client.product(pid)["available"] == 10


@pytest.mark.parametrize("point", ["payment.crash_after_claim", "payment.crash_after_call"])
def test_a_crash_around_the_call_converges_to_one_charge(
    system: System, client: SagaClient, uid: UniqueIds, provider_well: None, point: str
) -> None:
    pid, cid, _ = order_of(client, uid)
    system.stop_service("payment_svc")
    system.start_service("payment_svc", env={"SAGA_FAULT": point})
    try:
        order_id = client.place_order(cid, {pid: 1})
        proc = system.services["payment_svc"].proc
        assert proc is not None
        wait_until(lambda: proc.poll() is not None, 30, f"payment_svc dying at {point}")
        charged = charges_of(system, order_id)
        assert len(charged) == (1 if point == "payment.crash_after_call" else 0)
    finally:
        system.start_service("payment_svc", env={"SAGA_FAULT": ""})
    # the claim's lease ends, the call is made (again) with the same key
    client.wait_for_events(order_id, {"PaymentCompleted", "InventoryCommitted"}, 60)
    assert client.order(order_id)["status"] == "APPROVED"
    assert len(charges_of(system, order_id)) == 1
    assert client.account(cid)["balance"] == "95.00"
    assert payment(system, order_id)["attempts"] == 2


def test_a_graceful_stop_waits_for_the_call_out_and_records_its_answer(
    system: System, client: SagaClient, uid: UniqueIds, provider_well: None
) -> None:
    """SIGTERM while a charge's call is out: the service stops once the call is answered
    and recorded (``PaymentWorker.finish``, the job's grace), so after the restart the
    payment is CHARGED on its one claim. The round was cancelled before: the answer was
    lost, the payment in doubt until its lease ended, then claimed and called again."""
    pid, cid, _ = order_of(client, uid)
    system.provider_faults(latency_ms=1500)
    order_id = client.place_order(cid, {pid: 1})
    wait_until(lambda: payment(system, order_id).get("attempts") == 1, 30, "the charge claimed")
    system.stop_service("payment_svc")
    system.provider_faults()
    system.start_service("payment_svc")
    client.wait_for_events(order_id, {"PaymentCompleted", "InventoryCommitted"}, 60)
    assert client.order(order_id)["status"] == "APPROVED"
    assert len(charges_of(system, order_id)) == 1
    assert payment(system, order_id)["attempts"] == 1  # its one call answered, not called again


@pytest.fixture
def one_call_at_a_time(system: System) -> Iterator[None]:
    """payment_svc makes one provider call at a time (``PAYMENT_PROVIDER_CONCURRENCY=1``);
    restarted as it was after the test."""
    system.start_service("payment_svc", env={"PAYMENT_PROVIDER_CONCURRENCY": "1"})
    yield
    system.start_service("payment_svc")


def behind_a_slow_call(system: System, client: SagaClient, uid: UniqueIds) -> tuple[str, str, str, str]:
    """A slow provider (1.5 s a call), one call at a time (``one_call_at_a_time``), a first
    order whose charge is out, and a second's charge claimed and handed off, waiting for
    the call slot: (customer, its balance, first order, second order)."""
    pid, cid, balance = order_of(client, uid)
    system.provider_faults(latency_ms=1500)
    first = client.place_order(cid, {pid: 1})
    wait_until(lambda: payment(system, first).get("attempts") == 1, 30, "the first charge claimed")
    second = client.place_order(cid, {pid: 1})
    wait_until(lambda: payment(system, second).get("attempts") == 1, 30, "the second charge claimed")
    return cid, balance, first, second


def test_an_order_cancelled_while_its_charge_waits_for_a_call_slot_is_voided(
    system: System, client: SagaClient, uid: UniqueIds, provider_well: None, one_call_at_a_time: None
) -> None:
    """A slow provider (1.5 s a call) and every call slot taken: a first order's charge is
    out, and a second order's charge, claimed and handed off, waits for the slot.
    Cancelled then, the second was never called: the cancellation takes it back and voids
    it. It was charged when the slot came, then refunded (an attack trial: 4 of 4)."""
    cid, balance, first, second = behind_a_slow_call(system, client, uid)
    client.cancel(second)
    client.wait_for_events(second, {"OrderCancelled", "InventoryReleased", "PaymentVoided"}, 30)
    client.wait_for_events(first, {"PaymentCompleted", "InventoryCommitted"}, 30)
    assert payment(system, second)["status"] == "VOIDED"
    assert charges_of(system, second) == []
    assert len(charges_of(system, first)) == 1
    assert client.account(cid)["balance"] == str(Decimal(balance) - Decimal("5.00"))


def test_an_order_cancelled_while_payment_is_stopped_is_voided_at_its_restart(
    system: System, client: SagaClient, uid: UniqueIds, provider_well: None, one_call_at_a_time: None
) -> None:
    """A charge handed off behind a slow call when payment_svc is stopped is released,
    due at once; its order is cancelled while the service is down. At the restart the
    worker's first round waits for the consumers to read what the topics hold
    (``Periodic.after_catch_up``): the cancellation voids the charge before it can be
    made. The worker claimed it first, 4 s before the cancellation was read: charged, then
    refunded (a re-check trial)."""
    cid, balance, first, second = behind_a_slow_call(system, client, uid)
    system.stop_service("payment_svc")
    try:
        system.provider_faults()
        client.cancel(second)
        wait_until(lambda: client.order(second)["status"] == "CANCELLED", 30, "the order cancelled")
    finally:
        system.start_service("payment_svc")
    client.wait_for_events(second, {"OrderCancelled", "InventoryReleased", "PaymentVoided"}, 60)
    client.wait_for_events(first, {"PaymentCompleted", "InventoryCommitted"}, 60)
    assert payment(system, second)["status"] == "VOIDED"
    assert charges_of(system, second) == []
    assert client.account(cid)["balance"] == str(Decimal(balance) - Decimal("5.00"))
