"""Admission control at the door: refuse, quickly, an order that cannot finish in time.

Accepting work that cannot finish before its deadline is the worst answer to overload:
the client waits for a 202, the saga queues, and its deadline cancels it anyway, after it
has held stock and money. So ``POST /orders`` first asks how long a new saga would wait:

    expected wait = sagas in flight (PENDING orders) / sagas finished per second (last 5 s)

and answers **503 with Retry-After** when that exceeds ``headroom`` times the order's deadline
(default half of it), while at least ``min_pending`` sagas are in flight (so a quiet
system, whose finishing rate is not known yet, never refuses). Both figures come from the
orders table, so every instance of the service sees the same backlog; they are read at
most every ``refresh_seconds`` (one query); orders accepted since, and those queued at
the order desk (``order_svc.placing``), count at once.

The check runs twice: in ``AdmissionGate``, before the request's body is even read, for
the service's default deadline — so that under overload a refusal costs next to nothing
— and in the route, for the order's own deadline.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.types import ASGIApp, Receive, Scope, Send

from saga_kit.db import Database

#: Over how many seconds the finishing rate is measured.
RATE_WINDOW = 5.0


@dataclass(frozen=True)
class Refusal:
    """Why an order is refused and when to try again (seconds, for ``Retry-After``)."""

    expected_wait: float
    retry_after: int

    @property
    def detail(self) -> str:
        return (
            f"the system is overloaded: a new order would wait about {self.expected_wait:.0f} s,"
            " longer than its deadline allows; try again later"
        )


class Admission:
    def __init__(
        self,
        db: Database,
        *,
        headroom: float = 0.5,
        min_pending: int = 100,
        refresh_seconds: float = 0.25,
        queued: Callable[[], int] = lambda: 0,
    ) -> None:
        self._db = db
        self._queued = queued
        self._headroom = headroom
        self._min_pending = min_pending
        self._refresh = refresh_seconds
        self._pending = 0
        self._rate = 0.0
        self._read_at = -math.inf
        self._accepted_since = 0
        self._lock = asyncio.Lock()
        self.refused = 0

    async def check(self, deadline_seconds: float) -> Refusal | None:
        """None to accept an order with this deadline, or why not."""
        if time.monotonic() - self._read_at > self._refresh:
            async with self._lock:  # one reader at a time; the others use its figures
                if time.monotonic() - self._read_at > self._refresh:
                    await self._read()
        pending = self._pending + self._accepted_since + self._queued()
        if pending < self._min_pending:
            return None
        expected = pending / max(self._rate, 0.1)
        allowed = self._headroom * deadline_seconds
        if expected <= allowed:
            return None
        self.refused += 1
        return Refusal(expected, max(1, min(60, math.ceil(expected - allowed))))

    def accepted(self) -> None:
        self._accepted_since += 1

    async def _read(self) -> None:
        async with self._db.engine.connect() as conn:
            pending, finished = (
                await conn.execute(
                    text(
                        "SELECT count(*) FILTER (WHERE status = 'PENDING'),"
                        " count(*) FILTER (WHERE status <> 'PENDING')"
                        " FROM orders WHERE status = 'PENDING'"
                        " OR updated_at > clock_timestamp() - make_interval(secs => :w)"
                    ),
                    {"w": RATE_WINDOW},
                )
            ).one()
        self._pending, self._rate = int(pending), int(finished) / RATE_WINDOW
        self._accepted_since = 0
        self._read_at = time.monotonic()


def of(app: Any) -> Admission:
    """The admission control of the order service's app, created on first use."""
    admission: Admission | None = getattr(app.state, "admission", None)
    if admission is None:
        settings = app.state.settings
        admission = app.state.admission = Admission(
            app.state.db,
            headroom=settings.admission_headroom,
            min_pending=settings.admission_min_pending,
            queued=lambda: _queued(app),
        )
    return admission


def _queued(app: Any) -> int:
    desk = getattr(app.state, "order_desk", None)
    return 0 if desk is None else desk.queued


class AdmissionGate:
    """Refuses ``POST /orders`` with 503 + Retry-After before reading the body, when even
    an order with the service's default deadline could not finish in time (pure ASGI)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/orders":
            app = scope["app"]
            refusal = await of(app).check(app.state.settings.deadline_seconds)
            if refusal is not None:
                await refused(refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def refused(refusal: Refusal) -> JSONResponse:
    """The 503 of a refused order."""
    return JSONResponse(
        {"detail": refusal.detail, "reason": "overloaded"},
        status_code=503,
        headers={"Retry-After": str(refusal.retry_after)},
    )
