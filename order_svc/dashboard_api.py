"""The dashboard: a page served by the order service (``/dashboard``), plus the little API
it needs beyond the order service's own: counts by status, stock and balances read from
the inventory and payment services, and every service's readiness (proxied, so the page
talks to one origin and those services need no CORS)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import httpx
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy import text

from events.values import printable
from order_svc.settings import Settings
from saga_kit.http import CheckResult, DatabaseDep, SettingsDep, errors

STATIC = Path(__file__).parent / "dashboard"

router = APIRouter(tags=["dashboard"])


_ASSETS = {p.name: p for p in STATIC.iterdir() if p.suffix in (".js", ".css", ".svg")}


@router.get("/dashboard", include_in_schema=False)
async def dashboard() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/dashboard/static/{name}", include_in_schema=False)
async def asset(name: str) -> FileResponse:
    if name not in _ASSETS:
        raise HTTPException(404, f"no asset {name!r}")
    return FileResponse(_ASSETS[name], headers={"Cache-Control": "no-cache"})


_UNREACHABLE = errors({502: "the service behind it did not answer, or answered an error"}, invalid=False)


@router.get("/dashboard/api/summary", summary="How many orders in each status")
async def summary(db: DatabaseDep) -> dict[str, int]:
    """Orders by status (PENDING = sagas in flight); a status without orders is absent."""
    async with db.engine.connect() as conn:
        rows = await conn.execute(text("SELECT status, COUNT(*) FROM orders GROUP BY status"))
        return {status: n for status, n in rows}


async def _proxy(url: str) -> Any:
    try:
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.get(url)
    except httpx.HTTPError as exc:
        raise HTTPException(502, f"cannot reach {url}: {exc}") from None
    if response.status_code != 200:
        raise HTTPException(502, f"{url} answered {response.status_code}")
    return response.json()


@router.get(
    "/dashboard/api/stock",
    summary="Every product's stock, from the inventory service",
    responses=_UNREACHABLE,
)
async def stock(settings: SettingsDep) -> Any:
    """`GET /products` of the inventory service, passed through so the page needs one origin."""
    assert isinstance(settings, Settings)
    return await _proxy(f"{settings.inventory_url}/products")


@router.get(
    "/dashboard/api/balances",
    summary="Every account's balance, from the payment service",
    responses=_UNREACHABLE,
)
async def balances(settings: SettingsDep) -> Any:
    """`GET /accounts` of the payment service, passed through so the page needs one origin."""
    assert isinstance(settings, Settings)
    return await _proxy(f"{settings.payment_url}/accounts")


class ServiceHealth(BaseModel):
    """A service's ``/health/ready`` as the dashboard shows it; ``unreachable`` when it did
    not answer with a readiness body (``error`` says why)."""

    status: Literal["ready", "degraded", "not_ready", "unreachable"]
    checks: dict[str, CheckResult] = {}
    error: str | None = None


async def _readiness(client: httpx.AsyncClient, url: str) -> ServiceHealth:
    try:
        response = await client.get(url)
        # 503 is an answer too: not ready, with the failing checks in the body
        return ServiceHealth.model_validate(response.json())
    except (httpx.HTTPError, ValueError, ValidationError) as exc:
        return ServiceHealth(status="unreachable", error=printable(f"{type(exc).__name__}: {exc}", 300))


@router.get(
    "/dashboard/api/health",
    summary="Every service's readiness",
    response_model=dict[str, ServiceHealth],
    response_model_exclude_none=True,
)
async def health(settings: SettingsDep, request: Request) -> dict[str, ServiceHealth]:
    """`GET /health/ready` of the order, inventory and payment services, each check with
    its error or why it is degraded (payment's `payment_provider` while the provider's
    circuit breaker is open). A service that does not answer is `unreachable`: this route
    itself always answers 200."""
    assert isinstance(settings, Settings)
    # the order service's own readiness is asked in process: it needs no URL of itself
    # (named 127.0.0.1: the Host allow-list applies to it like to any request)
    own = httpx.AsyncClient(transport=httpx.ASGITransport(app=request.app), base_url="http://127.0.0.1")
    async with own, httpx.AsyncClient(timeout=5.0) as client:
        return {
            "order_svc": await _readiness(own, "/health/ready"),
            "inventory_svc": await _readiness(client, f"{settings.inventory_url}/health/ready"),
            "payment_svc": await _readiness(client, f"{settings.payment_url}/health/ready"),
        }
