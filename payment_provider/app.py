"""The provider's composition root (``build_app``) and its server (``serve``, ``main``).

Start: database reachable (retried up to 2 minutes) → migrations → HTTP. SIGTERM or
SIGINT stops it; a call waiting out an injected timeout does not hold the stop more than
3 s. It consumes no Kafka and has no outbox: it is an external system to the saga."""

from __future__ import annotations

import logging

import uvicorn
import uvloop
from fastapi import Depends, FastAPI
from fastapi_offline import FastAPIOffline
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from payment_provider import api, errors, faults
from payment_provider.schema import MIGRATIONS
from payment_provider.settings import Settings
from saga_kit import heap, logs
from saga_kit.db import create_engine
from saga_kit.errors import is_transient
from saga_kit.http import (
    DOCS_ASSETS,
    HeadAsGet,
    HeadLimitedProtocol,
    ServiceIdentity,
    authenticator,
    health_router,
    server_options,
)
from saga_kit.migrations import migrate
from saga_kit.retry import RetryPolicy
from saga_kit.settings import load_or_exit

log = logging.getLogger(__name__)

NAME = "payment_provider"


async def _ping(engine: AsyncEngine) -> None:
    """Readiness: the provider's database answers."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


def build_app(settings: Settings, engine: AsyncEngine) -> FastAPI:
    """The HTTP app over ``engine`` (whose schema is migrated): the API, health, and with
    ``fault_control`` the fault controls and their middleware."""
    app = FastAPIOffline(
        title="Payment provider (simulator)",
        version="1.0.0",
        description="A card processor's API, simulated: accounts, idempotent charges and refunds, "
        "a ledger to reconcile against, and fault controls for tests.",
        static_url=DOCS_ASSETS,
        swagger_ui_parameters={"validatorUrl": None},
        telemetry={"tracing": False, "metrics": False, "logs": False},
        # no authentication of its own (a stand-in): every caller is an operator, and
        # sees the readiness check's reason
        dependencies=[Depends(authenticator(None, metrics_public=True))],
    )
    app.state.engine = engine
    app.state.faults = faults.FaultInjector(settings.faults)
    app.include_router(health_router({"database": lambda: _ping(engine)}))
    for router in api.routers():
        app.include_router(router)
    if settings.fault_control:
        app.include_router(faults.router)
        app.add_middleware(faults.FaultMiddleware, injector=app.state.faults)
    errors.install(app, settings.http_max_body_bytes, NAME)
    app.add_middleware(
        errors.BodyLimit,
        max_body_bytes=settings.http_max_body_bytes,
        body_timeout=settings.http_body_timeout_seconds,
    )
    # it names itself, and refuses a request meant for a saga service (its URL given for one's)
    app.add_middleware(
        ServiceIdentity, name=NAME, problem=lambda detail, reason: errors.error_body(reason, detail)
    )
    app.add_middleware(HeadAsGet)  # HEAD wherever GET is (RFC 9110 §9.3.2), as the services
    return app


async def prepare(engine: AsyncEngine, retry: RetryPolicy | None = None) -> None:
    """Wait for the database (at most 2 minutes), then apply the migrations."""

    async def ping() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    await (retry or RetryPolicy()).until(
        ping, is_transient, lambda exc: log.info("waiting for the database: %s", exc), give_up_after=120
    )
    for name in await migrate(engine, MIGRATIONS):
        log.info("applied migration %s", name)


async def serve(settings: Settings) -> None:
    engine = create_engine(settings.database_url, pool_size=settings.db_pool_size)
    try:
        await prepare(engine)
        server = uvicorn.Server(
            uvicorn.Config(
                build_app(settings, engine),
                host=settings.http_host,
                port=settings.http_port,
                timeout_graceful_shutdown=3,  # a call sleeping out an injected timeout
                # the server's own refusals (a head it cannot read, …) in the provider's
                # shape, named as its other answers are (an attack trial: the services')
                **server_options(
                    HeadLimitedProtocol.max_head_bytes,
                    name=NAME,
                    problem=lambda detail, reason: errors.error_body(reason, detail),
                ),
            )
        )
        log.info(
            "%s listening on http://%s:%d (fault control %s)",
            NAME,
            settings.http_host,
            settings.http_port,
            "on" if settings.fault_control else "off",
        )
        heap.settle(settings.gc_gen0_threshold)  # the start-up heap frozen, as the services do
        await server.serve()  # until SIGTERM or SIGINT
        if not server.started:
            raise RuntimeError(f"HTTP server could not start on port {settings.http_port}")
    finally:
        await engine.dispose()


def main() -> None:
    """Entry point of ``python -m payment_provider``. Settings that do not validate stop
    it before anything starts: one log line, exit code 2 (``saga_kit.settings.load_or_exit``)."""
    settings = load_or_exit(NAME, Settings)  # database_url comes from the environment
    logs.configure(NAME, settings.log_level)
    try:
        uvloop.run(serve(settings))
    except Exception:
        log.exception("%s stopped on error", NAME)
        raise SystemExit(1) from None
    log.info("%s stopped", NAME)
