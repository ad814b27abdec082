"""A request whose token cannot be checked because the key server (``AUTH_JWKS_URL``) does
not answer is a 503 with ``Retry-After`` — the caller's token may be valid — never a 401
``invalid_token`` (it was, before a review). The same when the body is invalid too: who
calls is asked first, and that question has no answer yet."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from inventory_svc.app import SPEC
from inventory_svc.settings import Settings
from saga_kit import auth
from saga_kit.auth import DEV_AUDIENCE, DEV_ISSUER, Role, write_dev_issuer
from saga_kit.service import http_app
from tests.jsonserver import JsonServer


async def _no_metrics() -> bytes:
    return b""


async def test_a_key_server_away_is_a_503_with_retry_after_and_back_the_call_goes_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "JWKS_RETRY_SECONDS", 0.0)  # asked again at once, here
    issuer = write_dev_issuer(tmp_path / "issuer")
    token = {"authorization": f"Bearer {issuer.mint('ops', [Role.OPERATOR])}"}
    with JsonServer(issuer.jwks_file.read_bytes(), down=True) as server:
        settings = Settings.model_construct(
            database_url="postgresql+psycopg://nowhere/db",
            http_port=0,
            auth_jwks_url=server.url,
            auth_issuer=DEV_ISSUER,
            auth_audience=DEV_AUDIENCE,
        )
        app = http_app(SPEC, cast(Any, None), settings, {}, _no_metrics)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            away = await http.get("/dead-letters/not-a-number", headers=token)
            invalid_body = await http.put(
                "/products/widget", headers=token | {"content-type": "application/json"}, content=b"{not json"
            )
            server.down = False
            back = await http.get("/dead-letters/not-a-number", headers=token)
    for answer in (away, invalid_body):
        assert answer.status_code == 503, answer.text
        assert answer.json()["reason"] == "service_unavailable"
        assert answer.headers["retry-after"]
    assert back.status_code == 422, back.text  # the caller known: now the path is refused
