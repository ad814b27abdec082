"""``make demo``: every saga outcome, end to end, on the real servers.

Starts the system in a fresh run directory, seeds a catalogue and accounts, and runs
eight sagas — approved; rejected for lack of stock; rejected for lack of funds with the
reservation released; approved then cancelled by the customer, refunded and restocked;
cancelled by its deadline while payment is down (whatever payment does once back, the
customer keeps his money); one placed by a command on Kafka instead of HTTP; and one
with a forged PaymentCompleted, refused for its missing signature; and one that waits out
an outage of the payment provider (its circuit breaker open) and is charged once after —
printing each timeline with the final order, stock and balance. Then a mixed load of
orders (progress bars) gives the dashboard something to show, the invariants of
docs/design.md §6 are checked, and it exits non-zero if anything is off. It ends by printing
where the dashboard is; on a terminal the system keeps running until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from saga_kit.auth import Role
from sagastack import invariants
from sagastack.chaos import CONSUMED_WAIT_SECONDS, service_reads, unconsumed
from sagastack.cli_types import count
from sagastack.client import TERMINAL, SagaClient
from sagastack.progress import bar
from sagastack.system import SERVICES, System, choose_broker

PRODUCTS = {
    "widget": ("Widget", Decimal("12.50"), 10),
    "gadget": ("Gadget", Decimal("99.99"), 1),
    "lamp": ("Lamp", Decimal("20.00"), 5),
    "kite": ("Kite", Decimal("7.00"), 3),
    "mug": ("Mug", Decimal("4.50"), 80),
    "book": ("Book", Decimal("15.00"), 60),
}
ACCOUNTS = {
    "alice": Decimal("500.00"),
    "bob": Decimal("20.00"),
    "carol": Decimal("100.00"),
    "dave": Decimal("50.00"),
    "erin": Decimal("300.00"),
    "frank": Decimal("12.00"),
    "gina": Decimal("80.00"),
}


@dataclass(frozen=True)
class Scenario:
    title: str
    customer: str
    items: dict[str, int]
    status: str
    reason: str | None
    events: tuple[str, ...]
    #: "cancel": the customer cancels once it is APPROVED; "payment down": payment is
    #: stopped while the order waits, so its deadline passes.
    twist: str | None = None
    deadline_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


SCENARIOS = (
    Scenario(
        "approved: alice buys 2 widgets",
        "alice",
        {"widget": 2},
        "APPROVED",
        None,
        (
            "OrderCreated",
            "InventoryReserved",
            "PaymentCompleted",
            "OrderApproved",
            "InventoryCommitted",
        ),
    ),
    Scenario(
        "rejected, out of stock: alice wants 1 widget and 5 gadgets (1 in stock)",
        "alice",
        {"widget": 1, "gadget": 5},
        "REJECTED",
        "insufficient_stock",
        ("OrderCreated", "InventoryReservationFailed", "OrderRejected"),
    ),
    Scenario(
        "rejected, no funds: bob (20.00) buys a gadget (99.99); its reservation is released",
        "bob",
        {"gadget": 1},
        "REJECTED",
        "insufficient_funds",
        (
            "OrderCreated",
            "InventoryReserved",
            "PaymentFailed",
            "OrderRejected",
            "InventoryReleased",
        ),
    ),
    Scenario(
        "cancelled by the customer after approval: carol's lamps are refunded and restocked",
        "carol",
        {"lamp": 2},
        "CANCELLED",
        "cancelled_by_customer",
        (
            "OrderCreated",
            "InventoryReserved",
            "PaymentCompleted",
            "OrderApproved",
            "InventoryCommitted",
            "OrderCancelled",
            "InventoryReleased",
            "PaymentRefunded",
        ),
        twist="cancel",
    ),
    Scenario(
        "cancelled by its deadline: payment is down, dave's 2 s deadline passes, stock is"
        " released; back up, payment either voids the order (PaymentVoided) or charges and"
        " refunds it: he keeps his money",
        "dave",
        {"kite": 1},
        "CANCELLED",
        "timeout",
        ("OrderCreated", "InventoryReserved", "OrderCancelled", "InventoryReleased"),
        twist="payment down",
        deadline_seconds=2.0,
    ),
    Scenario(
        "started from Kafka: erin's PlaceOrder command on orders.commands, no HTTP at all",
        "erin",
        {"book": 2},
        "APPROVED",
        None,
        (
            "PlaceOrder",
            "OrderCreated",
            "InventoryReserved",
            "PaymentCompleted",
            "OrderApproved",
            "InventoryCommitted",
        ),
        twist="kafka",
    ),
    Scenario(
        "forged: a PaymentCompleted of 0.00 for frank's book (he has 12.00) is published unsigned"
        " (not signed with payment_svc's signing key); order and inventory dead-letter it"
        " (bad_signature) and the real payment fails",
        "frank",
        {"book": 1},
        "REJECTED",
        "insufficient_funds",
        ("OrderCreated", "InventoryReserved", "PaymentFailed", "OrderRejected", "InventoryReleased"),
        twist="forged",
    ),
    Scenario(
        "waits out a payment provider outage: gina's mugs are reserved while the provider is"
        " down; payment says it is waiting (PaymentPending), its circuit breaker opens and"
        " fails fast; the provider comes back, the same charge goes through once",
        "gina",
        {"mug": 3},
        "APPROVED",
        None,
        (
            "OrderCreated",
            "InventoryReserved",
            "PaymentPending",
            "PaymentCompleted",
            "OrderApproved",
            "InventoryCommitted",
        ),
        twist="provider outage",
    ),
)


def _summary(event: dict[str, Any]) -> str:
    p: dict[str, Any] = event["payload"]
    match event["event_type"]:
        case "OrderCreated":
            return ", ".join(f"{i['quantity']} x {i['product_id']}" for i in p["items"])
        case "InventoryReserved":
            lines = ", ".join(f"{x['quantity']} x {x['product_id']} @ {x['unit_price']}" for x in p["lines"])
            return f"{lines}; total {p['total']}"
        case "InventoryReservationFailed":
            return f"{p['reason']}: {', '.join(p['product_ids'])}"
        case "PaymentCompleted":
            return f"charged {p['amount']}"
        case "PaymentFailed":
            return f"{p['reason']} for {p['amount']}"
        case "OrderRejected" | "OrderCancelled":
            return str(p["reason"])
        case "PlaceOrder":
            return f"command {p['command_id']}: " + ", ".join(
                f"{i['quantity']} x {i['product_id']}" for i in p["items"]
            )
        case "PaymentRefunded":
            return f"refunded {p['amount']}"
        case "PaymentVoided":
            return f"never to be charged ({p['reason']})"
        case "PaymentPending":
            return f"waiting on the provider: {p['reason']}"
        case "InventoryCommitted" | "InventoryReleased":
            return ", ".join(f"{x['quantity']} x {x['product_id']}" for x in p["lines"])
    return ""


def _cause(event: dict[str, Any], names: dict[str, str]) -> str:
    """What ``event`` answered: the event that caused it (``names``: event id → type), or,
    for an event that answers no event, where the request came from."""
    if event["causation_id"] is not None:
        return f"← {names.get(event['causation_id'], 'an earlier event')}"
    match event["event_type"], event["payload"].get("reason"):
        case "PlaceOrder" | "CancelOrder", _:
            return "← a client, on Kafka"
        case "OrderCreated", _:
            return "← POST /orders"
        case "OrderCancelled", "timeout":
            return "← its deadline"
        case "OrderCancelled", "cancelled_by_customer":
            return "← POST …/cancel"
        case "OrderCancelled", "cancelled_by_operator":
            return "← POST …/cancel (an operator)"
        case "OrderCancelled", "unknown_order":
            return "← a reply about an order never placed"
    return "← a request"


def money_moved(events: list[dict[str, Any]]) -> str:
    """What the saga did with the customer's money, from its payment events: ``nothing
    charged``, ``charged X``, ``charged X, refunded Y``, or ``never charged (voided)``."""
    charged = sum(
        (Decimal(e["payload"]["amount"]) for e in events if e["event_type"] == "PaymentCompleted"), Decimal()
    )
    refunded = sum(
        (Decimal(e["payload"]["amount"]) for e in events if e["event_type"] == "PaymentRefunded"), Decimal()
    )
    if charged:
        return f"charged {charged}" + (f", refunded {refunded}" if refunded else "")
    if any(e["event_type"] == "PaymentVoided" for e in events):
        return "never charged (the payment was voided)"
    return "nothing charged"


def print_timeline(saga: dict[str, Any]) -> None:
    events = saga["events"]
    names = {e["event_id"]: e["event_type"] for e in events}
    start = datetime.fromisoformat(events[0]["occurred_at"])
    for e in events:
        ms = (datetime.fromisoformat(e["occurred_at"]) - start).total_seconds() * 1000
        cause = _cause(e, names)
        print(f"    +{ms:6.0f} ms  {e['producer']:<13} {e['event_type']:<27} {cause:<29} {_summary(e)}")


def send_command(system: System, customer: str, items: dict[str, int]) -> str:
    """Place an order the Kafka way: a PlaceOrder command on orders.commands (its order id
    follows from the command id, before any answer)."""
    from events import OrderLine
    from events.commands import AUTHORIZATION, PlaceOrder, encode_command, order_id_for
    from events.topics import COMMANDS
    from saga_kit.auth import Role

    command = PlaceOrder(
        command_id=uuid.uuid4(),
        customer_id=customer,
        items=tuple(OrderLine(product_id=p, quantity=q) for p, q in items.items()),
    )
    bearer = f"Bearer {system.token(customer, (Role.CUSTOMER,))}".encode()  # the customer's own token
    system.publish(
        [(COMMANDS, str(command.command_id).encode(), encode_command(command))],
        headers=[(AUTHORIZATION, bearer)],
    )
    order_id = str(order_id_for(command.command_id))
    end = time.monotonic() + 30
    while time.monotonic() < end:  # the order exists once the order service took the command
        if client_order_exists(system, order_id):
            break
        time.sleep(0.05)
    return order_id


def forge_payment(system: System, customer: str, order_id: str) -> None:
    """What anyone who can write to payment.events could do: a well-formed PaymentCompleted
    of 0.00, unsigned (it cannot be signed without payment's private key)."""
    from events import PaymentCompleted, encode
    from events.envelope import new_envelope
    from events.topics import PAYMENT

    forged = new_envelope(
        PaymentCompleted(customer_id=customer, amount=Decimal("0.00")),
        order_id=uuid.UUID(order_id),
        causation_id=None,
    )
    system.publish([(PAYMENT, order_id.encode(), encode(forged))])


def refused(system: System, order_id: str, timeout: float = 30.0) -> dict[str, str]:
    """Service → reason of the dead letters the forged event of ``order_id`` became."""

    end = time.monotonic() + timeout
    while True:
        found = {
            name: letter["reason"]
            for name in ("order_svc", "inventory_svc")
            for letter in system.http.get(f"{system.url(name)}/dead-letters", timeout=5).json()
            if letter["order_id"] == order_id
        }
        if len(found) == 2 or time.monotonic() > end:
            return found
        time.sleep(0.1)


#: How a saga's verdict begins while payment waits on the provider (order_svc.explain).
WAITING_ON_PROVIDER = "in flight: waiting on the payment provider"


def wait_out_outage(
    system: System, client: SagaClient, order_id: str, timeout: float = 30.0
) -> tuple[str, bool]:
    """With the provider down: wait until payment's breaker is open (its readiness says
    degraded) and the saga says it waits on the provider (its ``PaymentPending`` has
    reached the order service: the breaker opens ~1 s after the first failed call, and
    the event may be on its way still), show both, then end the outage. Also whether the
    breaker was seen open."""
    end = time.monotonic() + timeout
    degraded = verdict = ""
    while time.monotonic() < end:
        # as the operator: the reason (the breaker open) is given to an operator only
        ready = system.http.get(f"{system.url('payment_svc')}/health/ready", timeout=5).json()
        degraded = ready.get("checks", {}).get("payment_provider", {}).get("degraded") or ""
        if degraded and "open" in degraded:
            verdict = client.saga(order_id)["explanation"]["verdict"]
            if verdict.startswith(WAITING_ON_PROVIDER):
                break
        time.sleep(0.2)
    verdict = verdict or client.saga(order_id)["explanation"]["verdict"]
    system.provider_faults()
    return (
        f"payment readiness: degraded — {degraded or 'not seen'}\n"
        f"    this saga meanwhile: {verdict}\n    provider back up"
    ), "open" in degraded


def client_order_exists(system: System, order_id: str) -> bool:

    return system.http.get(f"{system.url('order_svc')}/orders/{order_id}", timeout=5).status_code == 200


def settled(client: SagaClient, order_id: str, timeout: float = 30.0) -> Any:
    """The saga once payment has settled its part of a cancellation: voided (it will never
    charge), or refunded a charge that landed before it heard of the cancel."""
    end = time.monotonic() + timeout
    while True:
        saga = client.saga(order_id)
        types = {e["event_type"] for e in saga["events"]}
        if types & {"PaymentVoided", "PaymentRefunded", "PaymentFailed"} or time.monotonic() > end:
            return saga
        time.sleep(0.1)


def story_problems(
    n: int, sc: Scenario, saga: dict[str, Any], balance: Decimal, breaker_opened: bool | None = None
) -> list[str]:
    """What the headline promises, checked against the timeline it is printed with: every
    owed compensation done; saga 5's customer keeps his money, payment having either voided
    the order or charged and refunded it; saga 8's customer is charged once, and payment's
    circuit breaker was seen open (``breaker_opened``) while the provider was down."""
    got = {e["event_type"] for e in saga["events"]}
    found = []
    if sc.twist == "provider outage" and not breaker_opened:
        found.append(f"saga {n}: payment's circuit breaker was not seen open while the provider was down")
    if sc.twist == "provider outage":
        charges = [e for e in saga["events"] if e["event_type"] == "PaymentCompleted"]
        if len(charges) != 1:
            found.append(f"saga {n}: {len(charges)} charges in the timeline, not one")
        else:
            owed = ACCOUNTS[sc.customer] - Decimal(str(charges[0]["payload"]["amount"]))
            if balance != owed:
                found.append(f"saga {n}: {sc.customer} has {balance}, not {owed} (charged once)")
    if saga["explanation"]["settled"] is not True:
        found.append(f"saga {n}: still owed: {saga['explanation']['owed']}")
    if sc.twist == "payment down":
        voided = "PaymentVoided" in got and "PaymentCompleted" not in got
        refunded = {"PaymentCompleted", "PaymentRefunded"} <= got and "PaymentVoided" not in got
        if not (voided or refunded):
            found.append(f"saga {n}: payment neither voided nor charged and refunded: {sorted(got)}")
        if balance != ACCOUNTS[sc.customer]:
            found.append(f"saga {n}: {sc.customer} has {balance}, not his {ACCOUNTS[sc.customer]}")
    return found


def stray_dead_letters(letters: Mapping[str, list[dict[str, Any]]], forged: str | None) -> list[str]:
    """Every dead letter (service → its dead letters) but those of the forged event of
    saga ``forged``, refused on purpose. A real event dead-lettered cuts its saga short:
    its deadline then cancels the order, releases the stock, charges nothing, and every
    invariant holds."""
    return [
        f"{name} dead-lettered a real event: {d['event_type']} {d['order_id']}: {d['reason']}"
        for name, found in letters.items()
        for d in found
        if forged is None or d["order_id"] != forged
    ]


def dead_letters(system: System) -> dict[str, list[dict[str, Any]]]:
    """Each service's dead letters, whatever their status."""
    return {
        name: system.http.get(
            f"{system.url(name)}/dead-letters", params={"status": "ALL", "limit": 1000}, timeout=10
        )
        .raise_for_status()
        .json()
        for name in SERVICES
    }


def place_load(client: SagaClient, n: int) -> None:
    """A mixed load so the dashboard has sagas of every kind to show."""
    if n <= 0:
        return
    rng = random.Random(7)
    customers, products = list(ACCOUNTS), ["mug", "book", "widget", "gadget"]
    print(f"\n  and {n} more orders of every kind, for the dashboard:")
    placed = []
    with bar() as progress:
        task = progress.add_task("placing orders", total=n)
        for _ in range(n):
            items = {p: rng.randint(1, 3) for p in rng.sample(products, rng.randint(1, 2))}
            placed.append(client.place_order(rng.choice(customers), items))
            progress.advance(task)
        for order_id in rng.sample(placed, max(1, n // 10)):
            if client.order(order_id)["status"] in ("PENDING", "APPROVED"):
                client.http.post(f"{client.order_url}/orders/{order_id}/cancel")
        done = progress.add_task("sagas finished", total=n)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            finished = sum(1 for o in client.orders(limit=1000) if o["status"] in TERMINAL)
            progress.update(done, completed=min(n, finished - len(SCENARIOS)))
            if finished >= n + len(SCENARIOS):
                break
            time.sleep(0.25)


def show_access(system: System, order_id: str, owner: str) -> list[str]:
    """Who may read an order (saga_kit.auth): nobody without a token (401), another
    customer as if it did not exist (404), its customer and the operator (200)."""
    url = f"{system.url('order_svc')}/orders/{order_id}"
    other = next(c for c in ACCOUNTS if c != owner)
    seen = {
        "without a token": httpx.get(url, timeout=5).status_code,
        f"as {other} (customer)": httpx.get(url, headers=system.auth(other, [Role.CUSTOMER])).status_code,
        f"as {owner} (customer)": httpx.get(url, headers=system.auth(owner, [Role.CUSTOMER])).status_code,
        "as the operator": system.http.get(url).status_code,
    }
    print(f"\n  Access — {owner}'s order {order_id[:8]}: " + ", ".join(f"{k} {v}" for k, v in seen.items()))
    if list(seen.values()) != [401, 404, 200, 200]:
        return [f"access to {owner}'s order: expected 401, 404, 200, 200; got {seen}"]
    return []


#: The personal data of the first saga's order.
PERSONAL_DATA = {"email": "alice@example.org", "shipping_address": "1 Harbour Road, Kingston"}


def show_forgetting(client: SagaClient, order_id: str, owner: str) -> list[str]:
    """Forget the customer (crypto-shredding): its personal data is unreadable afterwards,
    its order's status and total are not touched."""
    before = client.order(order_id)
    forgotten = client.forget(owner)
    after = client.order(order_id)
    print(
        f"\n  Forgetting {owner} — personal data of order {order_id[:8]} was"
        f" {json.dumps(before['personal_data'])};"
        f"\n    {owner}'s data keys destroyed ({forgotten['keys_destroyed']}): every sealed copy, the Kafka"
        f" log's included, is unreadable: the order shows {json.dumps(after['personal_data'])};"
        f" the order is still {after['status']}, total {after['total']}"
    )
    if not (after["personal_data"] or {}).get("erased") or (after["status"], after["total"]) != (
        before["status"],
        before["total"],
    ):
        return [f"forgetting {owner}: expected the personal data erased and the order unchanged, got {after}"]
    return []


def run_demo(system: System, n_orders: int = 0) -> list[str]:
    problems: list[str] = []
    client = system.client()
    try:
        for pid, (name, price, stock) in PRODUCTS.items():
            client.put_product(pid, name, price, stock)
        for customer, balance in ACCOUNTS.items():
            client.put_account(customer, balance)
        print(
            "seeded: "
            + ", ".join(f"{p} ({v[2]} @ {v[1]})" for p, v in PRODUCTS.items())
            + "; "
            + ", ".join(f"{c} ({b})" for c, b in ACCOUNTS.items())
        )
        print(
            "bearer tokens: the operator's sets stock and balances; each customer places and"
            " follows its own orders with a token of its own"
        )
        print(
            "each saga's timeline: +ms since the order was placed · the service that emitted the"
            " event · the event · ← what caused it · what it says;\n⇒ how the saga ended, and"
            " what it did with the customer's money"
        )
        first_order: tuple[str, str] | None = None
        forged: str | None = None  # the order of saga 7, whose forged event is refused
        expected = 0  # sagas that ended as their scenario says
        for n, sc in enumerate(SCENARIOS, start=1):
            outage, breaker_opened = "", None
            mine = system.client(sc.customer)  # the customer's own bearer token
            if sc.twist == "payment down":
                system.stop_service("payment_svc")
            if sc.twist == "provider outage":
                system.provider_faults(outage=True)
            if sc.twist == "kafka":
                order_id = send_command(system, sc.customer, sc.items)
            else:
                # the first saga's order carries personal data (sealed with the customer's key)
                personal = {} if first_order else PERSONAL_DATA
                order_id = mine.place_order(
                    sc.customer, sc.items, deadline_seconds=sc.deadline_seconds, **personal
                )
                first_order = first_order or (order_id, sc.customer)
            if sc.twist == "forged":
                forged = order_id
                forge_payment(system, sc.customer, order_id)
            if sc.twist == "cancel":
                mine.wait_for_events(order_id, {"InventoryCommitted"})
                mine.cancel(order_id)
            if sc.twist == "provider outage":
                outage, breaker_opened = wait_out_outage(system, client, order_id)
            saga = mine.wait_for_events(order_id, set(sc.events))
            mine.close()
            if sc.twist == "payment down":
                system.start_service("payment_svc")
                invariants.wait_for_quiescence(system.database_urls, timeout=30)
                saga = settled(client, order_id)  # with whatever payment did on its return
            order = client.order(order_id)
            print(f"\n  Saga {n} — {sc.title}\n    order {order_id}")
            if outage:
                print(f"    (provider down) {outage}")
            if sc.twist == "payment down":
                print(
                    "    (payment_svc down) stopped before the order was placed; started again once"
                    " its deadline had cancelled it — what payment did then is the timeline's last"
                    " lines (PaymentVoided, or a charge and its PaymentRefunded)"
                )
            print_timeline(saga)
            reason = f" ({order['reason']})" if order["reason"] else ""
            total = f"order total {order['total']}" if order["total"] else "no total (nothing was priced)"
            print(f"    ⇒ {order['status']}{reason}; {total}; {money_moved(saga['events'])}")
            for pid in sc.items:
                p = client.product(pid)
                held = f"available {p['available']}, reserved {p['reserved']}, sold {p['sold']}"
                print(f"      stock {pid}: {held}")
            balance = client.account(sc.customer)["balance"]
            print(f"      balance {sc.customer}: {balance}")
            why = saga["explanation"]
            print(f"      why: {why['verdict']}")
            before = len(problems)
            problems += story_problems(n, sc, saga, Decimal(balance), breaker_opened)
            if sc.twist == "forged":
                letters = refused(system, order_id)
                for name, why in letters.items():
                    print(f"      forged PaymentCompleted, dead letter at {name}: {why}")
                if len(letters) != 2 or not all(r.startswith("bad_signature") for r in letters.values()):
                    problems.append(f"saga {n}: the forged event was not refused by both: {letters}")
            got = tuple(e["event_type"] for e in saga["events"])
            if order["status"] != sc.status or order["reason"] != sc.reason:
                problems.append(
                    f"saga {n}: expected {sc.status}/{sc.reason}, got {order['status']}/{order['reason']}"
                )
            if not set(sc.events) <= set(got) or (sc.twist is None and sorted(got) != sorted(sc.events)):
                problems.append(f"saga {n}: expected events {sc.events}, got {got}")
            # each saga's own verdict, so that "did it work?" needs no reading between lines
            as_expected = len(problems) == before
            print("    ✓ as expected" if as_expected else "    ✗ NOT as expected (FAIL lines below)")
            expected += as_expected
        print(f"\n  {expected} of {len(SCENARIOS)} sagas ended as expected")
        if first_order is not None:
            problems += show_access(system, *first_order)
            problems += show_forgetting(client, *first_order)
        place_load(client, n_orders)
    finally:
        client.close()
    return problems + final_checks(system, forged)


def final_checks(system: System, forged: str | None) -> list[str]:
    """Once the stack settled, and every consumer group consumed its topics to the end
    (a partition a consumer stopped reading leaves its sagas to their deadlines, and every
    invariant holds), and the stack settled again after what those last events did: the
    invariants, then the dead letters (``stray_dead_letters``)."""
    invariants.wait_for_quiescence(system.database_urls, timeout=60)
    behind = asyncio.run(
        unconsumed(
            system.bootstrap,
            system.kafka_security.client_kwargs(),
            service_reads(commands=True),
            CONSUMED_WAIT_SECONDS,
        )
    )
    invariants.wait_for_quiescence(system.database_urls, timeout=30)
    violations = invariants.check(
        system.database_urls,
        {pid: v[2] for pid, v in PRODUCTS.items()},
        ACCOUNTS,
        system.provider_url,
    )
    return (
        [f"invariant violated: {x}" for x in violations]
        + stray_dead_letters(dead_letters(system), forged)
        + behind
    )


def main(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    broker, note = choose_broker()
    if note:
        print(note, flush=True)
    system = System(run_dir, free_ports=True, fresh=True, broker_kind=broker)
    keep = sys.stdin.isatty() if args.keep is None else args.keep
    print("starting broker, database, the payment provider simulator and the three services …", flush=True)
    with system:
        print(f"  broker: {system.broker_description()}", flush=True)
        print("  " + ", ".join(f"{n} {system.url(n)}" for n in SERVICES), flush=True)
        if system.provider is not None:
            print(f"  payment provider simulator {system.provider.url}", flush=True)
        problems = run_demo(system, args.orders)
        print()
        for p in problems:
            print(f"FAIL: {p}")
        if not problems:
            print(
                "invariants of docs/design.md §6 hold: all orders terminal, stock and money conserved,"
                " every payment reconciled with the provider's ledger, no effect applied twice,"
                " the orders' counts by status exact"
            )
        print(f"traces: {system.run_dir / 'traces'}   logs: {system.run_dir / 'logs'}")
        if keep:  # addresses and a token only for a system that goes on running
            # the operator's token rides in the fragment: it never reaches a server's log
            dashboard = f"{system.url('order_svc')}/dashboard#token={system.token()}"
            env = " ".join(f"{k}={v}" for k, v in system.sagactl_env().items())
            print(f"sagactl: export {env} SAGA_ISSUER_DIR={system.run_dir / 'keys' / 'issuer'}")
            print("         export SAGA_TOKEN=$(.venv/bin/sagactl token)   # an operator's development token")
            print(f"invariants, once it settles again: make invariants RUN_DIR={system.run_dir}")
            # the link alone on its line: copied to the line's end, it must stay a link
            print(f"\ndashboard: {dashboard}", flush=True)
            print("\nthe system keeps running; Ctrl-C stops everything", flush=True)
            with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C, or SIGTERM (see __main__)
                system.keep_running(threading.Event(), again="make demo")
            print("stopping …", flush=True)
        else:
            print(
                "\nthe system stops now; `make demo` in a terminal (or KEEP=1) keeps it running,"
                " with its dashboard and sagactl",
                flush=True,
            )
    if keep:
        print("stopped", flush=True)
    return 1 if problems else 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="run every saga outcome (eight scenarios) and check the invariants")
    p.add_argument("--run-dir", default=".run/demo")
    p.add_argument("--orders", type=count, default=40, help="extra orders for the dashboard (0: none)")
    keep = p.add_mutually_exclusive_group()
    keep.add_argument("--keep", dest="keep", action="store_true", default=None, help="keep running after")
    keep.add_argument(
        "--no-keep", dest="keep", action="store_false", help="stop at the end (default off a TTY)"
    )
    p.set_defaults(func=main)
