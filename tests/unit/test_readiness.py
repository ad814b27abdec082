"""``GET /health/ready`` answers within one check's timeout, however many checks hang, and
names a failure that has no message; it gives the reasons to an operator only
(saga_kit.http.health_router)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from aiokafka.errors import KafkaError
from fastapi import Depends, FastAPI

from saga_kit.auth import (
    DEV_AUDIENCE,
    DEV_ISSUER,
    WITHHELD,
    Role,
    TokenVerifier,
    Unauthorized,
    write_dev_issuer,
)
from saga_kit.http import (
    Check,
    Degraded,
    NotReady,
    PrincipalDep,
    authenticator,
    challenge_text,
    health_router,
)


async def _ready(
    checks: dict[str, Check],
    verifier: TokenVerifier | None = None,
    token: str | None = None,
    authorization: str | None = None,
) -> httpx.Response:
    """``GET /health/ready`` with ``token`` as a bearer token, or ``authorization`` as the
    whole header."""
    app = FastAPI(dependencies=[Depends(authenticator(verifier, metrics_public=False))])
    app.include_router(health_router(checks, timeout=0.5))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if authorization is not None:
        headers["Authorization"] = authorization
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers
    ) as client:
        return await client.get("/health/ready")


async def test_checks_run_side_by_side() -> None:
    """One after another, a database that did not answer held a probe for 12 s: each
    check's timeout was added to the last. Here the first check can pass only if the
    second has started while it waits."""
    second_started = asyncio.Event()

    async def first() -> None:
        await second_started.wait()

    async def second() -> None:
        second_started.set()

    answer = await _ready({"database": first, "broker": second})
    assert answer.status_code == 200, answer.json()


async def test_a_check_that_hangs_or_fails_without_words_is_named() -> None:
    async def hangs() -> None:
        await asyncio.sleep(3600)

    async def times_out() -> None:
        raise TimeoutError  # a client's own timeout: no message ("TimeoutError: " was shown)

    async def fine() -> None:
        return None

    async def names_itself() -> None:  # as aiokafka's errors do
        raise KafkaError("Unable to get cluster metadata over all known brokers")

    async def says_why() -> None:  # a check's own verdict
        raise NotReady("outbox relay is retrying: [Error 7] RequestTimedOutError")

    async def says_much() -> None:  # as SQLAlchemy's errors about psycopg's do (an operator trial)
        raise OSError(
            "(psycopg.OperationalError) connection failed: Connection refused\n\tIs the server running"
            " on that host?\n(Background on this error at: https://sqlalche.me/e/20/e3q8)"
        )

    answer = await _ready(
        {
            "database": hangs,
            "broker": times_out,
            "relay": fine,
            "kafka": names_itself,
            "outbox": says_why,
            "pool": says_much,
        }
    )
    assert answer.status_code == 503
    assert answer.json()["checks"] == {
        "database": {"ok": False, "error": "no answer within 0.5 s"},
        "broker": {"ok": False, "error": "TimeoutError"},
        "relay": {"ok": True},
        # not "KafkaError: KafkaError: …" (an operator trial)
        "kafka": {"ok": False, "error": "KafkaError: Unable to get cluster metadata over all known brokers"},
        # not "RuntimeError: outbox relay …" (an operator trial)
        "outbox": {"ok": False, "error": "outbox relay is retrying: [Error 7] RequestTimedOutError"},
        # its first line: what failed (the rest made sagactl health ~90 lines long)
        "pool": {
            "ok": False,
            "error": "OSError: (psycopg.OperationalError) connection failed: Connection refused",
        },
    }


async def _fails() -> None:
    raise OSError("connection failed: /run/saga/postgres/.s.PGSQL.5432")


async def _works_around() -> None:
    raise Degraded("provider circuit open since 12:00:00")


async def test_the_reasons_are_given_to_an_operator_only(tmp_path: Path) -> None:
    """The probe is public, and a failing check's error may name internals (the database's
    socket path under the run directory: an operator trial): a caller without an
    operator's token learns which check failed, not why."""
    issuer = write_dev_issuer(tmp_path / "issuer")
    verifier = TokenVerifier(DEV_ISSUER, DEV_AUDIENCE, jwks_file=str(issuer.jwks_file))
    checks: dict[str, Check] = {"database": _fails, "payment_provider": _works_around}
    withheld = {"ok": False, "error": WITHHELD}, {"ok": True, "degraded": WITHHELD}
    for token in (None, issuer.mint("ann", [Role.CUSTOMER])):
        answer = await _ready(checks, verifier, token)
        assert answer.status_code == 503
        assert answer.json() == {
            "status": "not_ready",
            "checks": {"database": withheld[0], "payment_provider": withheld[1]},
        }
        assert "PGSQL" not in answer.text
    operator = await _ready(checks, verifier, issuer.mint("olga", [Role.OPERATOR]))
    assert operator.status_code == 503
    assert operator.json()["checks"] == {
        "database": {"ok": False, "error": "OSError: connection failed: /run/saga/postgres/.s.PGSQL.5432"},
        "payment_provider": {"ok": True, "degraded": "provider circuit open since 12:00:00"},
    }
    # authentication off (development without keys): everyone is an operator
    assert (await _ready(checks)).json() == operator.json()


async def test_a_token_that_is_not_valid_is_refused_not_ignored(tmp_path: Path) -> None:
    """A probe configured with an expired or forged token is told so (the app answers the
    ``Unauthorized`` with 401), not silently given the public view."""
    issuer = write_dev_issuer(tmp_path / "issuer")
    verifier = TokenVerifier(DEV_ISSUER, DEV_AUDIENCE, jwks_file=str(issuer.jwks_file))
    with pytest.raises(Unauthorized):
        await _ready({"database": _fails}, verifier, "not-a-jwt")
    with pytest.raises(Unauthorized):
        await _ready({"database": _fails}, verifier, issuer.mint("olga", [Role.OPERATOR], ttl_seconds=-60))


async def test_a_public_routes_caller_without_a_token_has_no_role(tmp_path: Path) -> None:
    """With authentication on, a public route's caller was the development principal
    (``UNAUTHENTICATED``: an operator) — a trap for the next public route that reads it.
    It is ``ANONYMOUS`` now; a token on a public route that does not read one is not
    looked at; with authentication off everyone is the operator, as on every route."""
    issuer = write_dev_issuer(tmp_path / "issuer")
    verifier = TokenVerifier(DEV_ISSUER, DEV_AUDIENCE, jwks_file=str(issuer.jwks_file))

    async def caller(verifier: TokenVerifier | None, token: str | None) -> object:
        app = FastAPI(dependencies=[Depends(authenticator(verifier, metrics_public=False))])

        @app.get("/health/live")  # a public route (saga_kit.auth.POLICY) that reads its caller
        async def live(principal: PrincipalDep) -> dict[str, object]:
            return {"subject": principal.subject, "roles": sorted(principal.roles)}

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers) as client:
            return (await client.get("/health/live")).json()

    assert await caller(verifier, None) == {"subject": "anonymous", "roles": []}
    assert await caller(verifier, "not-a-jwt") == {"subject": "anonymous", "roles": []}
    assert await caller(None, None) == {"subject": "anonymous", "roles": [Role.OPERATOR.value]}


async def test_an_empty_authorization_header_on_the_probe_is_no_token(tmp_path: Path) -> None:
    """An attack trial: ``Authorization:`` with nothing in it was a 401 saying the probe
    "needs an Authorization: Bearer token" — it needs none. Empty is no token (as on the
    other routes, where it is ``missing_token``): the public view."""
    issuer = write_dev_issuer(tmp_path / "issuer")
    verifier = TokenVerifier(DEV_ISSUER, DEV_AUDIENCE, jwks_file=str(issuer.jwks_file))
    for empty in ("", "   "):
        answer = await _ready({"database": _fails}, verifier, authorization=empty)
        assert answer.status_code == 503
        assert answer.json()["checks"]["database"] == {"ok": False, "error": WITHHELD}
    with pytest.raises(Unauthorized):  # a header that says something is still verified
        await _ready({"database": _fails}, verifier, authorization="Bearer")


def test_a_challenges_description_keeps_to_rfc_6750s_characters() -> None:
    """PyJWT's words about a token can carry the token's own (a critical extension's
    name): a non-Latin-1 character made the 401 a 500, a quote added a parameter."""
    assert challenge_text("the token has expired") == "the token has expired"
    assert challenge_text('x", error="insufficient_scope') == "x?, error=?insufficient_scope"
    assert challenge_text("\u20ac \\ \u2026 \t\n") == "? ? ? ??"


async def test_a_services_checks_are_bounded_by_its_setting() -> None:
    """``READINESS_CHECK_SECONDS`` bounds each check of a service's ``/health/ready``: a
    broker that hangs took its fixed 2 s, past a probe's 1 s (an attack trial)."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from saga_kit.db import Database
    from saga_kit.http import create_app
    from saga_kit.settings import ServiceSettings

    async def hangs() -> None:
        await asyncio.sleep(30)

    async def no_metrics() -> bytes:
        return b""

    url = "postgresql+psycopg://nobody@127.0.0.1:1/none"  # never connected to
    settings = ServiceSettings(database_url=url, http_port=1, readiness_check_seconds=0.3)  # type: ignore[call-arg]
    db = Database(create_async_engine(url), "order_svc")
    app = create_app("order_svc", "order", db, settings, [], {"broker": hangs}, no_metrics)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        answer = await client.get("/health/ready")
    assert answer.status_code == 503
    assert answer.json()["checks"]["broker"] == {"ok": False, "error": "no answer within 0.3 s"}
