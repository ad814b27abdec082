"""Ids users choose (customers, products: ``events.values.ExternalId``) appear in URL
paths, so an id of only dots — ``.``, ``..``, which every URL library resolves away — is
refused where it is given, with the reason, not accepted and then unreachable (a helper's
attack: ``PUT /accounts/.`` was a 502 from the provider's side)."""

from __future__ import annotations

from typing import Any, cast

import httpx
import pytest
from pydantic import TypeAdapter, ValidationError

from events.values import ExternalId
from inventory_svc.app import SPEC
from inventory_svc.settings import Settings
from saga_kit.service import http_app


@pytest.mark.parametrize("given", [".", "..", "..."])
def test_an_id_of_only_dots_is_refused(given: str) -> None:
    with pytest.raises(ValidationError, match="an id may not be only dots"):
        TypeAdapter(ExternalId).validate_python(given)


@pytest.mark.parametrize("given", ["a", ".a", "a.", "a..b", "v1.2:x_y-z"])
def test_an_id_with_anything_but_dots_in_it_is_taken(given: str) -> None:
    assert TypeAdapter(ExternalId).validate_python(given) == given


async def _no_metrics() -> bytes:
    return b""


@pytest.mark.parametrize("segment", ["%2E", "%2E%2E"])
async def test_a_route_given_an_id_of_only_dots_answers_422_with_the_reason(segment: str) -> None:
    settings = Settings.model_construct(database_url="postgresql+psycopg://nowhere/db", http_port=0)
    app = http_app(SPEC, cast(Any, None), settings, {}, _no_metrics)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http:
        answer = await http.get(f"/products/{segment}")  # escaped: no client resolves it away
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["reason"] == "invalid_request"
    assert "an id may not be only dots" in body["detail"][0]["msg"]
