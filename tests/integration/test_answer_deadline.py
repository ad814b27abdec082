"""A database that holds a query without refusing it (a server stopped with SIGSTOP, a
network that drops packets) held every request that had a connection until it answered:
75 s in an attack trial, while the README promises a 503. Over the order service's real
database and HTTP app, a lock stands in for the database that does not answer: the route
is answered 503 ``service_unavailable`` at the deadline, and the same request is answered
once the lock is gone."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import httpx
from sqlalchemy import text

from events.order import OrderLine
from order_svc.app import SPEC
from order_svc.placing import OrderDesk, Placed, Placement, place_orders
from order_svc.settings import Settings
from saga_kit.service import http_app
from tests.integration.conftest import ServiceUnderTest
from tests.polling import until


async def _no_metrics() -> bytes:
    return b""


async def test_a_route_whose_database_does_not_answer_is_a_503_at_the_deadline(
    order: ServiceUnderTest,
) -> None:
    line = OrderLine(product_id="p", quantity=1)
    (placed,) = await place_orders(order.db, [Placement("deadline", (line,), None, timedelta(minutes=5))])
    assert isinstance(placed, Placed)
    settings = Settings.model_construct(
        database_url="postgresql+psycopg://unused/db", http_port=0, http_answer_timeout_seconds=0.5
    )
    app = http_app(SPEC, order.db, settings, {}, _no_metrics)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http:
        async with order.db.engine.connect() as holder:
            await holder.begin()
            await holder.execute(text("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE"))
            loop = asyncio.get_running_loop()
            began = loop.time()
            answer = await asyncio.wait_for(http.get(f"/orders/{placed.order_id}"), 30)
            waited = loop.time() - began
            await holder.rollback()
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"] == "1"
        assert answer.json()["reason"] == "service_unavailable"
        assert waited >= 0.5, waited  # the deadline, not the lock's end
        again = await http.get(f"/orders/{placed.order_id}")
        assert again.status_code == 200 and again.json()["order_id"] == str(placed.order_id)
        missing = await http.get(f"/orders/{uuid.uuid4()}")
        assert missing.status_code == 404  # the pool is whole again


_WAITS_ON_A_LOCK = "wait_event_type = 'Lock'"
_IN_A_TRANSACTION = "state <> 'idle' AND backend_type = 'client backend' AND pid <> pg_backend_pid()"


async def _backends(order: ServiceUnderTest, where: str, *, none: bool = False) -> bool:
    """Whether a backend of the order service's database is (``none``: is not) as ``where``
    says, read on a connection of its own (``pg_stat_activity`` is read once per transaction)."""
    n = await order.scalar(
        f"SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND {where}"
    )
    return n == 0 if none else n > 0


async def _orders_of(order: ServiceUnderTest, *customers: str) -> dict[str, int]:
    async with order.db.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT customer_id, count(*) FROM orders WHERE customer_id = ANY(:c) GROUP BY 1"),
            {"c": list(customers)},
        )
        return {c: n for c, n in rows.all()}


async def test_an_order_whose_caller_went_away_while_the_database_held_it_is_not_placed(
    order: ServiceUnderTest,
) -> None:
    """An attack trial froze PostgreSQL: ``POST /orders`` was answered 503 at the answer
    deadline (its route cancelled), and once the database came back the order was placed,
    charged and audited as 202 all the same — the desk's batch went on without its caller.
    Here a lock stands in for the database that does not answer: the caller that goes away
    takes its order with it, whether the whole batch was its own or shared."""
    desk = OrderDesk(order.db)
    line = OrderLine(product_id="p", quantity=1)
    alone, gone, stays = (f"{who}-{uuid.uuid4().hex[:8]}" for who in ("alone", "gone", "stays"))
    try:
        for cancelled, kept in (([alone], []), ([gone], [stays])):
            async with order.db.engine.connect() as holder:
                await holder.begin()
                await holder.execute(text("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE"))
                callers = {
                    who: asyncio.create_task(desk.place(Placement(who, (line,), None, timedelta(minutes=5))))
                    for who in [*cancelled, *kept]  # queued together: one batch
                }
                await until(lambda: _backends(order, _WAITS_ON_A_LOCK), "the batch waits on the lock")
                for who in cancelled:
                    callers[who].cancel()  # as AnswerDeadline cancels a route it answered 503
                went_away = [callers[who] for who in cancelled]
                await until(lambda w=went_away: all(c.done() for c in w), "the callers gone")
                await holder.rollback()
            for who in kept:
                placed = await asyncio.wait_for(callers[who], 30)
                assert isinstance(placed, Placed)
            # anything left behind has ended its transaction: committed or rolled back
            await until(lambda: _backends(order, _IN_A_TRANSACTION, none=True), "the batch's end", 30)
        assert await _orders_of(order, alone, gone, stays) == {stays: 1}
    finally:
        await desk.close()
