"""``sagactl``: operate a running system over the services' HTTP APIs.

It talks to the services only through their public endpoints, so it works the same
against ``make run``, a compose deployment or a test system. Service URLs default to
``make run``'s ports and are overridden per service with ``--order-url`` … or the
environment (``SAGACTL_ORDER_URL``, ``SAGACTL_INVENTORY_URL``, ``SAGACTL_PAYMENT_URL``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table

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
        console.print(f"[red]cannot reach {url}: {exc}[/red]")
        raise typer.Exit(2) from None
    if response.status_code >= 400:
        try:
            body = response.json()
            detail = body.get("detail", body) if isinstance(body, dict) else body
        except ValueError:
            detail = response.text
        console.print(f"[red]{response.status_code}: {detail}[/red]")
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
                f"{d['source_topic']}[{d['source_partition']}]@{d['source_offset']}",
                d["reason"],
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
        meta.add_row(key, str(d[key]))
    meta.add_row(
        "source", f"{d['source_topic']} partition {d['source_partition']} offset {d['source_offset']}"
    )
    meta.add_row("key", str(d["key"]))
    for k, v in d["headers"]:
        meta.add_row(f"header {k}", v)
    console.print(Panel(meta, title=f"{service} dead letter {letter_id}"))
    text = d["value_text"] or ""
    try:
        console.print(Syntax(json.dumps(json.loads(text), indent=2), "json"))
    except ValueError:
        console.print(f"raw value (base64): {d['value_base64']}")


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


@app.command("cancel")
def cancel(ctx: typer.Context, order_id: str) -> None:
    """Cancel a PENDING or APPROVED order; its stock is released and its charge refunded."""
    r = _call("POST", f"{_urls(ctx).order}/orders/{order_id}/cancel")
    console.print(f"order {r['order_id']}: {r['status']} — the participants compensate asynchronously")
