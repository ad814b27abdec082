"""The dashboard: a page served by the order service (``/dashboard``), plus the little API
it needs beyond the order service's own: counts by status, sagas per minute by outcome,
and — proxied, so the page talks to one origin and the other services need no CORS —
stock and balances from the inventory and payment services, every service's readiness,
and every service's dead letters with their replay and discard."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy import text
from starlette.types import Receive, Scope, Send

from events.values import printable
from order_svc import statuscounts
from order_svc.domain import OrderStatus
from order_svc.settings import Settings
from saga_kit import tracing
from saga_kit.deadletters import DeadLetter, DeadLetterSummary, LetterId, ReplayResult, StatusFilter
from saga_kit.errors import DomainRejection
from saga_kit.http import IN_DIGITS, AnyCase, CheckResult, DatabaseDep, errors, upstream_unavailable
from saga_kit.service_names import SERVICES, Service, ServiceName, service_named
from saga_kit.urls import MEANT_FOR, NOT_SENT, unanswered

STATIC = Path(__file__).parent / "dashboard"

router = APIRouter(tags=["dashboard"])


_ASSETS = {p.name: p for p in STATIC.iterdir() if p.suffix in (".js", ".css", ".svg")}


#: The page loads its own scripts, styles and icon and calls its own service, nothing
#: else; no page may frame it (it holds an operator's token and replays dead letters):
#: defence in depth beside building every node with textContent (an attack trial).
DASHBOARD_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self';"
    " frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


class WholeFile(FileResponse):
    """A file of the page, always whole (200), its ``Range`` ignored, as RFC 9110 §14.2
    lets a server: Starlette answered a bad one in plain text (400 "Range header: start
    must be less than end", 416), not in the services' shape, and refused a unit it does
    not know, which §14.2 says to ignore (an attack trial). The files are a few kilobytes:
    no part of one is worth a request of its own, so none is offered (no ``Accept-Ranges``)."""

    def __init__(self, path: Path, headers: dict[str, str]) -> None:
        super().__init__(path, headers=headers)
        del self.headers["accept-ranges"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        whole = [(name, value) for name, value in scope["headers"] if name not in (b"range", b"if-range")]
        await super().__call__({**scope, "headers": whole}, receive, send)


@router.get("/dashboard", include_in_schema=False)
async def dashboard() -> FileResponse:
    return WholeFile(
        STATIC / "index.html",
        headers={"Cache-Control": "no-cache", "Content-Security-Policy": DASHBOARD_POLICY},
    )


@router.get("/dashboard/static/{name}", include_in_schema=False)
async def asset(name: str) -> FileResponse:
    if name not in _ASSETS:
        raise HTTPException(404, f"no asset {name!r}")
    return WholeFile(_ASSETS[name], headers={"Cache-Control": "no-cache"})


_UNREACHABLE = errors(
    {
        502: "the service behind it could not be reached, or answered an error",
        504: "the service behind it took the request and did not answer in time",
        503: "the service behind it is briefly unavailable (`service_unavailable`);"
        " retry after `Retry-After`",
    },
    invalid=False,
)


@router.get("/dashboard/api/summary", summary="How many orders in each status")
async def summary(db: DatabaseDep) -> dict[str, int]:
    """Orders in each of the four statuses (PENDING = sagas in flight), 0 included. Exact,
    and read without counting the orders table (``order_svc.statuscounts``)."""
    async with db.engine.connect() as conn:
        counts = await statuscounts.read(conn)
    return {status.value: counts.get(status.value, 0) for status in OrderStatus}


def _service(service: ServiceName) -> Service:
    """The service a dead-letter route's ``{service}`` names: by the name it gives itself
    (``payment_svc``) or its short one (``payment``), as sagactl takes them."""
    return service_named(service)


#: A service named in a route's path, by either of its names.
ServiceInPath = Annotated[Service, Depends(_service)]


#: Seconds the dashboard waits to reach another service, and then for each part of its answer.
PROXY_TIMEOUT = 5.0


async def _call(
    request: Request, service: Service, method: str, path: str, **params: str | int
) -> httpx.Response:
    """Every request the dashboard makes to a service, its own included, goes through here:
    the place for what every such request needs. The order service asks itself in process
    (it needs no URL of itself; named 127.0.0.1, as the Host allow-list applies to it like
    to any request); the others at ``ORDER_INVENTORY_URL`` and ``ORDER_PAYMENT_URL``, with a
    timeout of ``PROXY_TIMEOUT``. Any answer is returned, errors included; raises ``httpx.HTTPError`` when
    there is none."""
    settings = request.app.state.settings
    assert isinstance(settings, Settings)
    # the caller's own token: the other service decides what this operator may see
    authorization = request.headers.get("authorization")
    headers = {"Authorization": authorization} if authorization else {}
    headers[MEANT_FOR] = service  # a URL that is another service's is its 421, not its data
    traceparent = tracing.current_traceparent()
    if traceparent is not None:  # the service's own trace links to the dashboard call's (W3C)
        headers["traceparent"] = traceparent
    if service == "order_svc":
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=request.app), base_url="http://127.0.0.1", headers=headers
        )
    else:
        url = settings.inventory_url if service == "inventory_svc" else settings.payment_url
        client = httpx.AsyncClient(base_url=url, timeout=PROXY_TIMEOUT, headers=headers)
    async with client:
        return await client.request(method, path, params=params)


async def _proxy(request: Request, service: Service, method: str, path: str, **params: str | int) -> Any:
    """The JSON body of the service's 2xx answer to ``method path``. Its 404 is answered as
    a 404 and its 409 as a 409 with its ``reason``, each ``detail`` led by the service's
    name (``"payment_svc: dead letter 7 failed again: …"``); its 503 is a 503 with its
    ``Retry-After`` (``upstream_unavailable``); a service that cannot be reached, or any
    other answer, is a 502 saying which service and why; one that took the request and did
    not answer is a 504 (RFC 9110 §15.6.5) — for a call that changes something, saying it
    may have been carried out (an attack trial: a replay through the dashboard was a 502
    "did not answer" while inventory was frozen, and the replay ran when it woke)."""
    try:
        response = await _call(request, service, method, path, **params)
    except NOT_SENT as exc:
        raise HTTPException(502, _no_answer(service, exc)) from None
    except httpx.HTTPError as exc:
        doubt = "" if method == "GET" else " (it may have been carried out: look before trying again)"
        raise HTTPException(504, _no_answer(service, exc) + doubt) from None
    if response.status_code == 503:  # whatever its body: the retry signal is what counts
        raise upstream_unavailable(service, response.headers.get("retry-after"))
    try:
        body = response.json()
    except ValueError as exc:
        raise HTTPException(
            502, f"{service} answered {response.status_code} without JSON: {_why(exc)}"
        ) from None
    if response.is_success:
        return body
    detail = body.get("detail") if isinstance(body, dict) else None
    said = printable(detail if isinstance(detail, str) else json.dumps(body), 500)
    if response.status_code == 404:
        raise HTTPException(404, f"{service}: {said}")
    if response.status_code == 409:
        raise DomainRejection(str(body.get("reason", "conflict")), f"{service}: {said}")
    raise HTTPException(502, f"{service} answered {response.status_code}: {said}")


def _no_answer(service: Service, exc: httpx.HTTPError) -> str:
    """Why ``service`` gave no answer, in the words sagactl uses: it "could not be reached"
    (nothing sent: ``NOT_SENT``), or it "took the request and did not answer" within
    ``PROXY_TIMEOUT`` (or closed the connection: why)."""
    if isinstance(exc, NOT_SENT):
        return f"{service} could not be reached: {_why(exc)}"
    late = f" within {PROXY_TIMEOUT:g} s" if isinstance(exc, httpx.TimeoutException) else f": {_why(exc)}"
    return f"{service} took the request and did not answer{late}"


def _why(exc: Exception) -> str:
    return printable(f"{type(exc).__name__}: {exc}", 300)


@router.get(
    "/dashboard/api/stock",
    summary="Every product's stock, from the inventory service",
    responses=_UNREACHABLE,
)
async def stock(request: Request) -> Any:
    """`GET /products` of the inventory service, passed through so the page needs one origin."""
    return await _proxy(request, "inventory_svc", "GET", "/products")


@router.get(
    "/dashboard/api/balances",
    summary="Every account's balance, from the payment service",
    responses=_UNREACHABLE,
)
async def balances(request: Request) -> Any:
    """`GET /accounts` of the payment service, passed through so the page needs one origin."""
    return await _proxy(request, "payment_svc", "GET", "/accounts")


class Minute(BaseModel):
    """The sagas started in one minute, by what became of them so far."""

    #: The minute's first instant.
    minute: datetime
    approved: int
    rejected: int
    cancelled: int
    #: Still PENDING.
    in_flight: int


@router.get("/dashboard/api/throughput", summary="Sagas started per minute, by outcome", responses=errors())
async def throughput(
    db: DatabaseDep, minutes: Annotated[int, Query(ge=1, le=1440), IN_DIGITS] = 60
) -> list[Minute]:
    """The last ``minutes`` minutes (1 to 1440, default 60), oldest first, the current one
    last (still counting): how many orders were placed in each and what each became —
    approved, rejected, cancelled, or still in flight. A minute without orders is there
    with zeros, so a chart needs nothing else."""
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT m.minute,"
                " count(*) FILTER (WHERE o.status = 'APPROVED') AS approved,"
                " count(*) FILTER (WHERE o.status = 'REJECTED') AS rejected,"
                " count(*) FILTER (WHERE o.status = 'CANCELLED') AS cancelled,"
                " count(*) FILTER (WHERE o.status = 'PENDING') AS in_flight"
                " FROM generate_series("
                "   date_trunc('minute', now()) - make_interval(mins => CAST(:n AS INT) - 1),"
                "   date_trunc('minute', now()), interval '1 minute'"
                " ) AS m (minute)"
                " LEFT JOIN orders o"
                "   ON o.created_at >= m.minute AND o.created_at < m.minute + interval '1 minute'"
                " GROUP BY m.minute ORDER BY m.minute"
            ),
            {"n": minutes},
        )
        return [Minute.model_validate(row, from_attributes=True) for row in rows]


_FROM_SERVICE = errors(
    {
        404: "no such dead letter in that service",
        502: "the service could not be reached, or answered an error; `detail` says which and why",
        504: "the service took the request and did not answer in time",
    }
)
_ACTION_FROM_SERVICE = errors(
    {
        404: "no such dead letter in that service",
        409: "the service refused: the letter is already resolved (`dead_letter_resolved`), or the"
        " replay failed again (`replay_failed`); `detail` leads with the service's name",
        502: "the service could not be reached, or answered an error; `detail` says which and why",
        504: "the service took the request and did not answer in time: it may have been carried out",
    }
)


@router.get(
    "/dashboard/api/dead-letters/{service}",
    summary="A service's dead letters",
    response_model=list[DeadLetterSummary],
    responses=_FROM_SERVICE,
)
async def dead_letters(
    service: ServiceInPath,
    request: Request,
    status: Annotated[StatusFilter, AnyCase] = "PENDING",
    limit: Annotated[int, Query(ge=1, le=1000), IN_DIGITS] = 100,
) -> Any:
    """`GET /dead-letters` of the order, inventory or payment service: newest first, those
    waiting for a decision unless another ``status`` (or ALL) is asked."""
    return await _proxy(request, service, "GET", "/dead-letters", status=status, limit=limit)


@router.get(
    "/dashboard/api/dead-letters/{service}/{letter_id}",
    summary="One dead letter of a service",
    response_model=DeadLetter,
    responses=_FROM_SERVICE,
)
async def dead_letter(service: ServiceInPath, letter_id: LetterId, request: Request) -> Any:
    """`GET /dead-letters/{letter_id}` of that service: reason, source, key, headers and a
    preview of the body (the event's envelope, when it is one)."""
    return await _proxy(request, service, "GET", f"/dead-letters/{letter_id}")


@router.post(
    "/dashboard/api/dead-letters/{service}/{letter_id}/replay",
    summary="Replay a service's dead letter",
    response_model=ReplayResult,
    responses=_ACTION_FROM_SERVICE,
)
async def replay(service: ServiceInPath, letter_id: LetterId, request: Request) -> Any:
    """`POST /dead-letters/{letter_id}/replay` of that service: its consumer processes the
    original record again (409 ``replay_failed`` with the new reason if it fails again)."""
    return await _proxy(request, service, "POST", f"/dead-letters/{letter_id}/replay")


@router.post(
    "/dashboard/api/dead-letters/{service}/{letter_id}/discard",
    summary="Discard a service's dead letter",
    response_model=DeadLetterSummary,
    responses=_ACTION_FROM_SERVICE,
)
async def discard(service: ServiceInPath, letter_id: LetterId, request: Request) -> Any:
    """`POST /dead-letters/{letter_id}/discard` of that service: marked DISCARDED, never
    processed (409 ``dead_letter_resolved`` if it was already resolved)."""
    return await _proxy(request, service, "POST", f"/dead-letters/{letter_id}/discard")


class ServiceHealth(BaseModel):
    """A service's ``/health/ready`` as the dashboard shows it, or why there is none
    (``error`` says what happened): ``unreachable`` when it could not be reached,
    ``not_answering`` when it took the request and gave no answer within
    ``PROXY_TIMEOUT`` (frozen, or closed the connection), ``error`` when it answered
    something that is not a readiness. The same words as ``sagactl health -o json``."""

    status: Literal["ready", "degraded", "not_ready", "unreachable", "not_answering", "error"]
    checks: dict[str, CheckResult] = {}
    error: str | None = None


async def _readiness(request: Request, service: Service) -> ServiceHealth:
    try:
        response = await _call(request, service, "GET", "/health/ready")
    except httpx.HTTPError as exc:
        return ServiceHealth(status=unanswered(exc), error=_no_answer(service, exc))
    try:
        # 503 is an answer too: not ready, with the failing checks in the body
        return ServiceHealth.model_validate(response.json())
    except (ValueError, ValidationError) as exc:
        said = f"answered {response.status_code}, not a readiness: {_why(exc)}"
        return ServiceHealth(status="error", error=printable(said, 300))


@router.get(
    "/dashboard/api/health",
    summary="Every service's readiness",
    response_model=dict[str, ServiceHealth],
    response_model_exclude_none=True,
)
async def health(request: Request) -> dict[str, ServiceHealth]:
    """`GET /health/ready` of the order, inventory and payment services, each check with
    its error or why it is degraded (payment's `payment_provider` while the provider's
    circuit breaker is open). A service that cannot be reached is `unreachable`, one that
    took the request and did not answer `not_answering`, one that answered something else
    `error`, each with its `error`: this route itself always answers 200."""
    answers = await asyncio.gather(*(_readiness(request, service) for service in SERVICES))
    return dict(zip(SERVICES, answers, strict=True))
