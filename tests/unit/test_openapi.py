"""Each service's OpenAPI document, read from its app without running anything: every
route has a real summary and a description, documents its 422 with the body a 422 has,
gives every error answer a body model, and names the ``Location`` of a 202; and the
README's HTTP API table lists exactly the routes the services have.

Which errors a route actually answers is checked against the running services
(tests/e2e/test_api_docs.py, and the fuzzer in tests/e2e/test_http_fuzz.py)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from inventory_svc.app import SPEC as INVENTORY
from order_svc.app import SPEC as ORDER
from order_svc.settings import Settings as OrderSettings
from payment_svc.app import SPEC as PAYMENT
from saga_kit.auth import TOKEN_OPTIONAL, Access, access_of
from saga_kit.service import ServiceSpec, http_app
from saga_kit.settings import ServiceSettings

README = Path(__file__).resolve().parents[2] / "README.md"
SPECS = {spec.name: spec for spec in (ORDER, INVENTORY, PAYMENT)}
#: The bodies an error answer may have.
ERROR_BODIES = {"Problem", "InvalidRequest", "Readiness"}


async def _no_metrics() -> bytes:
    return b""


def app_of(spec: ServiceSpec) -> Any:
    """The service's app as it serves; nothing it needs to answer a request is there, but
    its routes and documents are."""
    kind = OrderSettings if spec.name == "order_svc" else ServiceSettings  # the order API reads its own
    settings = kind.model_construct(database_url="postgresql+psycopg://nowhere/db", http_port=0)
    return http_app(spec, cast(Any, None), settings, {}, _no_metrics)


def client_of(spec: ServiceSpec) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app_of(spec)), base_url="http://127.0.0.1")


@pytest.fixture(scope="module", params=list(SPECS))
def document(request: pytest.FixtureRequest) -> dict[str, Any]:
    doc: dict[str, Any] = app_of(SPECS[request.param]).openapi()
    return doc


def operations(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield f"{method.upper()} {path}", operation


def test_every_route_has_a_summary_and_a_description(document: dict[str, Any]) -> None:
    for route, operation in operations(document):
        summary = operation.get("summary", "")
        # without one, the framework makes it from the function's name: "Post Order"
        generated = operation["operationId"].startswith(summary.lower().replace(" ", "_") + "_")
        assert summary and not generated, f"{route}: summary {summary!r}"
        assert len(operation.get("description", "")) > len(summary), f"{route} has no description"


def test_a_route_that_reads_input_documents_its_422_and_no_other_does(document: dict[str, Any]) -> None:
    for route, operation in operations(document):
        reads = bool(operation.get("parameters") or operation.get("requestBody"))
        answer = operation["responses"].get("422")
        assert (answer is not None) == reads, f"{route}: 422 documented {answer is not None}, reads {reads}"
        if answer is not None:
            assert schema_name(answer) == "InvalidRequest", route
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_every_error_answer_has_a_body_model(document: dict[str, Any]) -> None:
    for route, operation in operations(document):
        for status, answer in operation["responses"].items():
            if int(status) >= 400:
                assert schema_name(answer) in ERROR_BODIES, f"{route} {status}: {answer}"
                assert not answer["description"].startswith(("Successful", "Additional")), route


def test_every_bound_is_in_words_openapi_tools_read(document: dict[str, Any]) -> None:
    """A newcomer trial: 18 integer parameters gave their range as ``ge``/``le`` (pydantic's
    names, left there when a validator came before the bounds), which no OpenAPI tool
    reads: /docs showed no range. JSON Schema's ``minimum``/``maximum`` say it."""

    def pydantic_words(node: Any, at: str) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("ge", "le", "gt", "lt") and not isinstance(value, dict):
                    yield f"{at}.{key}"
                yield from pydantic_words(value, f"{at}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from pydantic_words(value, f"{at}[{i}]")

    assert list(pydantic_words(document, "")) == []
    limits = [
        p["schema"]
        for _, op in operations(document)
        for p in op.get("parameters", [])
        if p["name"] == "limit"
    ]
    assert limits and all("minimum" in s and "maximum" in s for s in limits), limits


def test_a_202_names_its_location(document: dict[str, Any]) -> None:
    accepted = [
        (route, op["responses"]["202"]) for route, op in operations(document) if "202" in op["responses"]
    ]
    for route, answer in accepted:
        assert "Location" in answer.get("headers", {}), route
    if document["info"]["title"].startswith("order_svc"):
        assert {route for route, _ in accepted} == {"POST /orders", "POST /orders/{order_id}/cancel"}


async def test_error_bodies_are_the_documented_models() -> None:
    async with client_of(ORDER) as client:
        missing = await client.get("/no-such-page")
        invalid = await client.get("/orders/not-a-uuid")
    assert missing.status_code == 404
    assert missing.json() == {
        "detail": "order_svc has no route GET /no-such-page; this service's routes are listed at /docs",
        "reason": "not_found",
    }
    assert invalid.status_code == 422
    assert invalid.json()["reason"] == "invalid_request"
    assert invalid.json()["detail"][0]["loc"] == ["path", "order_id"]


async def test_a_route_of_another_service_is_named_as_such() -> None:
    """``PUT /accounts/ann`` sent to the inventory service was a bare "Not Found"."""
    async with client_of(INVENTORY) as client:
        elsewhere = await client.put("/accounts/ann", json={"balance": "1.00"})
        wrong_method = await client.delete("/accounts/ann")  # no service has it
        odd = await client.get("/x\u202e")
    assert (elsewhere.status_code, elsewhere.json()["reason"]) == (404, "not_found")
    assert elsewhere.json()["detail"] == (
        "inventory_svc has no route PUT /accounts/ann: that is another service's route"
        " (make run prints each service's URL); this service's routes are listed at /docs"
    )
    assert "another service" not in wrong_method.json()["detail"]
    assert "\u202e" not in odd.json()["detail"]  # a path from outside is shown escaped


def test_every_route_documents_what_it_needs_of_the_caller(document: dict[str, Any]) -> None:
    """saga_kit.auth.POLICY in the document: a route that needs a token names the bearer
    scheme and documents its 401; an operator's route — and placing an order, which a
    customer may do for itself only — its 403; a public route neither. A state-changing
    route documents the request guard's 403 (another origin), 413 and 415. A public route
    that reads a token when one is sent (``TOKEN_OPTIONAL``: the readiness reasons) says the
    token is optional and documents the 401 of one that is not valid."""
    scheme = document["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")
    for route, operation in operations(document):
        method, path = route.split(" ", 1)
        access = access_of(method, path)
        needs_token = access is not Access.PUBLIC
        responses = operation["responses"]
        optional = (method, path) in TOKEN_OPTIONAL
        security = [{}, {"bearer": []}] if optional else [{"bearer": []}] if needs_token else None
        assert operation.get("security") == security, route
        assert ("401" in responses) == (needs_token or optional), f"{route}: {access}"
        assert "`unsupported_transfer_coding`" in responses["501"]["description"], route
        changes_state = method in {"POST", "PUT", "PATCH", "DELETE"}
        forbids = access is Access.OPERATOR or route == "POST /orders" or changes_state
        assert ("403" in responses) == forbids, f"{route}: {access}"
        if access is Access.OPERATOR:
            assert "`forbidden`" in responses["403"]["description"], route
        if changes_state:
            assert "`cross_origin_refused`" in responses["403"]["description"], route
            assert "`body_too_large`" in responses["413"]["description"], route
            assert "`unsupported_content_encoding`" in responses["415"]["description"], route
        else:
            assert not {"413", "415"} & set(responses), route
        for status in {"401", "403", "413", "415"} & set(responses):
            assert schema_name(responses[status]) == "Problem", f"{route} {status}"


def schema_name(answer: dict[str, Any]) -> str:
    ref: str = answer["content"]["application/json"]["schema"]["$ref"]
    return ref.rsplit("/", 1)[-1]


# -- the README's table ------------------------------------------------------------------

_ROW = re.compile(r"^\|([^|]*)\| `(GET|POST|PUT|PATCH|DELETE) (/[^`?]*)` \|", re.MULTILINE)


def readme_routes() -> dict[str, set[str]]:
    """Service name → the routes the README's HTTP API table lists for it."""
    section = README.read_text().split("\n## HTTP API\n", 1)[1].split("\n## ", 1)[0]
    routes: dict[str, set[str]] = {name: set() for name in SPECS}
    owner = ""
    for cell, method, path in _ROW.findall(section):
        owner = cell.split(" (")[0].strip() or owner
        for name in SPECS if owner == "every service" else [owner]:
            routes[name].add(f"{method} {path}")
    return routes


@pytest.mark.parametrize("name", list(SPECS))
async def test_the_readme_lists_every_route_and_only_real_ones(name: str) -> None:
    app = app_of(SPECS[name])
    documented = {route for route, _ in operations(app.openapi())}
    listed = readme_routes()[name]
    assert documented - listed == set(), f"routes of {name} missing from the README's HTTP API table"
    # what the table lists beyond the document are pages; each must be there
    pages = listed - documented
    async with client_of(SPECS[name]) as client:
        for page in sorted(pages):
            method, path = page.split(" ", 1)
            response = await client.request(method, path)
            assert response.status_code == 200, (
                f"{name}: the README lists {page}, which answers {response.status_code}"
            )
