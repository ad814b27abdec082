"""HTTP pieces every service shares: the app factory, health endpoints, dependencies."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from events.values import printable
from saga_kit import tracing
from saga_kit.db import Database
from saga_kit.errors import DomainRejection
from saga_kit.settings import ServiceSettings

#: Prometheus text exposition, version 0.0.4.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Check = Callable[[], Awaitable[None]]

#: Where the scripts, styles and icon of ``/docs`` (Swagger UI) and ``/redoc`` are served
#: from: fastapi-offline ships them, so the API docs need no network.
DOCS_ASSETS = "/static-offline-docs"
#: Probes, scrapes and pages are not traced: they would drown the sagas' traces.
_UNTRACED = (
    "/health/",
    "/metrics",
    "/dashboard",
    "/saga-events/stream",
    "/docs",
    "/redoc",
    "/openapi.json",
    DOCS_ASSETS,
)


class TraceIdHeader:
    """Adds ``X-Trace-Id`` (the request's trace) to every answer (pure ASGI: no per-request
    task or body buffering, unlike a ``BaseHTTPMiddleware``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ids = tracing.current_ids()

        async def with_trace_id(message: Message) -> None:
            if ids is not None and message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-trace-id", ids[0].encode())]
            await send(message)

        await self.app(scope, receive, with_trace_id)


async def get_database(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


DatabaseDep = Annotated[Database, Depends(get_database)]


async def get_settings(request: Request) -> ServiceSettings:
    settings: ServiceSettings = request.app.state.settings
    return settings


SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]


def health_router(checks: Mapping[str, Check], timeout: float = 2.0) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/health/live")
    async def live() -> dict[str, str]:
        """200 while the process runs and its event loop answers."""
        return {"status": "ok"}

    @router.get("/health/ready", response_model=None)
    async def ready() -> JSONResponse:
        """200 when every dependency answers, else 503; the body names each check."""
        results: dict[str, Any] = {}
        for name, check in checks.items():
            try:
                await asyncio.wait_for(check(), timeout)
                results[name] = {"ok": True}
            except Exception as exc:  # a failing check is the answer, not an error
                results[name] = {"ok": False, "error": printable(f"{type(exc).__name__}: {exc}", 1000)}
        ok = all(r["ok"] for r in results.values())
        return JSONResponse(
            {"status": "ready" if ok else "not_ready", "checks": results},
            status_code=200 if ok else 503,
        )

    return router


def metrics_router(render: Callable[[], Awaitable[bytes]]) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        """Prometheus text exposition format."""
        return Response(await render(), media_type=METRICS_CONTENT_TYPE)

    return router


def create_app(
    title: str,
    db: Database,
    settings: ServiceSettings,
    routers: list[APIRouter],
    checks: Mapping[str, Check],
    metrics: Callable[[], Awaitable[bytes]],
) -> FastAPI:
    app = FastAPIOffline(
        title=title,
        version="1.0.0",
        static_url=DOCS_ASSETS,
        # Swagger UI would otherwise ask a public validator about the document
        swagger_ui_parameters={"validatorUrl": None},
        # The framework's own OpenTelemetry server span is the request's one span (it
        # continues an incoming traceparent); probes and scrapes are left out.
        telemetry={
            "tracing": True,
            "operation_spans": False,
            "metrics": False,
            "logs": False,
            "exclude": lambda scope: str(scope.get("path", "")).startswith(_UNTRACED),
        },
    )
    app.state.db = db
    app.state.settings = settings
    app.include_router(health_router(checks))
    app.include_router(metrics_router(metrics))
    for router in routers:
        app.include_router(router)

    app.add_middleware(TraceIdHeader)

    @app.exception_handler(DomainRejection)
    async def rejection(_: Request, exc: DomainRejection) -> JSONResponse:
        return JSONResponse({"detail": exc.detail, "reason": exc.reason}, status_code=409)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_errors(exc), "reason": "invalid_request"}, status_code=422)

    return app


def validation_errors(exc: RequestValidationError, limit: int = 20) -> list[dict[str, Any]]:
    """The 422 body: where and why, never the input itself. The framework's default echoes
    the input, and an input JSON cannot carry (a NaN, a lone surrogate) turned the 422
    into a 500; nothing from the request is echoed here but printable names."""
    out: list[dict[str, Any]] = []
    for err in exc.errors()[:limit]:
        msg = str(err.get("msg", "invalid"))
        ctx = err.get("ctx")
        if err.get("type") == "json_invalid" and isinstance(ctx, dict) and ctx.get("error"):
            msg = f"{msg}: {ctx['error']}"
        out.append(
            {
                "loc": [p if isinstance(p, int) else printable(str(p), 100) for p in err.get("loc", ())],
                "msg": printable(msg, 300),
                "type": str(err.get("type", "invalid")),
            }
        )
    return out
