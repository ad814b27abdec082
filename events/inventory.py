"""Events owned by the inventory service (topic ``inventory.events``)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from events.envelope import EventPayload
from events.values import MAX_LINE_QUANTITY, MAX_ORDER_LINES, ExternalId, Money

PRODUCER = "inventory_svc"


class PricedLine(BaseModel):
    """A reserved line priced from the catalogue at reservation time."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    product_id: ExternalId
    quantity: Annotated[int, Field(strict=True, ge=1, le=MAX_LINE_QUANTITY * MAX_ORDER_LINES)]
    unit_price: Money
    line_total: Money

    @model_validator(mode="after")
    def _priced(self) -> PricedLine:
        if self.line_total != self.unit_price * self.quantity:
            raise ValueError(f"line_total {self.line_total} is not {self.quantity} x {self.unit_price}")
        return self


class StockLine(BaseModel):
    """A quantity of one product moved between stock buckets."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    product_id: ExternalId
    quantity: Annotated[int, Field(strict=True, ge=1, le=MAX_LINE_QUANTITY * MAX_ORDER_LINES)]


class InventoryReserved(EventPayload):
    """Step 2: every line is reserved; carries the priced lines and the total to charge."""

    event_type: ClassVar[str] = "InventoryReserved"
    producer: ClassVar[str] = PRODUCER

    customer_id: ExternalId
    lines: Annotated[tuple[PricedLine, ...], Field(min_length=1)]
    #: the sum of the lines' ``line_total`` (checked on decoding, as each line's product)
    total: Money

    @model_validator(mode="after")
    def _summed(self) -> InventoryReserved:
        if self.total != sum(line.line_total for line in self.lines):
            raise ValueError(f"total {self.total} is not the sum of the lines")
        return self


class InventoryReservationFailed(EventPayload):
    """Step 2, rejected: nothing is held for the order."""

    event_type: ClassVar[str] = "InventoryReservationFailed"
    producer: ClassVar[str] = PRODUCER

    customer_id: ExternalId
    reason: Literal["insufficient_stock", "unknown_product"]
    product_ids: tuple[ExternalId, ...]


class InventoryCommitted(EventPayload):
    """Step 5: the reservation became a sale."""

    event_type: ClassVar[str] = "InventoryCommitted"
    producer: ClassVar[str] = PRODUCER

    lines: tuple[StockLine, ...]


class InventoryReleased(EventPayload):
    """c2/c5: what the order held went back to available stock."""

    event_type: ClassVar[str] = "InventoryReleased"
    producer: ClassVar[str] = PRODUCER

    lines: tuple[StockLine, ...]
