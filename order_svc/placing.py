"""Step 1: place an order (HTTP command → PENDING order + OrderCreated, one transaction).

An ``Idempotency-Key`` makes a retried request return the order the first one created;
the same key with a different body is refused (409) rather than silently ignored.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from events import OrderCreated, OrderLine
from order_svc.domain import OrderStatus
from order_svc.errors import IdempotencyKeyReused
from saga_kit import tracing
from saga_kit.db import Database


async def place_order(
    db: Database,
    customer_id: str,
    items: Sequence[OrderLine],
    idempotency_key: str | None,
    deadline: timedelta,
    *,
    deadline_requested: bool = False,
) -> tuple[uuid.UUID, OrderStatus]:
    """``deadline`` is how long the saga may stay PENDING before it is cancelled (c4)."""
    deadline_at = datetime.now(UTC) + deadline
    payload = OrderCreated(customer_id=customer_id, items=tuple(items), deadline_at=deadline_at)
    request = {
        "customer_id": customer_id,
        "items": [line.model_dump() for line in items],
        "deadline_seconds": deadline.total_seconds() if deadline_requested else None,
    }
    request_hash = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
    order_id = uuid.uuid4()
    async with db.unit_of_work() as uow:
        inserted = await uow.conn.scalar(
            text(
                "INSERT INTO orders"
                " (order_id, customer_id, status, idempotency_key, request_hash, deadline_at, trace_context)"
                " VALUES (:o, :c, 'PENDING', :k, :h, :d, :t)"
                " ON CONFLICT (idempotency_key) DO NOTHING RETURNING order_id"
            ),
            {
                "o": order_id,
                "c": customer_id,
                "k": idempotency_key,
                "h": request_hash,
                "d": deadline_at,
                "t": tracing.current_traceparent(),
            },
        )
        if inserted is None:  # the key was seen before: answer with that order
            row = (
                await uow.conn.execute(
                    text("SELECT order_id, status, request_hash FROM orders WHERE idempotency_key = :k"),
                    {"k": idempotency_key},
                )
            ).one()
            if row.request_hash != request_hash:
                raise IdempotencyKeyReused()
            return row.order_id, OrderStatus(row.status)
        for line_no, line in enumerate(items, start=1):
            await uow.conn.execute(
                text(
                    "INSERT INTO order_items (order_id, line_no, product_id, quantity)"
                    " VALUES (:o, :n, :p, :q)"
                ),
                {"o": order_id, "n": line_no, "p": line.product_id, "q": line.quantity},
            )
        await uow.emit(payload, order_id=order_id, causation_id=None)
    return order_id, OrderStatus.PENDING
