"""The reservation rule, pure: all lines or nothing, priced from the catalogue.

An order is reserved only if every product exists and has enough available stock for
its (summed) quantity; otherwise nothing at all is held. Prices come from the catalogue,
never from the client.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from events import OrderLine, PricedLine


@dataclass(frozen=True)
class StockLevel:
    available: int
    price: Decimal


@dataclass(frozen=True)
class Reserve:
    lines: tuple[PricedLine, ...]

    @property
    def total(self) -> Decimal:
        return sum((line.line_total for line in self.lines), Decimal("0.00"))


@dataclass(frozen=True)
class Refuse:
    reason: Literal["insufficient_stock", "unknown_product"]
    product_ids: tuple[str, ...]


def requested_quantities(items: Iterable[OrderLine]) -> dict[str, int]:
    """Quantity per product, lines for the same product summed, in product-id order."""
    wanted: dict[str, int] = {}
    for item in items:
        wanted[item.product_id] = wanted.get(item.product_id, 0) + item.quantity
    return dict(sorted(wanted.items()))


def plan_reservation(wanted: Mapping[str, int], stock: Mapping[str, StockLevel]) -> Reserve | Refuse:
    unknown = tuple(pid for pid in wanted if pid not in stock)
    if unknown:
        return Refuse("unknown_product", unknown)
    short = tuple(pid for pid, qty in wanted.items() if stock[pid].available < qty)
    if short:
        return Refuse("insufficient_stock", short)
    return Reserve(
        tuple(
            PricedLine(
                product_id=pid,
                quantity=qty,
                unit_price=stock[pid].price,
                line_total=stock[pid].price * qty,
            )
            for pid, qty in wanted.items()
        )
    )
