"""HTTP API of the order service. Routes decode, call one function, and answer."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import text

from events import OrderLine
from events.envelope import ExternalId, Money
from order_svc import timeline
from order_svc.cancelling import OrderNotFound, cancel_order
from order_svc.domain import OrderStatus
from order_svc.placing import place_order
from order_svc.settings import Settings
from saga_kit.http import DatabaseDep, SettingsDep

router = APIRouter(tags=["orders"])


class PlaceOrder(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: ExternalId
    items: Annotated[list[OrderLine], Field(min_length=1, max_length=100)]
    #: How long the saga may stay PENDING before it is cancelled with reason ``timeout``;
    #: the service default (``ORDER_DEADLINE_SECONDS``, 30 s) when absent.
    deadline_seconds: Annotated[float | None, Field(gt=0, le=86_400)] = None

    @field_validator("items")
    @classmethod
    def _one_line_per_product(cls, items: list[OrderLine]) -> list[OrderLine]:
        seen: set[str] = set()
        for line in items:
            if line.product_id in seen:
                raise ValueError(f"product_id {line.product_id!r} appears on more than one line")
            seen.add(line.product_id)
        return items


class OrderAccepted(BaseModel):
    order_id: uuid.UUID
    status: OrderStatus


class OrderItemView(BaseModel):
    product_id: str
    quantity: int
    unit_price: Money | None


class OrderView(BaseModel):
    order_id: uuid.UUID
    customer_id: str
    status: OrderStatus
    reason: str | None
    items: list[OrderItemView]
    total: Money | None
    deadline_at: datetime
    created_at: datetime
    updated_at: datetime


class TimelineEntry(BaseModel):
    event_id: uuid.UUID
    event_type: str
    producer: str
    occurred_at: datetime
    causation_id: uuid.UUID | None
    payload: dict[str, Any]
    #: The trace this event was recorded in; one saga is one trace.
    trace_id: str | None = None


class SagaView(BaseModel):
    order_id: uuid.UUID
    status: OrderStatus
    events: list[TimelineEntry]


IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200)]


@router.post("/orders", status_code=202, response_model=OrderAccepted)
async def post_order(
    body: PlaceOrder, db: DatabaseDep, settings: SettingsDep, key: IdempotencyKey = None
) -> OrderAccepted:
    """Place an order. 202: the saga has started; poll the order for its outcome."""
    assert isinstance(settings, Settings)
    seconds = body.deadline_seconds if body.deadline_seconds is not None else settings.deadline_seconds
    order_id, status = await place_order(
        db,
        body.customer_id,
        body.items,
        key,
        timedelta(seconds=seconds),
        deadline_requested=body.deadline_seconds is not None,
    )
    return OrderAccepted(order_id=order_id, status=status)


@router.post(
    "/orders/{order_id}/cancel",
    status_code=202,
    response_model=OrderAccepted,
    responses={404: {"description": "no such order"}, 409: {"description": "the order is not cancellable"}},
)
async def post_cancel(order_id: uuid.UUID, db: DatabaseDep) -> OrderAccepted:
    """Cancel a PENDING or APPROVED order. 202: it is CANCELLED now, and the participants
    release its stock and refund its charge asynchronously (watch ``/orders/{id}/saga``).
    A REJECTED or already CANCELLED order answers 409 and nothing changes."""
    try:
        status = await cancel_order(db, order_id)
    except OrderNotFound:
        raise HTTPException(404, f"order {order_id} not found") from None
    return OrderAccepted(order_id=order_id, status=status)


async def _load_order(db: DatabaseDep, order_id: uuid.UUID) -> OrderView:
    async with db.engine.connect() as conn:
        row = (await conn.execute(text("SELECT * FROM orders WHERE order_id = :o"), {"o": order_id})).first()
        if row is None:
            raise HTTPException(404, f"order {order_id} not found")
        items = await conn.execute(
            text(
                "SELECT product_id, quantity, unit_price FROM order_items"
                " WHERE order_id = :o ORDER BY line_no"
            ),
            {"o": order_id},
        )
        return OrderView(
            order_id=row.order_id,
            customer_id=row.customer_id,
            status=row.status,
            reason=row.reason,
            total=row.total,
            deadline_at=row.deadline_at,
            created_at=row.created_at,
            updated_at=row.updated_at,
            items=[OrderItemView.model_validate(i._mapping) for i in items],
        )


@router.get("/orders/{order_id}", response_model=OrderView)
async def get_order(order_id: uuid.UUID, db: DatabaseDep) -> OrderView:
    return await _load_order(db, order_id)


@router.get("/orders", response_model=list[OrderView])
async def list_orders(
    db: DatabaseDep,
    status: OrderStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[OrderView]:
    """Most recent orders first, optionally only those in ``status``."""
    async with db.engine.connect() as conn:
        ids = await conn.scalars(
            text(
                "SELECT order_id FROM orders WHERE (CAST(:s AS TEXT) IS NULL OR status = :s)"
                " ORDER BY created_at DESC LIMIT :n"
            ),
            {"s": status.value if status else None, "n": limit},
        )
        order_ids = list(ids)
    return [await _load_order(db, oid) for oid in order_ids]


@router.get("/orders/{order_id}/saga", response_model=SagaView)
async def get_saga(order_id: uuid.UUID, db: DatabaseDep) -> SagaView:
    """Every event of this order's saga, from all three services, oldest first."""
    order = await _load_order(db, order_id)
    async with db.engine.connect() as conn:
        events = await timeline.load(conn, order_id)
    return SagaView(
        order_id=order_id,
        status=order.status,
        events=[TimelineEntry.model_validate(e) for e in events],
    )
