"""``sagactl``: operate a running system over the services' HTTP APIs.

It talks to the services only through their public endpoints, so it works the same
against ``make run``, a compose deployment or a test system. Service URLs default to
``make run``'s ports and are overridden per service with ``--order-url`` … or the
environment (``SAGACTL_ORDER_URL``, ``SAGACTL_INVENTORY_URL``, ``SAGACTL_PAYMENT_URL``).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Column, Table
from rich.text import Text

console = Console()
app = typer.Typer(help=__doc__, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False)
dlq = typer.Typer(help="Dead letters: events a service could not process.", no_args_is_help=True)
app.add_typer(dlq, name="dlq")

SERVICES = ("order", "inventory", "payment")


@dataclass
class Urls:
    order: str
    inventory: str
    payment: str

    def of(self, service: str) -> str:
        return str(getattr(self, service))


def _urls(ctx: typer.Context) -> Urls:
    urls: Urls = ctx.obj
    return urls


@app.callback()
def main(
    ctx: typer.Context,
    order_url: Annotated[str, typer.Option(envvar="SAGACTL_ORDER_URL")] = "http://127.0.0.1:8001",
    inventory_url: Annotated[str, typer.Option(envvar="SAGACTL_INVENTORY_URL")] = "http://127.0.0.1:8002",
    payment_url: Annotated[str, typer.Option(envvar="SAGACTL_PAYMENT_URL")] = "http://127.0.0.1:8003",
) -> None:
    ctx.obj = Urls(order_url.rstrip("/"), inventory_url.rstrip("/"), payment_url.rstrip("/"))


def _call(method: str, url: str, **kwargs: Any) -> Any:
    """One HTTP call; a refused connection or an error answer ends the command clearly."""
    try:
        response = httpx.request(method, url, timeout=10.0, **kwargs)
    except httpx.HTTPError as exc:
        console.print(Text(f"cannot reach {url}: {exc}", style="red"))
        raise typer.Exit(2) from None
    if response.status_code >= 400:
        try:
            body = response.json()
            detail = body.get("detail", body) if isinstance(body, dict) else body
        except ValueError:
            detail = response.text
        console.print(Text(f"{response.status_code}: {detail}", style="red"))  # never read as markup
        raise typer.Exit(1)
    return response.json()


def _check_service(service: str) -> str:
    if service not in SERVICES:
        raise typer.BadParameter(f"one of {', '.join(SERVICES)}")
    return service


ServiceArg = Annotated[str, typer.Argument(help="order, inventory or payment", callback=_check_service)]


# -- dead letters ------------------------------------------------------------------------


@dlq.command("list")
def dlq_list(
    ctx: typer.Context,
    service: Annotated[
        list[str] | None, typer.Option("--service", "-s", help="only these services (repeatable)")
    ] = None,
    status: Annotated[str, typer.Option(help="PENDING, REPLAYED, DISCARDED or ALL")] = "PENDING",
    limit: int = 100,
) -> None:
    """Dead letters of every service, newest first."""
    urls = _urls(ctx)
    table = Table("service", "id", "status", "event", "order", "from", "reason", "attempts", "at")
    total = 0
    for name in service or SERVICES:
        _check_service(name)
        letters = _call(
            "GET", f"{urls.of(name)}/dead-letters", params={"status": status.upper(), "limit": limit}
        )
        for d in letters:
            total += 1
            table.add_row(
                name,
                str(d["id"]),
                d["status"],
                d["event_type"] or "?",
                (d["order_id"] or "")[:8],
                Text(f"{d['source_topic']}[{d['source_partition']}]@{d['source_offset']}"),
                Text(d["reason"]),  # never read as markup: it quotes what arrived
                str(d["replay_attempts"]),
                d["created_at"][:19],
            )
    if total:
        console.print(table)
    else:
        console.print(f"no {status.lower()} dead letters")


@dlq.command("show")
def dlq_show(ctx: typer.Context, service: ServiceArg, letter_id: int) -> None:
    """One dead letter: why, where from, its headers and its original bytes."""
    d = _call("GET", f"{_urls(ctx).of(service)}/dead-letters/{letter_id}")
    meta = Table.grid(padding=(0, 2))
    for key in ("status", "reason", "event_type", "order_id", "replay_attempts", "created_at", "resolved_at"):
        meta.add_row(key, Text(str(d[key])))  # never read as markup: it quotes what arrived
    meta.add_row(
        "source", f"{d['source_topic']} partition {d['source_partition']} offset {d['source_offset']}"
    )
    meta.add_row("key", Text(_shown(d["key"])))
    for h in d["headers"]:
        meta.add_row(Text(f"header {h['key']}"), Text(_shown(h["value"])))
    if d["headers_total"] > len(d["headers"]):
        meta.add_row("headers", f"… {d['headers_total'] - len(d['headers'])} more not shown")
    console.print(Panel(meta, title=f"{service} dead letter {letter_id}"))
    value = d["value"]
    if value is not None and value["text"] is not None and not value["truncated"]:
        try:
            console.print(Syntax(json.dumps(json.loads(value["text"]), indent=2), "json"))
            return
        except (ValueError, RecursionError):  # not JSON, or nested deeper than we indent
            pass
    console.print(Text(f"value: {_shown(value)}"))
    if value is not None and value["truncated"]:
        console.print(
            f"(all {value['size']} bytes: GET {_urls(ctx).of(service)}/dead-letters/{letter_id}/value)"
        )


def _shown(view: dict[str, Any] | None) -> str:
    """A BytesView of the dead-letter API as one line."""
    if view is None:
        return "(null)"
    shown = view["text"] if view["text"] is not None else f"base64:{view['base64']}"
    return shown + (f" … ({view['size']} bytes)" if view["truncated"] else "")


@dlq.command("replay")
def dlq_replay(ctx: typer.Context, service: ServiceArg, letter_id: int) -> None:
    """Process a dead letter again (after fixing its cause). Its effect still happens once."""
    r = _call("POST", f"{_urls(ctx).of(service)}/dead-letters/{letter_id}/replay")
    console.print(f"dead letter {letter_id}: {r['status']} ({r['outcome']})")


@dlq.command("discard")
def dlq_discard(ctx: typer.Context, service: ServiceArg, letter_id: int) -> None:
    """Decide a dead letter never needs processing; it is kept, marked DISCARDED."""
    r = _call("POST", f"{_urls(ctx).of(service)}/dead-letters/{letter_id}/discard")
    console.print(f"dead letter {letter_id}: {r['status']}")


# -- orders ------------------------------------------------------------------------------


Via = Annotated[str, typer.Option("--via", help="http (the API) or kafka (a command on orders.commands)")]
KafkaBootstrap = Annotated[
    str, typer.Option("--bootstrap", envvar="SAGACTL_KAFKA_BOOTSTRAP", help="the broker, for --via kafka")
]


@app.command("place")
def place(
    ctx: typer.Context,
    customer_id: str,
    items: Annotated[list[str], typer.Argument(help="product=quantity, e.g. widget=2")],
    deadline_seconds: Annotated[float | None, typer.Option("--deadline")] = None,
    via: Via = "http",
    bootstrap: KafkaBootstrap = "127.0.0.1:9092",
    wait: Annotated[bool, typer.Option(help="--via kafka: wait until the saga has finished")] = True,
) -> None:
    """Place an order: through the API, or as a PlaceOrder command on Kafka."""
    lines = []
    for item in items:
        product, sep, quantity = item.partition("=")
        if not sep or not quantity.isdigit():
            raise typer.BadParameter(f"{item!r}: expected product=quantity, e.g. widget=2")
        lines.append({"product_id": product, "quantity": int(quantity)})
    body: dict[str, Any] = {"customer_id": customer_id, "items": lines}
    if deadline_seconds is not None:
        body["deadline_seconds"] = deadline_seconds
    if via == "http":
        r = _call("POST", f"{_urls(ctx).order}/orders", json=body)
        console.print(f"order {r['order_id']}: {r['status']}")
        return
    from events.commands import PlaceOrder, order_id_for

    try:
        command = PlaceOrder(command_id=uuid.uuid4(), **body)
    except ValueError as exc:
        console.print(Text(f"not a valid order: {exc}", style="red"))
        raise typer.Exit(2) from None
    _send_command(bootstrap, command)
    console.print(f"sent PlaceOrder {command.command_id} (order {order_id_for(command.command_id)})")
    if wait:
        _await_command(ctx, command.command_id)


@app.command("cancel")
def cancel(
    ctx: typer.Context,
    order_id: str,
    via: Via = "http",
    bootstrap: KafkaBootstrap = "127.0.0.1:9092",
    wait: Annotated[bool, typer.Option(help="--via kafka: wait for the command's outcome")] = True,
) -> None:
    """Cancel a PENDING or APPROVED order; its stock is released and its charge refunded."""
    if via == "http":
        r = _call("POST", f"{_urls(ctx).order}/orders/{order_id}/cancel")
        console.print(f"order {r['order_id']}: {r['status']} — the participants compensate asynchronously")
        return
    from events.commands import CancelOrder

    try:
        command = CancelOrder(command_id=uuid.uuid4(), order_id=uuid.UUID(order_id))
    except ValueError:
        raise typer.BadParameter(f"{order_id!r} is not an order id") from None
    _send_command(bootstrap, command)
    console.print(f"sent CancelOrder {command.command_id}")
    if wait:
        _await_command(ctx, command.command_id)


def _send_command(bootstrap: str, command: Any) -> None:
    """Produce ``command`` to orders.commands, keyed by its command_id."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    from events.commands import encode_command
    from events.topics import COMMANDS

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=10_000)
        await producer.start()
        try:
            await producer.send_and_wait(
                COMMANDS, encode_command(command), key=str(command.command_id).encode()
            )
        finally:
            await producer.stop()

    try:
        asyncio.run(send())
    except Exception as exc:  # the broker is away or refuses: one sentence, exit 2
        console.print(Text(f"cannot send to Kafka at {bootstrap}: {type(exc).__name__}: {exc}", style="red"))
        raise typer.Exit(2) from None


def _await_command(ctx: typer.Context, command_id: uuid.UUID, timeout: float = 60.0) -> None:
    """Poll ``GET /commands/{id}`` until the command was refused, or applied and its order
    is no longer PENDING."""
    end = time.monotonic() + timeout
    while True:
        r = _call("GET", f"{_urls(ctx).order}/commands/{command_id}")
        if r["outcome"] in ("placed", "cancelled") and r["status"] != "PENDING":
            console.print(f"order {r['order_id']}: {r['status']}")
            return
        if r["outcome"] == "rejected":
            console.print(Text(f"rejected: {r['reason']}: {r['detail']}", style="red"))
            raise typer.Exit(1)
        if time.monotonic() > end:
            console.print(Text(f"no answer to command {command_id} after {timeout:.0f}s", style="red"))
            raise typer.Exit(1)
        time.sleep(0.2)


STATUS_STYLE = {"PENDING": "yellow", "APPROVED": "green", "REJECTED": "red", "CANCELLED": "magenta"}


def _status(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


@app.command("orders")
def orders(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="PENDING, APPROVED, REJECTED or CANCELLED")] = None,
    limit: int = 30,
) -> None:
    """Most recent orders, optionally only those in one status."""
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status.upper()
    rows = _call("GET", f"{_urls(ctx).order}/orders", params=params)
    table = Table("customer", "status", "reason", "total", "items", "placed")
    table.columns.insert(0, Column("order", no_wrap=True, min_width=36))
    for o in rows:
        items = ", ".join(f"{i['quantity']} x {i['product_id']}" for i in o["items"])
        table.add_row(
            o["order_id"],
            o["customer_id"],
            _status(o["status"]),
            o["reason"] or "",
            o["total"] or "",
            items,
            o["created_at"][11:23],
        )
    console.print(table if rows else "no orders")


def _ms(a: str, b: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds() * 1000


@app.command("saga")
def saga(ctx: typer.Context, order_id: str) -> None:
    """One saga: why it ended so and whether it was compensated, then its timeline as a
    causation tree (which event caused which) with the time of each step."""
    from rich.tree import Tree

    s = _call("GET", f"{_urls(ctx).order}/orders/{order_id}/saga")
    why = s["explanation"]
    summary = Table.grid(padding=(0, 2))
    summary.add_row("status", _status(s["status"]) + (f" ({s['reason']})" if s["reason"] else ""))
    summary.add_row("why", why["verdict"])
    for c in why["compensations"]:
        mark = "[green]✓[/]" if c["done_by"] else "[red]✗ still owed[/]"
        summary.add_row(
            "compensation", f"{mark} {c['action']} (for {c['because_of']}: {c['done_by'] or '—'})"
        )
    verdict = {True: "[green]yes[/]", False: "[red]NO[/]", None: "[yellow]saga in flight[/]"}
    summary.add_row("compensated", verdict[why["compensated"]])
    summary.add_row("trace", s["trace_id"] or "—")
    console.print(Panel(summary, title=f"saga {order_id}"))

    events = s["events"]
    if not events:
        return
    start = events[0]["occurred_at"]
    by_id = {e["event_id"]: e for e in events}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for e in events:
        parent = e["causation_id"] if e["causation_id"] in by_id else None
        children.setdefault(parent, []).append(e)
    tree = Tree(f"timeline ({len(events)} events; +ms since the saga started, Δ since its cause)")

    def label(e: dict[str, Any]) -> str:
        cause = by_id.get(e["causation_id"] or "")
        delta = f"  Δ {_ms(cause['occurred_at'], e['occurred_at']):.0f} ms" if cause else ""
        style = "red" if e["compensating"] else "cyan"
        detail = {k: v for k, v in e["payload"].items() if k in ("reason", "total", "amount", "product_ids")}
        extra = f"  {detail}" if detail else ""
        return (
            f"[{style}]{e['event_type']}[/] [dim]{e['producer']}[/]"
            f"  +{_ms(start, e['occurred_at']):.0f} ms{delta}{extra}"
        )

    def grow(node: Tree, parent: str | None) -> None:
        for e in children.get(parent, []):
            grow(node.add(label(e)), e["event_id"])

    grow(tree, None)
    console.print(tree)


@app.command("tail")
def tail(
    ctx: typer.Context,
    from_start: Annotated[
        bool, typer.Option("--from-start", help="replay all recorded events first")
    ] = False,
    count: Annotated[int | None, typer.Option(help="stop after this many events")] = None,
) -> None:
    """Follow every saga's events live, as the order service records them (Ctrl-C stops)."""
    url = f"{_urls(ctx).order}/saga-events/stream"
    params = {"after": 0} if from_start else {}
    shown = 0
    try:
        with httpx.stream("GET", url, params=params, timeout=httpx.Timeout(10.0, read=None)) as response:
            if response.status_code >= 400:
                console.print(f"[red]{response.status_code} from {url}[/red]")
                raise typer.Exit(1)
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                e = json.loads(line.removeprefix("data: "))
                style = "red" if e["compensating"] else "cyan"
                console.print(
                    f"{e['occurred_at'][11:23]}  {e['order_id'][:8]}  [{style}]{e['event_type']:<27}[/]"
                    f" [dim]{e['producer']}[/]",
                    highlight=False,
                )
                shown += 1
                if count is not None and shown >= count:
                    return
    except httpx.HTTPError as exc:
        console.print(Text(f"cannot reach {url}: {exc}", style="red"))
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        pass


@app.command("stock")
def stock(ctx: typer.Context) -> None:
    """Every product: available, reserved and sold units."""
    rows = _call("GET", f"{_urls(ctx).inventory}/products")
    table = Table("product", "name", "price", "available", "reserved", "sold")
    for p in rows:
        table.add_row(
            p["product_id"], p["name"], p["price"], str(p["available"]), str(p["reserved"]), str(p["sold"])
        )
    console.print(table if rows else "no products")


@app.command("balances")
def balances(ctx: typer.Context) -> None:
    """Every customer account and its balance."""
    rows = _call("GET", f"{_urls(ctx).payment}/accounts")
    table = Table("customer", "balance")
    for a in rows:
        table.add_row(a["customer_id"], a["balance"])
    console.print(table if rows else "no accounts")
