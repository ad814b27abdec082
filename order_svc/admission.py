"""Admission control at the door: refuse, quickly, an order that cannot finish in time.

Accepting work that cannot finish before its deadline is the worst answer to overload:
the client waits for a 202, the saga queues, and its deadline cancels it anyway, after it
has held stock and money. So ``POST /orders`` first estimates how long a new saga would
wait, from how long the sagas in flight have waited so far — a queue's sojourn time, as
CoDel does for packets, which needs no estimate of throughput and is right from the first
second of a burst:

    expected wait = 2 x the median age of the PENDING orders + the order desk's delay

(in a queue drained in order, the ages of what waits are spread evenly between 0 and the
queue's delay; the desk's delay is how long the oldest order not yet placed has waited
for its transaction, ``order_svc.placing``). It answers **503 with Retry-After** when
that exceeds ``headroom`` times the order's deadline (default: half of it), provided at
least ``min_pending`` sagas are in flight — so neither a quiet system nor one stuck order
refuses anyone. The figures come from the orders table, so every instance of the service
sees the same backlog; they are read at most every ``refresh_seconds`` (one query), off
the request's path: a request that finds them older starts the read and is answered on
the figures it has, unless they are older than ``max_stale_seconds`` (or there are none
yet), when it waits for the read.

The same read takes the age of the oldest event in the order service's outbox that the
broker has not yet taken: while the broker is away no saga moves, and the sagas in flight
are too few to show it (under ``min_pending``), so every order accepted during an outage
longer than its deadline allowed ran into it (an operator trial: 21 of 21, cancelled
``timeout``). An order is refused (gate ``broker``) while that age exceeds both
``headroom`` times its deadline and ``BROKER_AWAY_SECONDS`` — a blip of the broker, or a
relay a second behind under load, refuses nobody; an outage of 15 s refuses the orders
of 30 s deadlines.

That sees the queue of sagas, not a queue at the door: when the service itself has more
requests than CPU, every request in progress slows down together (the event loop shares
itself among them) and a client may wait many seconds for its 202 before any order
exists. ``Door`` watches that queue the same way, by sojourn time: it refuses
``POST /orders`` with 503 and ``Retry-After`` while the ``door_depth``-th oldest request in
progress has been in the service (since its body arrived) longer than ``door_seconds``.
Counting from the body's arrival leaves a slow client's own upload out, and the
``door_depth``-th oldest rather than the oldest keeps a few stuck requests from closing
the door. Past ``door_max`` requests in progress (counted from when they came in) it
refuses too: when the offered rate is several times what the service can answer, requests
would otherwise pile up faster than their bodies are even read, and each refusal would
wait its turn behind them.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from saga_kit.db import Database

log = logging.getLogger(__name__)

#: How long the broker must have taken none of the service's events before the ``broker``
#: gate refuses anyone, whatever the order's deadline: an outage, not a relay behind.
BROKER_AWAY_SECONDS = 5.0

#: Orders refused in this process since start, by gate: ``backlog`` and ``broker``
#: (``Admission``) and ``door`` (``Door``); /metrics: ``saga_order_admission_refused_total{gate}``.
REFUSED: collections.Counter[str] = collections.Counter()


@dataclass(frozen=True)
class Refusal:
    """Why an order is refused and when to try again (seconds, for ``Retry-After``)."""

    expected_wait: float
    retry_after: int
    #: refused at the door (``Door``): why, in words; None: refused for the saga backlog
    at_door: str | None = None
    #: refused because the broker has taken none of the service's events for
    #: ``expected_wait`` seconds
    broker: bool = False

    @property
    def detail(self) -> str:
        if self.at_door:
            return f"the order service is overloaded: {self.at_door}; try again later"
        if self.broker:
            return (
                f"the broker has taken none of the order service's events for {self.expected_wait:.0f} s:"
                " no saga moves, and a new order would not finish before its deadline; try again later"
            )
        return (
            f"the system is overloaded: a new order would wait about {self.expected_wait:.0f} s,"
            " longer than its deadline allows; try again later"
        )


#: The backlog's figures (``Backlog``) in one statement: the PENDING orders' count and
#: median age, and the age of the oldest event the broker has not taken (``Admission._read``).
BACKLOG_SQL = (
    "SELECT n, (SELECT EXTRACT(EPOCH FROM clock_timestamp() - created_at)"
    "   FROM orders WHERE status = 'PENDING' ORDER BY created_at OFFSET n / 2 LIMIT 1) AS median_age,"
    # since it was written, or since a new broker made it unsent again
    " (SELECT EXTRACT(EPOCH FROM clock_timestamp()"
    "   - greatest(o.created_at, (SELECT since FROM outbox_broker)))"
    "   FROM outbox o WHERE o.sent_at IS NULL ORDER BY o.id LIMIT 1) AS unpublished_age"
    " FROM (SELECT count(*) AS n FROM orders WHERE status = 'PENDING') pending"
)


@dataclass(frozen=True)
class Backlog:
    """The sagas in flight as admission reads them (``BACKLOG_SQL``): how many orders are
    PENDING, their median age and the age of the oldest event the broker has not taken
    (seconds; 0.0 when there is none)."""

    pending: int
    median_age: float
    unpublished_age: float

    @classmethod
    def of(cls, row: Any) -> Backlog:
        """From a row of ``BACKLOG_SQL``: (n, median_age, unpublished_age)."""
        pending, median, unpublished = row
        return cls(int(pending), float(median or 0.0), float(unpublished or 0.0))


def judge(
    backlog: Backlog, deadline_seconds: float, *, headroom: float, min_pending: int, desk: float = 0.0
) -> Refusal | None:
    """None to accept an order with this deadline (seconds), or why not (module doc): the
    broker gate, then the backlog's — ``2 x median age + desk`` against ``headroom`` times
    the deadline, once ``min_pending`` sagas are in flight or the desk (``desk``, seconds)
    is a second behind. Pure: the HTTP door (``Admission.check``) and ``PlaceOrder`` on
    ``orders.commands`` (``order_svc.handlers``) decide alike."""
    allowed = headroom * deadline_seconds
    if backlog.unpublished_age > max(allowed, BROKER_AWAY_SECONDS):
        return Refusal(backlog.unpublished_age, 5, broker=True)
    if backlog.pending < min_pending and desk < 1.0:
        return None
    expected = 2 * backlog.median_age + desk
    if expected <= allowed:
        return None
    return Refusal(expected, _retry_after(expected - allowed))


def count(refusal: Refusal) -> None:
    """Count a refusal by its gate (``REFUSED``: /metrics)."""
    REFUSED["broker" if refusal.broker else "backlog"] += 1


class Admission:
    """The backlog gate (module doc). ``refresh_seconds``: how old the figures may be before
    a request starts a read in the background; ``max_stale_seconds`` (default four times
    that, 1 s): how old they may be before a request waits for the read. Raises what the
    database raises only from a read the request waited for."""

    def __init__(
        self,
        db: Database,
        *,
        headroom: float = 0.5,
        min_pending: int = 100,
        refresh_seconds: float = 0.25,
        max_stale_seconds: float | None = None,
        desk_delay: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._db = db
        self._desk_delay = desk_delay
        self._headroom = headroom
        self._min_pending = min_pending
        self._refresh = refresh_seconds
        self._max_stale = 4 * refresh_seconds if max_stale_seconds is None else max_stale_seconds
        self._reading: asyncio.Task[None] | None = None
        self._backlog = Backlog(0, 0.0, 0.0)
        self._read_at = -math.inf
        self._lock = asyncio.Lock()
        self.refused = 0

    async def check(self, deadline_seconds: float) -> Refusal | None:
        """None to accept an order with this deadline, or why not (counted)."""
        age = time.monotonic() - self._read_at
        if age > self._max_stale:  # too old to decide on (or none yet): wait for them
            async with self._lock:  # one reader at a time; the others use its figures
                if time.monotonic() - self._read_at > self._max_stale:
                    await self._read()
        elif age > self._refresh and (self._reading is None or self._reading.done()):
            self._reading = asyncio.create_task(self._read_behind(), name="admission-read")
        refusal = judge(
            self._backlog,
            deadline_seconds,
            headroom=self._headroom,
            min_pending=self._min_pending,
            desk=self._desk_delay(),
        )
        if refusal is not None:
            self.refused += 1
            count(refusal)
        return refusal

    async def _read_behind(self) -> None:
        """A read no request waits for: a failure is logged, and the next request that
        finds the figures too old reads them itself (and answers the failure)."""
        try:
            async with self._lock:
                if time.monotonic() - self._read_at > self._refresh:
                    await self._read()
        except Exception as exc:
            log.warning("admission: the backlog could not be read (%s); the figures are kept", exc)

    async def _read(self) -> None:
        """The PENDING orders' count and median age (of an even count, the younger of the
        two middle orders: no interpolation), both walked off the
        ``orders_status`` index (status, created_at) in its order, where sorting every
        PENDING order's age (``percentile_cont``) cost about twice the database's time
        at a backlog of 3,000 (measured under ``make bench``); and the age of the oldest
        unsent outbox row, the first of the ``outbox_unsent`` index — counted from when a
        new broker made it unsent again, if it did (``saga_kit.outbox.on_broker``): the
        hour of events published again after a restart read as an hour-long outage, and
        refused every order while they drained (an attack trial)."""
        async with self._db.engine.connect() as conn:
            self._backlog = Backlog.of((await conn.execute(text(BACKLOG_SQL))).one())
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
            desk_delay=lambda: _desk_delay(app),
        )
    return admission


def _desk_delay(app: Any) -> float:
    desk = getattr(app.state, "order_desk", None)
    return 0.0 if desk is None else float(desk.queue_delay())


def _retry_after(seconds: float) -> int:
    """``Retry-After`` for a wait of ``seconds``: whole seconds, from 1 to 60."""
    return max(1, min(60, math.ceil(seconds)))


def refused(refusal: Refusal) -> JSONResponse:
    """The 503 of a refused order: ``broker_unavailable`` when the broker takes none of the
    service's events, else ``overloaded``."""
    reason = "broker_unavailable" if refusal.broker else "overloaded"
    return JSONResponse(
        {"detail": refusal.detail, "reason": reason},
        status_code=503,
        headers={"Retry-After": str(refusal.retry_after)},
    )


class Door:
    """ASGI middleware around the order service's whole app (outside the framework, so a
    refusal costs little): refuses ``POST /orders`` with 503 ``overloaded`` and
    ``Retry-After`` while the requests in progress answer slowly (module doc). Settings
    (``order_svc.settings``): ``ADMISSION_DOOR_SECONDS`` (1 s), ``ADMISSION_DOOR_DEPTH``
    (8 requests), ``ADMISSION_DOOR_MAX`` (128 requests)."""

    def __init__(self, app: ASGIApp, settings: Any) -> None:
        self.app = app
        self.seconds: float = settings.admission_door_seconds
        self.depth: int = settings.admission_door_depth
        self.most: int = settings.admission_door_max
        #: requests whose body has arrived and whose answer has not left: id → since when
        #: (monotonic seconds); a dict keeps insertion order, which is arrival order
        self._in_progress: dict[int, float] = {}
        #: requests that came in and whose answer has not left, body arrived or not
        self._entered = 0
        #: requests whose app is waiting on the client for the rest of the body: not counted
        #: against ``most`` (a client that starts an upload and stalls holds no capacity)
        self._uploading: set[int] = set()
        self._ids = itertools.count()
        #: orders refused at the door since start
        self.refused = 0

    def waited(self, depth: int) -> float:
        """Seconds the ``depth``-th oldest request in progress has been in the service (0
        when fewer are in progress)."""
        if len(self._in_progress) < depth:
            return 0.0
        since = next(itertools.islice(self._in_progress.values(), depth - 1, None))
        return time.monotonic() - since

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/orders":
            await self.app(scope, receive, send)
            return
        waited = self.waited(self.depth)
        why = None
        if waited > self.seconds:
            why = f"orders in progress have waited {waited:.1f} s for an answer"
        elif (in_progress := self._entered - len(self._uploading)) >= self.most:
            why = f"{in_progress} orders are in progress"
        if why is not None:
            self.refused += 1
            REFUSED["door"] += 1
            refusal = Refusal(waited, _retry_after(waited), at_door=why)
            await refused(refusal)(scope, receive, send)
            return
        key = next(self._ids)

        async def counted(receive: Receive = receive) -> Message:
            if key not in self._in_progress:  # the body is still to come: wait on the client
                self._uploading.add(key)
            try:
                message = await receive()
            finally:
                self._uploading.discard(key)
            if message["type"] == "http.request" and not message.get("more_body", False):
                self._in_progress.setdefault(key, time.monotonic())
            return message

        self._entered += 1
        try:
            await self.app(scope, counted, send)
        finally:
            self._entered -= 1
            self._uploading.discard(key)
            self._in_progress.pop(key, None)
