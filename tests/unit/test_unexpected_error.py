"""A bug's 500 (an exception no handler takes) is answered by Starlette's
``ServerErrorMiddleware``, outside every middleware a service adds: it was plain text,
with neither the ``Server`` nor the ``Cache-Control: no-store`` of every other answer (an
attack trial). ``saga_kit.http.unexpected_error`` answers it in the services' shape."""

from __future__ import annotations

import httpx
from sqlalchemy.ext.asyncio import create_async_engine

from saga_kit.db import Database
from saga_kit.http import create_app
from saga_kit.settings import ServiceSettings


async def _broken_metrics() -> bytes:
    raise RuntimeError("a bug")


async def test_a_bug_is_a_500_problem_named_and_not_stored() -> None:
    url = "postgresql+psycopg://nobody@127.0.0.1:1/none"  # never connected to
    settings = ServiceSettings(database_url=url, http_port=1)  # type: ignore[call-arg]
    db = Database(create_async_engine(url), "order_svc")
    app = create_app("order_svc", "order", db, settings, [], {}, _broken_metrics)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        answer = await client.get("/metrics")
    assert answer.status_code == 500
    assert answer.json() == {
        "detail": "an unexpected error: see the service's log",
        "reason": "internal_error",
    }
    assert (answer.headers["server"], answer.headers["cache-control"]) == ("order_svc", "no-store")
