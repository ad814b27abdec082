"""The dashboard: a page served by the order service (``/dashboard``), plus the little API
it needs beyond the order service's own: counts by status, and stock and balances read
from the inventory and payment services (proxied, so the page talks to one origin and
those services need no CORS)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse
from sqlalchemy import text

from order_svc.settings import Settings
from saga_kit.http import DatabaseDep, SettingsDep, errors

STATIC = Path(__file__).parent / "dashboard"

router = APIRouter(tags=["dashboard"])


_ASSETS = {p.name: p for p in STATIC.iterdir() if p.suffix in (".js", ".css")}


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
