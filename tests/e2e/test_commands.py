"""Sagas started and followed from Kafka alone: commands on orders.commands."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiokafka import AIOKafkaProducer

from events import OrderLine
from events.commands import AUTHORIZATION, CancelOrder, PlaceOrder, encode_command, order_id_for
from events.topics import COMMANDS
from saga_kit.auth import Role, write_dev_issuer
from sagastack.client import SagaClient
from sagastack.system import System
from tests.e2e.conftest import UniqueIds, sagactl, seed
from tests.e2e.test_audit import entries as audit_entries
from tests.e2e.test_observability import spans_of


def send(
    system: System,
    *values: bytes,
    token: str | tuple[str, ...] | None = "operator",
    header: str = AUTHORIZATION,
    extra: Sequence[tuple[str, bytes]] = (),
) -> None:
    """Produce command records with an operator's token (``token="operator"``), the token
    given (a tuple: one ``authorization`` header each, named ``header``), or none (``None``);
    ``extra`` headers after it."""
    bearers = (
        (system.token(),) if token == "operator" else (token,) if isinstance(token, str) else token or ()
    )
    headers = [(header, f"Bearer {bearer}".encode()) for bearer in bearers] + list(extra) or None

    async def go() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=system.bootstrap, acks="all", **system.kafka_security.client_kwargs()
        )
        await producer.start()
        try:
            for value in values:
                key = json.loads(value)["command_id"].encode()
                await producer.send_and_wait(COMMANDS, value, key=key, headers=headers)
        finally:
            await producer.stop()

    asyncio.run(go())


def outcome(system: System, command_id: uuid.UUID, settled: set[str], timeout: float = 30) -> dict[str, Any]:
    """``GET /commands/{id}`` once it reports one of ``settled`` (and, if placed, a final status)."""
    end = time.monotonic() + timeout
    while True:
        view = system.http.get(f"{system.url('order_svc')}/commands/{command_id}").json()
        if view["outcome"] in settled and view["status"] not in (None, "PENDING"):
            return dict(view)
        if view["outcome"] == "rejected" and "rejected" in settled:
            return dict(view)
        if time.monotonic() > end:
            raise TimeoutError(f"command {command_id}: {view}")
        time.sleep(0.1)


def command(customer: str, items: dict[str, int], **extra: Any) -> PlaceOrder:
    return PlaceOrder(
        command_id=uuid.uuid4(),
        customer_id=customer,
        items=tuple(OrderLine(product_id=p, quantity=q) for p, q in items.items()),
        **extra,
    )


def test_a_saga_started_by_a_command_reaches_every_outcome(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    products, customers = seed(client, uid, {"kite": ("5.00", 2)}, {"rich": "100.00", "poor": "1.00"})
    kite, rich, poor = products["kite"], customers["rich"], customers["poor"]
    approved = command(rich, {kite: 1})
    no_stock = command(rich, {kite: 5})
    no_funds = command(poor, {kite: 1})
    send(system, *(encode_command(c) for c in (approved, no_stock, no_funds)))
    assert outcome(system, approved.command_id, {"placed"})["status"] == "APPROVED"
    for c, reason in ((no_stock, "insufficient_stock"), (no_funds, "insufficient_funds")):
        view = outcome(system, c.command_id, {"placed"})
        assert (view["status"], client.order(str(view["order_id"]))["reason"]) == ("REJECTED", reason)
        assert (view["order_reason"], view["reason"]) == (reason, None)  # the order's; the command's
    # and a CancelOrder command cancels the approved one: refunded and restocked
    cancel = CancelOrder(command_id=uuid.uuid4(), order_id=order_id_for(approved.command_id))
    send(system, encode_command(cancel))
    assert outcome(system, cancel.command_id, {"cancelled"})["status"] == "CANCELLED"
    saga = client.wait_for_events(str(cancel.order_id), {"PaymentRefunded", "InventoryReleased"})
    assert saga["events"][0]["event_type"] == "PlaceOrder"  # the timeline starts at the command
    assert client.account(rich)["balance"] == "100.00" and client.product(kite)["available"] == 2
    assert client.order(str(cancel.order_id))["reason"] == "cancelled_by_operator"  # the token's role


def test_a_commands_traceparent_is_linked_not_continued(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    """An attack trial put another customer's trace id in the ``traceparent`` header of a
    ``PlaceOrder`` and of a ``CancelOrder``: the saga, its compensations and both audit
    entries were filed under that trace. As at the HTTP door, a command starts a trace of
    its own, linked to the one it names; its cancellation goes on in the saga's trace."""
    products, customers = seed(client, uid, {"fife": ("2.00", 2)}, {"mo": "10.00"})
    foreign = "4bf92f3577b34da6a3ce929d0e0e4736"
    named = [("traceparent", f"00-{foreign}-00f067aa0ba902b7-01".encode())]
    place = command(customers["mo"], {products["fife"]: 1})
    send(system, encode_command(place), extra=named)
    assert outcome(system, place.command_id, {"placed"})["status"] == "APPROVED"
    cancel = CancelOrder(command_id=uuid.uuid4(), order_id=order_id_for(place.command_id))
    send(system, encode_command(cancel), extra=named)
    saga = client.wait_for_events(str(cancel.order_id), {"PaymentRefunded", "InventoryReleased"})
    traces = {e["event_type"]: e["trace_id"] for e in saga["events"]}
    saga_trace, cancel_trace = traces.pop("PlaceOrder"), traces.pop("CancelOrder")
    assert None not in (saga_trace, cancel_trace) and foreign not in (saga_trace, cancel_trace)
    assert set(traces.values()) == {saga_trace}  # the compensations too, as an HTTP cancel's
    audited = [e for e in audit_entries(system, "order_svc") if e["resource"] == f"/orders/{cancel.order_id}"]
    assert {e["action"]: e["request_id"] for e in audited if e["action"].endswith(COMMANDS)} == {
        "PlaceOrder via orders.commands": saga_trace,
        "CancelOrder via orders.commands": cancel_trace,
    }
    for trace_id, name in ((saga_trace, "receive PlaceOrder"), (cancel_trace, "receive CancelOrder")):
        first = exported(system, trace_id, name)  # each command's first span: linked, a root
        assert first["parent_id"] is None and first["links"] == [foreign]
    assert exported(system, saga_trace, "cancel order")["links"] == [cancel_trace]


def exported(system: System, trace_id: str, name: str, timeout: float = 15) -> dict[str, Any]:
    """The span ``name`` of the trace ``trace_id``, once exported (every 0.5 s)."""
    end = time.monotonic() + timeout
    while not (found := [s for s in spans_of(system, trace_id) if s["name"] == name]):
        assert time.monotonic() < end, f"no span {name!r} in the trace {trace_id}"
        time.sleep(0.2)
    return found[0]


def test_duplicate_and_conflicting_command_ids(system: System, client: SagaClient, uid: UniqueIds) -> None:
    products, customers = seed(client, uid, {"yoyo": ("1.00", 10)}, {"jan": "10.00"})
    first = command(customers["jan"], {products["yoyo"]: 1})
    clash = first.model_copy(update={"items": (OrderLine(product_id=products["yoyo"], quantity=3),)})
    send(system, encode_command(first), encode_command(first), encode_command(clash))
    # the command was applied; the clash under its id is named, not taken for the outcome
    view = outcome(system, first.command_id, {"placed"})
    end = time.monotonic() + 30
    while view["reason"] is None and time.monotonic() < end:
        time.sleep(0.1)
        view = outcome(system, first.command_id, {"placed"})
    assert view["reason"] == "command_id_reused", view
    assert view["detail"].startswith("another PlaceOrder sent under this id was refused: "), view
    order = client.wait_for_events(str(order_id_for(first.command_id)), {"InventoryCommitted"})
    assert [e["event_type"] for e in order["events"]].count("OrderCreated") == 1
    assert client.product(products["yoyo"])["sold"] == 1


def test_an_invalid_command_is_answered_not_dead_lettered(system: System) -> None:
    wire = json.loads(encode_command(command("x", {"p": 1})))
    wire["payload"]["items"] = [{"product_id": "p", "quantity": True}]  # a bool is no quantity
    send(system, json.dumps(wire).encode())
    view = outcome(system, uuid.UUID(wire["command_id"]), {"rejected"})
    assert view["reason"] == "invalid_command" and "quantity" in view["detail"]


def test_a_command_survives_a_crash_between_consume_and_commit(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    products, customers = seed(client, uid, {"drum": ("2.00", 3)}, {"lee": "10.00"})
    placed = command(customers["lee"], {products["drum"]: 1})
    system.stop_service("order_svc")
    send(system, encode_command(placed))
    system.start_service("order_svc", env={"SAGA_FAULT": "consumer.crash_before_commit"}, wait=False)
    proc = system.services["order_svc"].proc
    assert proc is not None and proc.wait(60) != 0  # it applied the command, then died uncommitted
    system.start_service("order_svc", env={"SAGA_FAULT": ""})
    view = outcome(system, placed.command_id, {"placed"})
    assert view["status"] == "APPROVED"
    saga = client.saga(str(view["order_id"]))
    assert [e["event_type"] for e in saga["events"]].count("OrderCreated") == 1
    assert client.account(customers["lee"])["balance"] == "8.00"


def test_sagactl_places_and_cancels_through_kafka(system: System, client: SagaClient, uid: UniqueIds) -> None:
    products, customers = seed(client, uid, {"bell": ("3.00", 2)}, {"amy": "10.00"})
    placed = sagactl(
        system,
        "place",
        customers["amy"],
        f"{products['bell']}=1",
        "--via",
        "kafka",
        "--bootstrap",
        system.bootstrap,
    )
    assert placed.returncode == 0, placed.stdout + placed.stderr
    assert "APPROVED" in placed.stdout
    order_id = placed.stdout.split("(order ")[1].split(")")[0]
    cancelled = sagactl(system, "cancel", order_id, "--via", "kafka", "--bootstrap", system.bootstrap)
    assert cancelled.returncode == 0 and "CANCELLED" in cancelled.stdout, cancelled.stdout + cancelled.stderr
    again = sagactl(system, "cancel", order_id, "--via", "kafka", "--bootstrap", system.bootstrap)
    assert again.returncode == 1 and "order_not_cancellable" in again.stderr


def test_sagactl_with_a_customers_token_follows_its_own_command(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    """A customer reads its own commands' outcomes (GET /commands/{id}), and no one
    else's: once only an operator could, and a customer's sagactl reported a 403 and exit
    1 for a command that had worked, then followed the order instead."""
    products, customers = seed(client, uid, {"drum": ("2.00", 2)}, {"bo": "10.00"})
    token = system.token(customers["bo"], (Role.CUSTOMER,))
    kafka = ("--via", "kafka", "--bootstrap", system.bootstrap)
    placed = sagactl(system, "place", customers["bo"], f"{products['drum']}=1", *kafka, token=token)
    assert placed.returncode == 0, placed.stdout + placed.stderr
    assert "APPROVED" in placed.stdout
    order_id = placed.stdout.split("(order ")[1].split(")")[0]
    cancelled = sagactl(system, "cancel", order_id, *kafka, token=token)
    assert cancelled.returncode == 0 and "CANCELLED" in cancelled.stdout, cancelled.stdout + cancelled.stderr
    assert client.order(order_id)["reason"] == "cancelled_by_customer"
    command_id = placed.stdout.split("command ")[1].split()[0]
    read = sagactl(system, "command", command_id, token=token)
    assert (
        read.returncode == 0 and f"command {command_id}: placed; order {order_id}: CANCELLED" in read.stdout
    )
    stranger = system.token(uid("cy"), (Role.CUSTOMER,))
    hidden = sagactl(system, "command", command_id, token=stranger)
    assert hidden.returncode == 1 and "not found" in hidden.stderr, hidden.stdout + hidden.stderr
    assert "not taken yet (ask again in a moment), or not a command about your orders" in hidden.stderr
    # the operator's "unknown" is no outcome either: exit 1, as the customer's 404 (it was 0)
    unknown = sagactl(system, "command", str(uuid.uuid4()))
    assert unknown.returncode == 1 and unknown.stdout.endswith(": not taken yet, or never sent\n"), unknown
    # in the audit trail as the HTTP calls would be: who, what, how it ended
    audited = [
        (e["actor"], e["role"], e["action"], e["outcome"])
        for e in audit_entries(system, "order_svc")
        if e["resource"] == f"/orders/{order_id}" and e["action"].endswith("via orders.commands")
    ]
    assert audited == [
        (customers["bo"], "customer", "PlaceOrder via orders.commands", "accepted"),
        (customers["bo"], "customer", "CancelOrder via orders.commands", "accepted"),
    ]


def test_of_two_customers_cancels_at_once_only_the_one_that_cancelled_says_so(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    """A customer's wait followed its order's status: two cancels of one order at once both
    passed the check before sending, and both said CANCELLED, exit 0 — the refused one took
    the other's cancel for its own (an attack trial). It now follows its own command: one
    cancel says CANCELLED, the other that it was refused, or that nothing was sent (it
    asked after the first had cancelled)."""
    products, customers = seed(client, uid, {"gong": ("2.00", 2)}, {"cy": "10.00"})
    token = system.token(customers["cy"], (Role.CUSTOMER,))
    kafka = ("--via", "kafka", "--bootstrap", system.bootstrap)
    placed = sagactl(system, "place", customers["cy"], f"{products['gong']}=1", *kafka, token=token)
    assert placed.returncode == 0 and "APPROVED" in placed.stdout, placed.stdout + placed.stderr
    order_id = placed.stdout.split("(order ")[1].split(")")[0]
    with ThreadPoolExecutor(2) as pool:
        both = list(pool.map(lambda _: sagactl(system, "cancel", order_id, *kafka, token=token), range(2)))
    said = sorted((r.returncode, "CANCELLED" in r.stdout, "order_not_cancellable" in r.stderr) for r in both)
    assert said == [(0, True, False), (1, False, True)], [(r.stdout, r.stderr) for r in both]


def test_a_command_is_authorized_like_the_http_call_it_stands_for(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    """Once, anyone who could write to orders.commands placed and cancelled orders for any
    customer: now a command carries the caller's bearer token and is decided like the
    HTTP call (docs/design.md §10)."""
    products, customers = seed(client, uid, {"lamp": ("4.00", 5)}, {"ivy": "20.00", "max": "20.00"})
    lamp, ivy, mx = products["lamp"], customers["ivy"], customers["max"]
    ivys = system.token(ivy, (Role.CUSTOMER,))
    own = command(ivy, {lamp: 1})
    send(system, encode_command(own), token=ivys)
    assert outcome(system, own.command_id, {"placed"})["status"] == "APPROVED"
    forged_issuer = write_dev_issuer(system.run_dir / "forged-issuer")  # a key no service trusts
    refused = {
        "missing_token": (command(ivy, {lamp: 1}), None),
        "invalid_token": (command(ivy, {lamp: 1}), forged_issuer.mint(ivy, [Role.CUSTOMER])),
        "forbidden": (command(mx, {lamp: 1}), ivys),  # ivy places an order for max
    }
    for reason, (placing, token) in refused.items():
        send(system, encode_command(placing), token=token)
        assert outcome(system, placing.command_id, {"rejected"})["reason"] == reason, reason
    # refused for its token, the same command sent again with a good one is applied: it was
    # once taken for a duplicate of the refused delivery and dropped, its order never placed
    resent, _ = refused["invalid_token"]
    send(system, encode_command(resent), token=ivys)
    assert outcome(system, resent.command_id, {"placed"})["status"] in {"PENDING", "APPROVED"}
    # and a copy refused afterwards (no token at all) does not make it look rejected
    send(system, encode_command(resent), token=None)
    placed_id = str(order_id_for(resent.command_id))
    end = time.monotonic() + 30
    while (view := outcome(system, resent.command_id, {"placed"}))["reason"] != "missing_token":
        assert time.monotonic() < end, view  # the latest refusal of a copy is named
        time.sleep(0.1)
    assert view["outcome"] == "placed"
    # neither copy sent without the customer's valid token is in her order's timeline
    assert [e["event_type"] for e in client.saga(placed_id)["events"]].count("CommandRejected") == 0
    # the header named as over HTTP: Kafka's header names are case-sensitive, ours is not
    capitalised = command(ivy, {lamp: 1})
    send(system, encode_command(capitalised), token=ivys, header="Authorization")
    assert outcome(system, capitalised.command_id, {"placed"})["status"] in {"PENDING", "APPROVED"}
    # two tokens, as two Authorization headers over HTTP: which one would it be? Neither
    twice = command(ivy, {lamp: 1})
    send(system, encode_command(twice), token=(ivys, system.token()))
    view = outcome(system, twice.command_id, {"rejected"})
    assert (view["reason"], view["detail"]) == ("invalid_token", "2 Authorization headers: send one")
    # max cannot cancel ivy's order: it is as unknown to him as over HTTP
    theirs = CancelOrder(command_id=uuid.uuid4(), order_id=order_id_for(own.command_id))
    send(system, encode_command(theirs), token=system.token(mx, (Role.CUSTOMER,)))
    assert outcome(system, theirs.command_id, {"rejected"})["reason"] == "unknown_order"
    assert client.order(str(order_id_for(own.command_id)))["status"] == "APPROVED"
    shown = client.saga(str(order_id_for(own.command_id)))["events"]  # nor in her timeline
    assert not [e for e in shown if e["payload"].get("command_id") == str(theirs.command_id)]
    assert client.account(mx)["balance"] == "20.00"
    client.wait_for_events(placed_id, {"InventoryCommitted"})
    client.wait_for_events(str(order_id_for(capitalised.command_id)), {"InventoryCommitted"})
    assert client.account(ivy)["balance"] == "8.00"  # her three orders, one lamp each
