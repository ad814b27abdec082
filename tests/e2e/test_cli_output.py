"""``sagactl`` at 80 columns, with ``--output json``, and its errors in one line."""

from __future__ import annotations

import json
import re
import uuid
from decimal import Decimal
from typing import Any

import pytest
import typer.main
from rich.cells import cell_len

from sagactl.cli import app
from sagastack.client import ApiError, SagaClient
from sagastack.system import System
from tests.e2e.conftest import UniqueIds, sagactl, sagactl_env, seed
from tests.e2e.test_nothing_lost import letters_from
from tests.polling import wait_until

#: The longest a customer or product id may be.
LONGEST_ID = 64


def commands() -> set[tuple[str, ...]]:
    """Every command of sagactl, as the words that name it: ``("dlq", "list")`` …"""

    def walk(command: Any, path: tuple[str, ...]) -> set[tuple[str, ...]]:
        subcommands = getattr(command, "commands", None)
        if not subcommands:
            return {path}
        return {found for name, sub in subcommands.items() for found in walk(sub, (*path, name))}

    return walk(typer.main.get_command(app), ())


def header_rows(out: str) -> list[list[str]]:
    """The header row of every table in ``out``, cell by cell (rich draws it with ┃)."""
    return [[cell.strip() for cell in ln.split("┃")[1:-1]] for ln in out.splitlines() if ln.startswith("┃")]


def a_dead_letter(system: System, order_id: str) -> int:
    """A dead letter in payment with a long reason and a saga id: an InventoryReserved of a
    version that never existed."""
    body = {
        "event_id": str(uuid.uuid4()),
        "event_type": "InventoryReserved",
        "schema_version": 0,
        "order_id": order_id,
    }
    value = json.dumps(body).encode()
    system.publish([("inventory.events", order_id.encode(), value)], signed_by="inventory_svc")
    wait_until(lambda: letters_from(system, "payment_svc", value) != [], 30, "payment dead-letters it")
    ((letter_id, _),) = letters_from(system, "payment_svc", value)
    return letter_id


@pytest.mark.broker_independent  # the layout of what is printed
def test_every_command_fits_80_columns_with_whole_headers(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    # the widest values the API accepts, so that the tables must wrap to fit
    long_customer = uid("customer-").ljust(LONGEST_ID, "c")
    long_product = uid("product-").ljust(LONGEST_ID, "p")
    products, customers = seed(client, uid, {"oar": ("9.00", 4)}, {"lea": "5.00"})  # lea cannot pay
    client.put_product(long_product, "a product with a long name " * 3, Decimal("1.50"), 10)
    client.put_account(long_customer, Decimal("1000.00"))
    rejected = client.place_order(customers["lea"], {products["oar"]: 1})
    approved = client.place_order(long_customer, {products["oar"]: 1, long_product: 2})
    client.wait_for_events(rejected, {"InventoryReleased", "OrderRejected"})
    client.wait_for_events(approved, {"InventoryCommitted"})
    letter = a_dead_letter(system, rejected)

    placed = sagactl(system, "place", long_customer, f"{products['oar']}=1", columns=80)
    assert placed.returncode == 0, placed.stderr
    to_cancel = placed.stdout.split()[1].rstrip(":")

    runs = {
        ("orders", "--limit", "50"): ["order", "customer", "status", "total", "items", "age"],
        ("orders", "--status", "rejected"): ["order", "customer", "status", "total", "items", "age"],
        ("dlq", "list"): ["service", "id", "event", "reason", "age"],
        ("dlq", "list", "--status", "ALL"): ["service", "id", "status", "event", "reason", "age"],
        ("stock",): ["product", "name", "price", "available", "reserved", "sold"],
        ("balances",): ["customer", "balance"],
        ("set-product", long_product, "--stock", "10"): [
            "product",
            "name",
            "price",
            "available",
            "reserved",
            "sold",
        ],
        ("set-balance", long_customer, "1000.00"): ["customer", "balance"],
        ("health",): ["service", "status", "check", "detail"],
        ("saga", rejected): [],
        ("saga", approved[:8]): [],  # the shortened id tables show
        ("dlq", "show", "payment", str(letter)): [],
        ("tail", "--from-start", "--count", "5"): [],
        ("cancel", to_cancel): [],
        ("audit", "verify"): [],
        ("audit", "list", "--limit", "50"): [  # the role under who, below 120 columns
            "service",
            "seq",
            "who",
            "what",
            "outcome",
            "age",
        ],
        ("forget", long_customer): [],
        ("--help",): [],
        ("dlq", "list", "--help"): [],
    }
    for args, headers in runs.items():
        result = sagactl(system, *args, columns=80)
        assert result.returncode == 0, (args, result.stderr)
        out = result.stdout
        # what is laid out (tables, panels, trees) fits; a one-line message stays one line
        # when piped, for a script to cut (sagactl._emit), and a terminal wraps it itself;
        # so do tail's lines, one per event, cut to a terminal's width alone (piped here)
        laid_out = len(out.splitlines()) > 1 and args[0] != "tail"
        too_wide = [ln for ln in out.splitlines() if cell_len(ln) > 80 and laid_out]
        assert not too_wide, (args, too_wide)
        assert "Traceback" not in result.stderr
        if headers:  # one header row per table, every header whole, on one line
            assert header_rows(out) == [headers], (args, out)

    orders = sagactl(system, "orders", "--limit", "50", columns=80).stdout
    assert rejected[:8] in orders and rejected not in orders  # ids shortened …
    wide = sagactl(system, "orders", "--limit", "50", "-o", "wide", columns=80).stdout
    assert rejected in wide and approved in wide  # … and whole with -o wide

    saga = sagactl(system, "saga", rejected, columns=80).stdout
    assert "amount=9.00" in saga and "reason=insufficient_funds" in saga
    assert "{'" not in saga  # payloads as text, not as Python reprs
    letters = sagactl(system, "dlq", "list", "--service", "payment", columns=80).stdout
    # its reason's code and why (a cell as wide as 80 columns leave folds it between them)
    assert f"order {rejected[:8]}" in letters and "invalid_event: unsupported" in letters, letters
    assert "schema_version" in letters, letters
    shown = sagactl(system, "dlq", "show", "payment", str(letter), columns=80).stdout
    assert "None" not in shown and f'"order_id": "{rejected}"' in shown


def as_json(system: System, *args: str) -> Any:
    result = sagactl(system, *args, "--output", "json", columns=80)
    assert result.returncode == 0, (args, result.stderr)
    return json.loads(result.stdout)  # nothing but the JSON on stdout


@pytest.mark.broker_independent  # the layout of what is printed
def test_every_command_prints_json_with_output_json(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    products, customers = seed(client, uid, {"cup": ("2.00", 5)}, {"max": "50.00"})
    order_id = client.place_order(customers["max"], {products["cup"]: 1})
    client.wait_for_events(order_id, {"InventoryCommitted"})
    letter = a_dead_letter(system, order_id)
    known, covered = commands(), set()

    def run(*args: str) -> Any:
        covered.add(next(c for c in known if args[: len(c)] == c))
        return as_json(system, *args)

    assert order_id in {o["order_id"] for o in run("orders", "--limit", "100")}
    saga = run("saga", order_id[:8])
    assert saga["order_id"] == order_id and saga["status"] == "APPROVED"
    assert {e["event_type"] for e in saga["events"]} >= {"OrderCreated", "InventoryCommitted"}
    assert products["cup"] in {p["product_id"] for p in run("stock")}
    assert {"customer_id": customers["max"], "balance": "48.00"} in run("balances")
    restocked = run("set-product", products["cup"], "--stock", "9")  # its name and price kept
    assert (restocked["name"], restocked["price"], restocked["available"]) == ("cup", "2.00", 9)
    assert run("set-balance", customers["max"], "60.00") == {
        "customer_id": customers["max"],
        "balance": "60.00",
    }
    listed = run("dlq", "list", "--service", "payment")
    assert (listed["unreachable"], listed["unavailable"]) == ({}, {})
    letters = listed["dead_letters"]
    assert {"service": "payment", "id": letter} in [{k: d[k] for k in ("service", "id")} for d in letters]
    assert run("dlq", "show", "payment", str(letter))["order_id"] == order_id
    assert run("dlq", "discard", "payment", str(letter))["status"] == "DISCARDED"
    placed = run("place", customers["max"], f"{products['cup']}=1")
    assert placed["status"] == "PENDING"
    assert run("cancel", placed["order_id"])["status"] == "CANCELLED"
    waited = run("place", customers["max"], f"{products['cup']}=1", "--wait")  # its outcome
    assert (waited["status"], waited["reason"]) == ("APPROVED", None), waited
    audited = run("audit", "list", "--service", "order", "--limit", "1000")["entries"]
    assert f"/orders/{placed['order_id']}" in {e["resource"] for e in audited}
    chains = run("audit", "verify")["chains"]
    assert set(chains) == {"order", "inventory", "payment"} and chains["order"]["problems"] == []
    assert run("forget", customers["max"]) == {"customer_id": customers["max"], "keys_destroyed": 0}
    minted = run("token", "--subject", customers["max"], "--role", "customer")
    assert minted["subject"] == customers["max"] and minted["token"].count(".") == 2
    # to a topic nobody consumes (the dead letters' copies): no other test meets it
    sent = run("publish", "payment_svc.deadletter", "--value", "{}", "--bootstrap", system.bootstrap)
    assert sent["topic"] == "payment_svc.deadletter" and sent["offset"] >= 0
    by_kafka = run(
        "place", customers["max"], f"{products['cup']}=1", "--via", "kafka", "--bootstrap", system.bootstrap
    )
    assert run("command", by_kafka["command_id"]) == by_kafka  # what became of it, as place waited for it
    grants = run("kafka-acls")  # the same whatever the broker: derived from the code
    sender = {"principal": "User:saga-client", "resource_type": "topic", "resource": "orders.commands"}
    assert {**sender, "operation": "Write"} in grants
    healthy = run("health")
    assert set(healthy) == {"order", "inventory", "payment"}
    assert "payment_provider" in healthy["payment"]["checks"]

    tail = sagactl(system, "tail", "--from-start", "--count", "3", "-o", "json", columns=80)
    covered.add(("tail",))
    assert tail.returncode == 0, tail.stderr
    lines = tail.stdout.splitlines()
    assert len(lines) == 3 and all("event_type" in json.loads(ln) for ln in lines)

    # a failed replay prints nothing on stdout either: the error goes to stderr
    replayed = sagactl(system, "dlq", "replay", "payment", str(letter), "-o", "json")
    covered.add(("dlq", "replay"))
    assert replayed.returncode == 1 and replayed.stdout == "" and "already DISCARDED" in replayed.stderr

    assert covered == commands()  # a new command gets a line here


def test_sagactl_places_through_kafka_with_output_json(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    products, customers = seed(client, uid, {"pen": ("1.00", 5)}, {"ida": "5.00"})
    args = ("place", customers["ida"], f"{products['pen']}=1", "--via", "kafka", "--bootstrap")
    view = as_json(system, *args, system.bootstrap)
    assert (view["outcome"], view["status"]) == ("placed", "APPROVED")
    sent = as_json(system, *args, system.bootstrap, "--no-wait")
    assert set(sent) == {"command_id", "order_id"}
    # as text, where its outcome will be (a trial: it said only that it was sent) …
    text = sagactl(system, *args, system.bootstrap, "--no-wait")
    order_id, command_id = re.fullmatch(
        r"sent PlaceOrder \(order (\S+)\), command (\S+)\n", text.stdout
    ).groups()
    assert text.stderr == (
        f"follow it: sagactl command {command_id}, or sagactl saga {order_id} once the"
        " order service has taken it\n"
    )

    def outcome(command_id: str) -> str | None:  # once the order service has taken the command
        said = sagactl(system, "command", command_id)
        if said.stdout.endswith(": not taken yet, or never sent\n"):
            assert said.returncode == 1, said  # no outcome: a typo'd id exited 0 (a newcomer trial)
            return None
        assert said.returncode == 0, said.stderr
        return said.stdout.strip()

    # … and the command followed, applied or refused (a trial: a refused one could not be)
    ended = wait_until(lambda: outcome(command_id), 30, "the PlaceOrder taken")
    assert ended.startswith(f"command {command_id}: placed; order {order_id}: "), ended
    # (sagactl cancels only an order that can be: by hand, a CancelOrder of no order)
    nothing, command_id = str(uuid.uuid4()), str(uuid.uuid4())
    wire = {"command_id": command_id, "command_type": "CancelOrder", "schema_version": 1}
    body = json.dumps({**wire, "payload": {"order_id": nothing}})
    token = f"authorization=Bearer {system.token()}"
    args = ("publish", "orders.commands", "--key", command_id, "-H", token, "--value", body)
    assert sagactl(system, *args, "--bootstrap", system.bootstrap).returncode == 0
    ended = wait_until(lambda: outcome(command_id), 30, "the CancelOrder taken")
    assert ended.startswith(f"command {command_id}: rejected: unknown_order: "), ended
    # a cancel's order is there to follow at once (it said "once the order service has taken
    # it", as of a PlaceOrder); over HTTP, where its compensation is followed too
    cancelled = sagactl(
        system, "cancel", view["order_id"], "--via", "kafka", "--bootstrap", system.bootstrap, "--no-wait"
    )
    said = re.fullmatch(r"sent CancelOrder \(order (\S+)\), command (\S+)\n", cancelled.stdout)
    assert said is not None and said[1] == view["order_id"], cancelled.stdout
    command_id = said[2]
    assert (
        cancelled.stderr == f"follow it: sagactl command {command_id}, or sagactl saga {view['order_id']}\n"
    )
    placed = as_json(system, "place", customers["ida"], f"{products['pen']}=1", "--wait")
    over_http = sagactl(system, "cancel", placed["order_id"])
    assert over_http.stdout.endswith(": CANCELLED, compensation under way\n"), over_http.stdout
    assert over_http.stderr == f"follow it: sagactl saga {placed['order_id'][:8]}\n"


def test_a_command_whose_acknowledgement_was_lost_may_have_been_sent(
    system: System, client: SagaClient, uid: UniqueIds, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attack trial: a command the broker wrote and whose acknowledgement did not come
    back was "cannot send to Kafka" (exit 3, which says nothing was sent), and the order
    service placed the order. The broker here takes the record (a real write); its
    acknowledgement is lost on the way back to sagactl, as a broker that fails over or a
    network that breaks loses it."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaTimeoutError
    from typer.testing import CliRunner

    written = AIOKafkaProducer.send_and_wait

    async def written_then_lost(self: AIOKafkaProducer, *args: Any, **kwargs: Any) -> Any:
        await written(self, *args, **kwargs)
        raise KafkaTimeoutError()

    monkeypatch.setattr(AIOKafkaProducer, "send_and_wait", written_then_lost)
    products, customers = seed(client, uid, {"pen": ("1.00", 5)}, {"ida": "5.00"})
    args = ["place", customers["ida"], f"{products['pen']}=1", "--via", "kafka"]
    args += ["--bootstrap", system.bootstrap]
    result = CliRunner().invoke(app, args, env=sagactl_env(system))
    said = " ".join(result.output.split())
    assert result.exit_code == 4, said
    assert "did not acknowledge it (KafkaTimeoutError): it may have been written" in said, said
    look = re.search(r"see whether it was taken: sagactl command \S+, or sagactl saga (\S+) once", said)
    assert look is not None, said

    def approved() -> bool:  # it was written, and taken
        try:
            return bool(client.order(look[1])["status"] == "APPROVED")
        except ApiError:  # not placed yet: 404
            return False

    wait_until(approved, 60, f"order {look[1]} APPROVED")


#: An order of 101 lines, one more than the API takes (sagactl leaves that rule to it).
LINES_101 = tuple(f"p{n}=1" for n in range(101))


@pytest.mark.broker_independent  # the layout of what is printed
def test_errors_are_one_line_on_stderr(system: System) -> None:
    nowhere = "http://127.0.0.1:9"
    cases: dict[tuple[str, ...], tuple[int, str]] = {
        ("saga", str(uuid.UUID(int=0))): (1, "answered 404: order 00000000"),
        ("saga", "ffffffff"): (1, "no order id starts with 'ffffffff'"),
        # the services' validation errors (422): where and why, not the raw list (a status,
        # a limit or a dead letter id out of range is sagactl's own usage error now: tests/unit)
        ("place", "amy", *LINES_101): (1, "answered 422: invalid request: items: List should have at most"),
        ("--payment-url", nowhere, "balances"): (3, f"cannot reach the payment service at {nowhere}"),
        ("--order-url", nowhere, "tail"): (3, f"cannot reach the order service at {nowhere}"),
        # and what to do about it
        ("--inventory-url", nowhere, "stock"): (
            3,
            "'make run' starts it, and starts a service that stopped again within seconds: ask"
            " again; if it listens elsewhere, say where with --inventory-url or SAGACTL_INVENTORY_URL",
        ),
        # checked here before anything is sent, so no broker is needed
        ("place", "amy", *LINES_101, "--via", "kafka"): (2, "not a valid order: items: Tuple should have"),
        ("place", "amy", "cup=10001"): (2, "'cup=10001': a line's quantity is at most 10,000"),
        ("place", "amy", "cup=0"): (2, "'cup=0': expected product=quantity, a whole number of 1 or more"),
    }
    for args, (code, said) in cases.items():
        for output in ("text", "json"):
            result = sagactl(system, *args, "-o", output, columns=80)
            assert result.returncode == code, (args, result.stdout, result.stderr)
            assert result.stdout == "", (args, result.stdout)
            assert len(result.stderr.splitlines()) == 1, (args, result.stderr)
            assert said in result.stderr, (args, result.stderr)
            assert "{" not in result.stderr and "'loc'" not in result.stderr, result.stderr
