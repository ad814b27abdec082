"""A status in a query is taken in any case: ``GET /orders?status=pending`` lists the
PENDING orders and ``GET /dead-letters?status=all`` every letter (both were a 422: an
operator's note, "``?status=approved`` is refused, upper case only"). A status that is
none of them is still a 422 listing those it could be. Over the order service's real
database and its HTTP app, without Kafka."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest_asyncio

from events.order import OrderLine
from order_svc.app import SPEC
from order_svc.placing import Placed, Placement, place_orders
from order_svc.settings import Settings
from saga_kit.service import http_app
from tests.integration.conftest import ServiceUnderTest


async def _no_metrics() -> bytes:
    return b""


@pytest_asyncio.fixture
async def http(order: ServiceUnderTest) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings.model_construct(database_url="postgresql+psycopg://unused/db", http_port=0)
    app = http_app(SPEC, order.db, settings, {}, _no_metrics)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client


async def _placed(order: ServiceUnderTest, customer: str) -> uuid.UUID:
    lines = (OrderLine(product_id="p", quantity=1),)
    (placed,) = await place_orders(order.db, [Placement(customer, lines, None, timedelta(minutes=5))])
    assert isinstance(placed, Placed)
    return placed.order_id


async def test_an_order_status_in_lower_or_mixed_case_filters_as_in_capitals(
    order: ServiceUnderTest, http: httpx.AsyncClient
) -> None:
    customer = f"case-{uuid.uuid4().hex[:8]}"
    order_id = await _placed(order, customer)
    listed: dict[str, Any] = {}
    for given in ("PENDING", "pending", "Pending", "approved"):
        answer = await http.get("/orders", params={"status": given, "customer_id": customer})
        assert answer.status_code == 200, answer.text
        listed[given] = [o["order_id"] for o in answer.json()]
    assert listed["PENDING"] == listed["pending"] == listed["Pending"] == [str(order_id)]
    assert listed["approved"] == []


async def test_a_status_that_is_none_of_them_in_any_case_is_still_a_422_listing_them(
    http: httpx.AsyncClient,
) -> None:
    for path in ("/orders", "/dead-letters"):
        answer = await http.get(path, params={"status": "approve"})
        assert answer.status_code == 422, answer.text
        assert "PENDING" in answer.text, answer.text


async def test_a_dead_letter_status_in_any_case_is_taken(http: httpx.AsyncClient) -> None:
    for given in ("all", "All", "pending", "discarded", "replayed"):
        answer = await http.get("/dead-letters", params={"status": given})
        assert answer.status_code == 200, (given, answer.text)
        assert isinstance(answer.json(), list)
