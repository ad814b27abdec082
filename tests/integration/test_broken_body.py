"""A request whose body ends before it is complete — its client gone, or its chunks
unreadable, which the HTTP server answers 400 itself — was answered by the app as a body
it could not read, 422, and the audit trail and the trace recorded that 422, which the
client never saw (an attack trial). The services and the payment provider's simulator
answer it 400 ``invalid_http_request`` (``saga_kit.http.broke_off``)."""

from __future__ import annotations

import json

from sqlalchemy import text

from order_svc.app import SPEC
from order_svc.settings import Settings
from saga_kit.http import BODY_BROKE_OFF
from saga_kit.service import http_app
from tests.integration.conftest import ServiceUnderTest, broken_off_answer


async def _no_metrics() -> bytes:
    return b""


async def test_a_body_whose_client_went_away_is_a_400_in_the_audit_trail_not_a_422(
    order: ServiceUnderTest,
) -> None:
    settings = Settings.model_construct(database_url="postgresql+psycopg://unused/db", http_port=0)
    app = http_app(SPEC, order.db, settings, {}, _no_metrics)
    status, body = await broken_off_answer(app, "/orders")
    assert (status, body) == (400, {"detail": BODY_BROKE_OFF, "reason": "invalid_http_request"})
    entry = json.loads(await order.scalar("SELECT entry FROM audit_log ORDER BY seq DESC LIMIT 1"))
    assert (entry["action"], entry["outcome"]) == ("POST /orders", "400"), entry
    async with order.db.engine.connect() as conn:
        placed = await conn.scalar(text("SELECT count(*) FROM orders WHERE customer_id = 'broken-off'"))
    assert placed == 0
