"""The invariants of docs/design.md §6, checked against all three databases and the payment
provider's ledger at quiescence.

Used by ``make demo``, the tests and (later) the fault-injection run. Each violation is
a sentence naming what is wrong; an empty list means every invariant holds.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import stamina

from events import CommandRejected, PaymentPending
from events.commands import COMMAND_TYPES, RefusedCommand

#: Event types that are requests, not saga steps (invariant 4): the commands a client sent,
#: those that could not be read, and their refusals; each may come any number of times.
REQUESTS = [*COMMAND_TYPES, RefusedCommand.event_type, CommandRejected.event_type]


def plain_url(url: str) -> str:
    """A service's SQLAlchemy URL (``postgresql+psycopg://``) as psycopg connects to it."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


#: Seconds a connection to a database may take (libpq's ``connect_timeout``): a server
#: paused (``kill -STOP``) kept ``sagastack check`` waiting for ever (an attack trial).
CONNECT_TIMEOUT_SECONDS = 10


def connect(url: str) -> psycopg.Connection[Any]:
    """A connection to a service's database (its SQLAlchemy URL), given up after
    ``CONNECT_TIMEOUT_SECONDS``."""
    return psycopg.connect(plain_url(url), connect_timeout=CONNECT_TIMEOUT_SECONDS)


def _provider_blinked(exc: Exception) -> bool:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError)


@dataclass(frozen=True)
class ProviderLedger:
    """What the payment provider says happened: its charges (declined ones too), refunds
    and account balances, as its API lists them (``GET /v1/ledger``, ``/v1/accounts``)."""

    charges: list[dict[str, Any]]
    refunds: list[dict[str, Any]]
    balances: dict[str, Decimal]

    @classmethod
    def fetch(cls, provider_url: str, patience: float = 60.0) -> ProviderLedger:
        """Read the ledger; a provider that is restarting or whose database just restarted
        (a chaos run) is asked again for up to ``patience`` seconds (each request waits
        as long at most). Raises ``httpx.HTTPError`` when it still does not answer."""
        for attempt in stamina.retry_context(on=_provider_blinked, timeout=patience):
            with attempt, httpx.Client(base_url=provider_url, timeout=min(30.0, patience)) as client:
                ledger = client.get("/v1/ledger").raise_for_status().json()
                accounts = client.get("/v1/accounts").raise_for_status().json()
        return cls(
            ledger["charges"],
            ledger["refunds"],
            {a["account_id"]: Decimal(str(a["balance"])) for a in accounts},
        )


def reconcile(
    orders: Mapping[str, tuple[str, Decimal | None]],
    payments: Mapping[str, tuple[str, Decimal, str]],
    ledger: ProviderLedger,
    initial_balance: Mapping[str, Decimal],
) -> list[str]:
    """Our orders and payments against the provider's ledger. ``orders``: order id →
    (status, total); ``payments``: order id → (customer, amount, status). Every APPROVED
    order charged its total exactly once at the provider and not refunded; every charge
    of an order that is not APPROVED refunded exactly once; no refund without a charge;
    every payment settled (none PENDING or REFUND_PENDING) and saying what the provider
    says, and taken from its customer's account; no balance negative, and each balance
    plus what its customer is charged for good equal to where it started. A payment of an
    order the order service does not have is reconciled as an order that is not APPROVED
    (``MISSING``): nothing may be kept for it."""
    v: list[str] = []
    charged: dict[str, list[dict[str, Any]]] = {}
    for c in ledger.charges:
        if c.get("status") == "succeeded":
            charged.setdefault(str(c.get("reference")), []).append(c)
    charges_by_key = {str(c["idempotency_key"]): c for c in ledger.charges}
    refunds: dict[str, int] = {}
    for r in ledger.refunds:
        key = str(r.get("charge_key"))
        refunds[key] = refunds.get(key, 0) + 1
        charge = charges_by_key.get(key)
        if charge is None or charge.get("status") != "succeeded":
            v.append(f"provider: a refund of {key}, which is no charge (refund {r.get('refund_id')})")
    kept: dict[str, Decimal] = {}
    for oid in sorted(orders.keys() | payments.keys()):
        status, total = orders.get(oid, ("MISSING", None))
        charges = charged.get(oid, [])
        if len(charges) > 1:
            v.append(f"order {oid} ({status}) is charged {len(charges)} times at the provider")
        for c in charges:
            times = refunds.get(str(c["idempotency_key"]), 0)
            if status == "APPROVED" and times:
                v.append(f"order {oid} is APPROVED but its charge was refunded")
            if status != "APPROVED" and times != 1:
                v.append(f"order {oid} ({status}): its charge was refunded {times} times, not once")
            if status == "APPROVED" and not times:
                kept[str(c["account_id"])] = kept.get(str(c["account_id"]), Decimal(0)) + Decimal(
                    str(c["amount"])
                )
                if total is not None and Decimal(str(c["amount"])) != total:
                    v.append(f"order {oid} charged {c['amount']} but its total is {total}")
        if status == "APPROVED" and not charges:
            v.append(f"order {oid} is APPROVED but was never charged at the provider")
        ours = payments.get(oid)
        if ours is None:
            if charges:
                v.append(f"order {oid}: charged at the provider without a payment of ours")
            continue
        customer, _, paid = ours
        for c in charges:
            if str(c.get("account_id")) != customer:
                v.append(
                    f"order {oid}: charged to account {c.get('account_id')} at the provider,"
                    f" but its payment is {customer}'s"
                )
        if paid in ("PENDING", "REFUND_PENDING"):
            v.append(f"order {oid} ({status}): payment still {paid}")
        expected = {
            "CHARGED": bool(charges) and not any(refunds.get(str(c["idempotency_key"])) for c in charges),
            "REFUNDED": bool(charges) and all(refunds.get(str(c["idempotency_key"])) for c in charges),
            "DECLINED": not charges,
            "VOIDED": not charges,
        }.get(paid, True)
        if not expected:
            v.append(f"order {oid}: our payment says {paid}, the provider's ledger does not agree")
        if paid == "CHARGED" and status != "APPROVED":
            v.append(f"order {oid} ({status}) is charged {ours[1]}")
    for customer, balance in ledger.balances.items():
        if balance < 0:
            v.append(f"customer {customer}: negative balance {balance}")
        if customer in initial_balance:
            spent = kept.get(customer, Decimal(0))
            if balance + spent != initial_balance[customer]:
                v.append(
                    f"customer {customer}: balance {balance} + charges {spent}"
                    f" != initial {initial_balance[customer]}"
                )
    for customer in sorted(initial_balance.keys() - ledger.balances.keys()):
        v.append(
            f"customer {customer}: no account at the provider,"
            f" though it started with {initial_balance[customer]}"
        )
    return v


def _payments_against_orders(
    orders: Mapping[str, tuple[str, Decimal | None]], payments: Mapping[str, tuple[str, Decimal, str]]
) -> list[str]:
    """What ``reconcile`` checks without the provider's ledger: every payment settled, and
    money kept (CHARGED) only for an APPROVED order, and for its total."""
    v: list[str] = []
    for oid, (_, amount, paid) in sorted(payments.items()):
        status, total = orders.get(oid, ("MISSING", None))
        if paid in ("PENDING", "REFUND_PENDING"):
            v.append(f"order {oid} ({status}): payment still {paid}")
        if paid == "CHARGED" and status != "APPROVED":
            v.append(f"order {oid} ({status}) is charged {amount}")
        if paid == "CHARGED" and total is not None and amount != total:
            v.append(f"order {oid} charged {amount} but its total is {total}")
    for oid, (status, _) in sorted(orders.items()):
        if status == "APPROVED" and payments.get(oid, ("", 0, ""))[2] != "CHARGED":
            v.append(f"order {oid} is APPROVED but its payment is not CHARGED")
    return v


def ledger_summary(ledger: ProviderLedger) -> list[str]:
    """The provider's side of a reconciliation, in a few lines (for reports)."""
    succeeded = [c for c in ledger.charges if c.get("status") == "succeeded"]
    refunded = {str(r.get("charge_key")) for r in ledger.refunds}
    kept = [c for c in succeeded if str(c["idempotency_key"]) not in refunded]
    declined = len(ledger.charges) - len(succeeded)
    return [
        f"provider ledger: {len(succeeded)} charges succeeded ({len(succeeded) - len(kept)} refunded,"
        f" {len(kept)} kept for {sum((Decimal(str(c['amount'])) for c in kept), Decimal(0))}),"
        f" {declined} declined; {len(ledger.refunds)} refunds; {len(ledger.balances)} accounts"
    ]


def _units(lines: Mapping[str, int]) -> str:
    """``2 x p, 1 x q`` (by product), or ``nothing``."""
    return ", ".join(f"{qty} x {pid}" for pid, qty in sorted(lines.items())) or "nothing"


def _snapshot(url: str) -> psycopg.Connection[Any]:
    """A connection whose reads share one snapshot of its database (REPEATABLE READ):
    the orders and their counts by status, say, as of one moment. Three databases have
    no common moment: ``sagastack check`` makes sure nothing moved while it read."""
    conn = connect(url)
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    return conn


def check(
    database_urls: Mapping[str, str],
    initial_stock: Mapping[str, int],
    initial_balance: Mapping[str, Decimal],
    provider: str | ProviderLedger | None,
) -> list[str]:
    """Every invariant at once; ``provider``: the payment provider's URL (its ledger is
    fetched), its ledger, or None (a real provider, whose ledger is not ours to read: our
    payments are checked against our orders only). ``initial_stock`` and
    ``initial_balance`` (product → units, customer → money where they started): what
    they leave out is not checked for conservation."""
    return check_counted(database_urls, initial_stock, initial_balance, provider)[0]


def check_counted(
    database_urls: Mapping[str, str],
    initial_stock: Mapping[str, int],
    initial_balance: Mapping[str, Decimal],
    provider: str | ProviderLedger | None,
) -> tuple[list[str], tuple[int, int, int]]:
    """``check``, and how much it looked at: (orders, products, payments), counted in the
    snapshots it read."""
    v: list[str] = []
    products = 0
    with (
        _snapshot(database_urls["order_svc"]) as orders_db,
        _snapshot(database_urls["inventory_svc"]) as inventory_db,
        _snapshot(database_urls["payment_svc"]) as payment_db,
    ):
        orders: dict[str, tuple[str, Decimal | None]] = {}
        customer_of: dict[str, str] = {}
        for oid, customer, status, total in orders_db.execute(
            "SELECT order_id, customer_id, status, total FROM orders"
        ):
            orders[str(oid)] = (status, total)
            customer_of[str(oid)] = customer
        # 1. every order is terminal
        for oid, (status, _) in orders.items():
            if status == "PENDING":
                v.append(f"order {oid} is still PENDING")

        # 2. stock conserved; no reservation held for a non-APPROVED order
        for pid, available, reserved, sold in inventory_db.execute(
            "SELECT product_id, available, reserved, sold FROM products"
        ):
            products += 1
            if min(available, reserved, sold) < 0:
                v.append(f"product {pid}: negative stock {available}/{reserved}/{sold}")
            if pid in initial_stock and available + reserved + sold != initial_stock[pid]:
                v.append(
                    f"product {pid}: available {available} + reserved {reserved} + sold {sold}"
                    f" != initial {initial_stock[pid]}"
                )
        for oid, pid, qty, status in inventory_db.execute(
            "SELECT order_id, product_id, quantity, status FROM reservations"
        ):
            order_status = orders.get(str(oid), ("MISSING", None))[0]
            if status == "RESERVED":
                v.append(f"order {oid} ({order_status}) still holds {qty} x {pid}")
            if status == "COMMITTED" and order_status != "APPROVED":
                v.append(f"order {oid} ({order_status}) sold {qty} x {pid}")
        for pid, sold, committed in inventory_db.execute(
            "SELECT p.product_id, p.sold, COALESCE(SUM(r.quantity), 0) FROM products p"
            " LEFT JOIN reservations r ON r.product_id = p.product_id AND r.status = 'COMMITTED'"
            " GROUP BY p.product_id, p.sold"
        ):
            if sold != committed:
                v.append(f"product {pid}: sold {sold} but committed reservations say {committed}")
        # and the other way round: an APPROVED order sold its items, every unit (an
        # APPROVED order whose units went back on sale held nothing and kept stock
        # conserved: only its items say it is owed them)
        owed: dict[str, dict[str, int]] = collections.defaultdict(dict)
        for oid, pid, qty in orders_db.execute(
            "SELECT i.order_id, i.product_id, SUM(i.quantity) FROM order_items i"
            " JOIN orders o ON o.order_id = i.order_id WHERE o.status = 'APPROVED'"
            " GROUP BY i.order_id, i.product_id"
        ):
            owed[str(oid)][pid] = int(qty)
        sold_for: dict[str, dict[str, int]] = collections.defaultdict(dict)
        for oid, pid, qty in inventory_db.execute(
            "SELECT order_id, product_id, SUM(quantity) FROM reservations WHERE status = 'COMMITTED'"
            " GROUP BY order_id, product_id"
        ):
            sold_for[str(oid)][pid] = int(qty)
        for oid in sorted(oid for oid, (status, _) in orders.items() if status == "APPROVED"):
            if sold_for.get(oid, {}) != owed.get(oid, {}):
                v.append(
                    f"order {oid} is APPROVED but sold {_units(sold_for.get(oid, {}))},"
                    f" not its items {_units(owed.get(oid, {}))}"
                )

        # 3. payments reconciled with the provider's ledger; money conserved
        payments = {
            str(oid): (customer, amount, status)
            for oid, customer, amount, status in payment_db.execute(
                "SELECT order_id, customer_id, amount, status FROM payments"
            )
        }
        for oid, (customer, _, _) in sorted(payments.items()):
            if oid in customer_of and customer != customer_of[oid]:
                v.append(f"order {oid} is {customer_of[oid]}'s, but its payment is {customer}'s")
        if provider is None:
            v += _payments_against_orders(orders, payments)
        else:
            ledger = provider if isinstance(provider, ProviderLedger) else ProviderLedger.fetch(provider)
            v += reconcile(orders, payments, ledger, initial_balance)

        # 4. no effect applied twice: each saga step happened at most once per order (the
        # commands a client sent, those that could not be read, and their refusals are
        # requests, not steps: a client may send one again; a re-sent RefusedCommand was
        # "happened 15 times", a trial). PaymentPending decides nothing and says each wait
        # once: the charge's, and a refund's
        for oid, event_type, n in orders_db.execute(
            "SELECT order_id, event_type, COUNT(*) FROM saga_events"
            " WHERE NOT event_type = ANY(%s)"
            " GROUP BY order_id, event_type"
            " HAVING COUNT(*) > CASE event_type WHEN %s THEN 2 ELSE 1 END",
            (REQUESTS, PaymentPending.event_type),
        ):
            v.append(f"order {oid}: {event_type} happened {n} times")

        # 5. the orders' counts by status the database keeps (order_svc.statuscounts, the
        # dashboard's figures) are the orders there are
        kept = {
            status: int(n)
            for status, n in orders_db.execute(
                "SELECT status, sum(orders) FROM order_status_counts GROUP BY status HAVING sum(orders) <> 0"
            )
        }
        there = dict(collections.Counter(status for status, _ in orders.values()))
        if kept != there:
            v.append(
                f"orders by status: kept {dict(sorted(kept.items()))}, counted {dict(sorted(there.items()))}"
            )

        # quiescence itself: every event published. An event left unsent that nothing waits
        # for (the saga's last step) leaves no order PENDING and nothing held; a caller that
        # checks without having seen quiescence (its wait timed out) would see no violation
        for name, db in (
            ("order_svc", orders_db),
            ("inventory_svc", inventory_db),
            ("payment_svc", payment_db),
        ):
            unsent = db.execute("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0]  # type: ignore[index]
            if unsent:
                v.append(f"{name}: {unsent} event{'' if unsent == 1 else 's'} in its outbox not published")
    return v, (len(orders), products, len(payments))


#: Per service: what is still to settle there, besides its unsent outbox rows.
_UNSETTLED = {
    "order_svc": "SELECT COUNT(*) FROM orders WHERE status = 'PENDING'",
    "inventory_svc": "SELECT COUNT(*) FROM reservations WHERE status = 'RESERVED'",
    "payment_svc": "SELECT COUNT(*) FROM payments WHERE status IN ('PENDING', 'REFUND_PENDING')",
}


#: The services whose databases are checked.
SERVICES = tuple(_UNSETTLED)


def activity(database_urls: Mapping[str, str]) -> tuple[int, int, int, int]:
    """(unsent outbox rows in all services, PENDING orders, reservations still RESERVED,
    payments waiting on the provider), one connection per service."""
    unsent, unsettled = 0, []
    for name, query in _UNSETTLED.items():
        with connect(database_urls[name]) as conn:
            unsent += conn.execute("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0]  # type: ignore[index]
            unsettled.append(conn.execute(query).fetchone()[0])  # type: ignore[index]
    pending, held, waiting = unsettled
    return unsent, pending, held, waiting


def wait_for_quiescence(database_urls: Mapping[str, str], timeout: float) -> bool:
    """Wait until nothing is left to publish or settle, seen twice in a row (once, at
    the end of ``timeout`` seconds; 0: look once); False on timeout (then ``check``
    reports what is stuck). Never a substitute for ``check``."""
    import time

    end = time.monotonic() + timeout
    quiet_once = False
    while True:
        quiet = activity(database_urls) == (0, 0, 0, 0)
        over = time.monotonic() >= end
        if quiet and (quiet_once or over):  # at the end (or with no time at all) once will do
            return True
        if over:
            return False
        quiet_once = quiet
        time.sleep(0.25)


def marks(database_urls: Mapping[str, str]) -> tuple[int, ...]:
    """Per service, the last value its outbox's id sequence handed out: every change a
    saga makes in a service writes an event to its outbox, so equal marks before and
    after a ``check`` mean no saga moved while it read (pruning the outbox does not
    lower them)."""
    found = []
    for name in SERVICES:
        with connect(database_urls[name]) as conn:
            # a sequence never used yet says 1, not called
            row = conn.execute("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM outbox_id_seq")
            found.append(row.fetchone()[0])  # type: ignore[index]
    return tuple(found)


def pending_dead_letters(database_urls: Mapping[str, str]) -> dict[str, int]:
    """Per service with any, its dead letters still PENDING (neither replayed nor
    discarded): events it could not take, whose sagas their deadlines may have ended."""
    found = {}
    for name in SERVICES:
        with connect(database_urls[name]) as conn:
            row = conn.execute("SELECT COUNT(*) FROM dead_letters WHERE status = 'PENDING'").fetchone()
        if row and row[0]:
            found[name] = int(row[0])
    return found


def holding_orders(database_urls: Mapping[str, str], limit: int) -> list[tuple[str, str]]:
    """Up to ``limit`` orders whose reservations are still held: (order id, its status in
    the order service, ``MISSING`` if it has none)."""
    with connect(database_urls["inventory_svc"]) as conn:
        held = [
            str(oid)
            for (oid,) in conn.execute(
                "SELECT DISTINCT order_id FROM reservations WHERE status = 'RESERVED'"
                " ORDER BY order_id LIMIT %s",
                (limit,),
            )
        ]
    if not held:
        return []
    with connect(database_urls["order_svc"]) as conn:
        status = {
            str(oid): s
            for oid, s in conn.execute(
                "SELECT order_id, status FROM orders WHERE order_id = ANY(%s::uuid[])", (held,)
            )
        }
    return [(oid, status.get(oid, "MISSING")) for oid in held]


def provider_answers(database_urls: Mapping[str, str], limit: int) -> list[str]:
    """The provider's last answers (``last_error``) to the ``limit`` payments that have
    waited on it longest, each once, sorted; none for those it has not answered yet."""
    with connect(database_urls["payment_svc"]) as conn:
        rows = conn.execute(
            "SELECT last_error FROM payments WHERE status IN ('PENDING', 'REFUND_PENDING')"
            " ORDER BY waiting_since NULLS LAST, order_id LIMIT %s",
            (limit,),
        ).fetchall()
    return sorted({error for (error,) in rows if error is not None})


def pending_orders(database_urls: Mapping[str, str], limit: int) -> list[tuple[str, float]]:
    """The oldest ``limit`` PENDING orders: (order id, seconds since it was placed)."""
    with connect(database_urls["order_svc"]) as conn:
        rows = conn.execute(
            "SELECT order_id, extract(epoch FROM now() - created_at) FROM orders"
            " WHERE status = 'PENDING' ORDER BY created_at LIMIT %s",
            (limit,),
        ).fetchall()
    return [(str(oid), float(age)) for oid, age in rows]
