"""Inventory reactions: reserve on OrderCreated (2), commit on OrderApproved (5),
release on PaymentFailed (c2), release or restock on OrderCancelled (c5).

A batch at a time (``saga_kit.reactions``): ``load`` reads the batch's orders' decision
records and reservation lines and locks the products they touch (in product-id order);
each decide function applies one event to that state through the reservation rule
(``inventory_svc.reservation``); ``save`` writes what changed in four statements.

Every reaction is correct whatever order the events of one saga arrive in: settling
only moves lines in the state it expects, and the first decision about each order is
kept (``order_decisions``), so a late or repeated OrderCreated never reserves twice and
one that arrives after the cancellation reserves nothing."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from events import (
    InventoryCommitted,
    InventoryReleased,
    InventoryReservationFailed,
    InventoryReserved,
    OrderApproved,
    OrderCancelled,
    OrderCreated,
    PaymentFailed,
    StockLine,
)
from events.envelope import Envelope
from inventory_svc.reservation import Refuse, StockLevel, plan_reservation, requested_quantities
from saga_kit import sql
from saga_kit.db import UnitOfWork
from saga_kit.errors import InvalidEvent
from saga_kit.reactions import Reactions, Replies


@dataclass
class Product:
    product_id: str
    price: Decimal
    available: int
    reserved: int
    sold: int
    changed: bool = False

    def move(self, quantity: int, source: str, target: str) -> None:
        setattr(self, source, getattr(self, source) - quantity)
        setattr(self, target, getattr(self, target) + quantity)
        self.changed = True


@dataclass
class Line:
    """One product of an order's reservation."""

    product_id: str
    quantity: int
    unit_price: Decimal
    status: str
    new: bool = False
    changed: bool = False


@dataclass
class Stock:
    """What a batch needs: products (locked), reservation lines and decisions of its orders."""

    products: dict[str, Product] = field(default_factory=dict)
    lines: dict[uuid.UUID, list[Line]] = field(default_factory=dict)
    decisions: dict[uuid.UUID, str] = field(default_factory=dict)
    new_decisions: dict[uuid.UUID, str] = field(default_factory=dict)

    def decide_first(self, order_id: uuid.UUID, decision: str) -> bool:
        """Record the first decision about an order; False if there was one already."""
        if order_id in self.decisions:
            return False
        self.decisions[order_id] = self.new_decisions[order_id] = decision
        return True

    def settle(self, order_id: uuid.UUID, *, frm: str, to: str) -> tuple[StockLine, ...]:
        """Move the order's lines in status ``frm`` to ``to`` and their units between
        buckets; lines in any other status are left alone, which makes it idempotent."""
        source, target = _MOVES[(frm, to)]
        moved = []
        for line in self.lines.get(order_id, []):
            if line.status != frm:
                continue
            line.status, line.changed = to, True
            self.products[line.product_id].move(line.quantity, source, target)
            moved.append(StockLine(product_id=line.product_id, quantity=line.quantity))
        return tuple(sorted(moved, key=lambda line: line.product_id))


#: (from status, to status) → (product bucket taken from, bucket given to)
_MOVES = {
    ("RESERVED", "COMMITTED"): ("reserved", "sold"),
    ("RESERVED", "RELEASED"): ("reserved", "available"),
    ("COMMITTED", "RESTOCKED"): ("sold", "available"),
}


async def load(uow: UnitOfWork, events: Sequence[Envelope[Any]]) -> Stock:
    """The batch's decisions and reservations, and the products its orders ask for or
    already hold, locked in product-id order (concurrent batches never deadlock): three
    queries, one round trip — the held products come from a subquery on
    ``reservations`` in the third, not from the second's rows. A product not found is
    absent from the state; the reservation rules refuse it (``unknown_product``)."""
    ids = sql.values(sorted({e.order_id for e in events}))
    wanted = sorted(
        {item.product_id for e in events if isinstance(e.payload, OrderCreated) for item in e.payload.items}
    )
    decisions, reservations, products = await uow.read(
        (
            f"SELECT order_id, decision FROM order_decisions WHERE order_id IN {sql.UUIDS}",
            {"ids": ids},
        ),
        (
            "SELECT order_id, product_id, quantity, unit_price, status FROM reservations"
            f" WHERE order_id IN {sql.UUIDS} ORDER BY order_id, product_id",
            {"ids": ids},
        ),
        (
            "SELECT product_id, price, available, reserved, sold FROM products"
            f" WHERE product_id IN {sql.TEXTS}"
            f" OR product_id IN (SELECT product_id FROM reservations WHERE order_id IN {sql.UUIDS})"
            " ORDER BY product_id FOR UPDATE",
            {"keys": sql.values(wanted), "ids": ids},
        ),
    )
    stock = Stock()
    for row in decisions:
        stock.decisions[row.order_id] = row.decision
    for row in reservations:
        stock.lines.setdefault(row.order_id, []).append(
            Line(row.product_id, row.quantity, row.unit_price, row.status)
        )
    for row in products:
        stock.products[row.product_id] = Product(
            row.product_id, row.price, row.available, row.reserved, row.sold
        )
    return stock


def save(uow: UnitOfWork, stock: Stock) -> None:
    if stock.new_decisions:
        uow.write(
            (
                "INSERT INTO order_decisions (order_id, decision)"
                " SELECT o, d FROM json_to_recordset(CAST(%(rows)s AS json)) AS v(o uuid, d text)"
                " ON CONFLICT DO NOTHING"
            ),
            {"rows": sql.rows({"o": o, "d": d} for o, d in stock.new_decisions.items())},
        )
    lines = [(oid, line) for oid, ls in stock.lines.items() for line in ls]
    new = [
        {"o": o, "p": x.product_id, "q": x.quantity, "u": x.unit_price, "s": x.status}
        for o, x in lines
        if x.new
    ]
    if new:
        uow.write(
            (
                "INSERT INTO reservations (order_id, product_id, quantity, unit_price, status)"
                " SELECT o, p, q, u, s FROM json_to_recordset(CAST(%(rows)s AS json))"
                " AS v(o uuid, p text, q int, u numeric, s text)"
            ),
            {"rows": sql.rows(new)},
        )
    changed = [{"o": o, "p": x.product_id, "s": x.status} for o, x in lines if x.changed and not x.new]
    if changed:
        uow.write(
            (
                "UPDATE reservations r SET status = v.s, updated_at = clock_timestamp()"
                f" FROM {sql.recordset('o uuid, p text, s text')}"
                " WHERE r.order_id = v.o AND r.product_id = v.p"
            ),
            {"rows": sql.rows(changed)},
        )
    products = [
        {"p": p.product_id, "a": p.available, "r": p.reserved, "s": p.sold}
        for p in stock.products.values()
        if p.changed
    ]
    if products:
        uow.write(
            (
                "UPDATE products p SET available = v.a, reserved = v.r, sold = v.s,"
                " updated_at = clock_timestamp()"
                f" FROM {sql.recordset('p text, a bigint, r bigint, s bigint')}"
                " WHERE p.product_id = v.p"
            ),
            {"rows": sql.rows(products)},
        )


reactions: Reactions[Stock] = Reactions(load, save)


@reactions.on(OrderCreated)
def on_order_created(stock: Stock, event: Envelope[OrderCreated]) -> Replies:
    """Reserve every line or none, priced from the catalogue — once per order."""
    order = event.payload
    if event.order_id in stock.decisions:
        return []  # decided before: reserved or refused already, or the cancellation came first
    wanted = requested_quantities(order.items)
    levels = {
        pid: StockLevel(available=p.available, price=p.price)
        for pid in wanted
        if (p := stock.products.get(pid)) is not None
    }
    decision = plan_reservation(wanted, levels)
    if isinstance(decision, Refuse):
        stock.decide_first(event.order_id, "REFUSED")
        return [
            InventoryReservationFailed(
                customer_id=order.customer_id, reason=decision.reason, product_ids=decision.product_ids
            )
        ]
    stock.decide_first(event.order_id, "RESERVED")
    held = stock.lines.setdefault(event.order_id, [])
    for line in decision.lines:
        stock.products[line.product_id].move(line.quantity, "available", "reserved")
        held.append(Line(line.product_id, line.quantity, line.unit_price, "RESERVED", new=True))
    return [InventoryReserved(customer_id=order.customer_id, lines=decision.lines, total=decision.total)]


@reactions.on(OrderApproved)
def on_order_approved(stock: Stock, event: Envelope[OrderApproved]) -> Replies:
    """5: the sale is final — the reservation is committed, once. An approval of an order
    this service never decided on cannot follow from its own reservation: dead-lettered
    (``InvalidEvent``), not ignored."""
    if event.order_id not in stock.decisions:
        raise InvalidEvent(
            f"OrderApproved for unknown order {event.order_id}: nothing was reserved for it", "unknown_order"
        )
    lines = stock.settle(event.order_id, frm="RESERVED", to="COMMITTED")
    return [InventoryCommitted(lines=lines)] if lines else []


@reactions.on(PaymentFailed)
def on_payment_failed(stock: Stock, event: Envelope[PaymentFailed]) -> Replies:
    """c2: release the reservation. A compensation: never refused, whatever it says."""
    lines = stock.settle(event.order_id, frm="RESERVED", to="RELEASED")
    return [InventoryReleased(lines=lines)] if lines else []


@reactions.on(OrderCancelled)
def on_order_cancelled(stock: Stock, event: Envelope[OrderCancelled]) -> Replies:
    """c5: give back whatever the order holds — a reservation is released, a sale (the
    order was APPROVED, then cancelled) is restocked — and remember the cancellation."""
    stock.decide_first(event.order_id, "CANCELLED")
    released = stock.settle(event.order_id, frm="RESERVED", to="RELEASED")
    restocked = stock.settle(event.order_id, frm="COMMITTED", to="RESTOCKED")
    lines = tuple(sorted(released + restocked, key=lambda line: line.product_id))
    return [InventoryReleased(lines=lines)] if lines else []
