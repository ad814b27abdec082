"""``make demo``: every saga outcome, end to end, on the real servers.

Starts the system in a fresh run directory, seeds a catalogue and two accounts, runs
three sagas — approved; rejected for lack of stock; rejected for lack of funds with the
reservation compensated — prints each timeline with the final order, stock and balance,
checks the invariants of DESIGN §5 and exits non-zero if anything is off.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sagastack import invariants
from sagastack.client import SagaClient
from sagastack.system import System

PRODUCTS = {"widget": ("Widget", Decimal("12.50"), 10), "gadget": ("Gadget", Decimal("99.99"), 1)}
ACCOUNTS = {"alice": Decimal("500.00"), "bob": Decimal("20.00")}


@dataclass(frozen=True)
class Scenario:
    title: str
    customer: str
    items: dict[str, int]
    status: str
    reason: str | None
    events: tuple[str, ...]


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
        case "OrderRejected":
            return str(p["reason"])
        case "InventoryCommitted" | "InventoryReleased":
            return ", ".join(f"{x['quantity']} x {x['product_id']}" for x in p["lines"])
    return ""


def print_timeline(saga: dict[str, Any]) -> None:
    events = saga["events"]
    names = {e["event_id"]: e["event_type"] for e in events}
    start = datetime.fromisoformat(events[0]["occurred_at"])
    for e in events:
        ms = (datetime.fromisoformat(e["occurred_at"]) - start).total_seconds() * 1000
        cause = f"← {names.get(e['causation_id'], 'HTTP POST /orders')}"
        print(f"    +{ms:6.0f} ms  {e['producer']:<13} {e['event_type']:<27} {cause:<26} {_summary(e)}")


def run_demo(system: System) -> list[str]:
    problems: list[str] = []
    client = SagaClient(system.url("order_svc"), system.url("inventory_svc"), system.url("payment_svc"))
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
        for n, sc in enumerate(SCENARIOS, start=1):
            order_id = client.place_order(sc.customer, sc.items)
            saga = client.wait_for_events(order_id, set(sc.events))
            order = client.order(order_id)
            print(f"\n  Saga {n} — {sc.title}\n    order {order_id}")
            print_timeline(saga)
            reason = f" ({order['reason']})" if order["reason"] else ""
            print(f"    ⇒ {order['status']}{reason}, total {order['total'] or '—'}")
            for pid in sc.items:
                p = client.product(pid)
                held = f"available {p['available']}, reserved {p['reserved']}, sold {p['sold']}"
                print(f"      stock {pid}: {held}")
            print(f"      balance {sc.customer}: {client.account(sc.customer)['balance']}")
            got = tuple(e["event_type"] for e in saga["events"])
            if order["status"] != sc.status or order["reason"] != sc.reason:
                problems.append(
                    f"saga {n}: expected {sc.status}/{sc.reason}, got {order['status']}/{order['reason']}"
                )
            if sorted(got) != sorted(sc.events):
                problems.append(f"saga {n}: expected events {sc.events}, got {got}")
    finally:
        client.close()
    invariants.wait_for_quiescence(system.database_urls, timeout=30)
    violations = invariants.check(
        system.database_urls,
        {pid: v[2] for pid, v in PRODUCTS.items()},
        ACCOUNTS,
    )
    return problems + [f"invariant violated: {x}" for x in violations]


def main(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    system = System(run_dir, free_ports=True, fresh=True)
    print("starting broker, database and the three services …", flush=True)
    with system:
        print("  " + ", ".join(f"{n} {system.url(n)}" for n in system.services), flush=True)
        problems = run_demo(system)
    print()
    if problems:
        for p in problems:
            print(f"FAIL: {p}")
        return 1
    print(
        "invariants of DESIGN §5 hold: all orders terminal, stock and money conserved,"
        " no effect applied twice"
    )
    print("demo OK — everything it started has stopped")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the three saga outcomes and check the invariants")
    p.add_argument("--run-dir", default=".run/demo")
    p.set_defaults(func=main)
