"""The API docs of the running services: ``/docs`` and ``/redoc`` work with nothing but
the service (no CDN), every error the services answer is documented for its route with
the body it has, and a 202 names its resource in ``Location``."""

from __future__ import annotations

import re
import uuid
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import jsonschema
import pytest

from sagastack.browser import wait
from sagastack.client import SagaClient
from sagastack.system import SERVICES, System
from tests.e2e.conftest import UniqueIds, seed

#: HTTP, a page or the CLI's layout, whatever the broker: make test runs it on Tansu only
pytestmark = pytest.mark.broker_independent

PAGES = ("/docs", "/redoc", "/docs/oauth2-redirect")
_URL = re.compile(r"""(?:https?:)?//[^\s"'<>)]+""")


class _Links(HTMLParser):
    """Every ``src`` and ``href`` of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


@pytest.mark.parametrize("service", list(SERVICES))
def test_docs_pages_and_every_asset_they_load_come_from_the_service(system: System, service: str) -> None:
    base = system.url(service)
    assets: set[str] = set()
    with httpx.Client(timeout=15) as http:
        for page in PAGES:
            r = http.get(f"{base}{page}")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), page
            policy = r.headers.get("content-security-policy", "")
            assert "default-src 'self'" in policy and not _URL.search(policy), f"{page}: {policy!r}"
            assert "frame-ancestors 'none'" in policy, page  # framed by no page (an attack trial)
            elsewhere = [u for u in _URL.findall(r.text) if origin(urljoin(base, u)) != origin(base)]
            assert not elsewhere, f"{service}{page} names other hosts: {elsewhere}"
            links = _Links()
            links.feed(r.text)
            assets |= {urljoin(f"{base}{page}", u) for u in links.urls}
        assert {urlsplit(a).path.rsplit("/", 1)[-1] for a in assets} >= {
            "swagger-ui-bundle.js",
            "swagger-ui.css",
            "redoc.standalone.js",
        }
        for asset in sorted(assets):
            assert origin(asset) == origin(base), asset
            r = http.get(asset)
            assert r.status_code == 200 and r.content, f"{asset} → {r.status_code}"
        assert http.get(f"{base}/openapi.json").json()["paths"]


def test_the_docs_render_in_a_browser_from_the_service_alone(browser: Any, system: System) -> None:
    """Swagger UI and ReDoc draw the order service's routes from what the service serves,
    and whatever their bundles try to load from another host (ReDoc: its maker's logo) the
    pages' policy blocks before a request leaves the browser."""
    from selenium.webdriver.common.by import By

    browser.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument",
        {
            "source": "window.blocked = [];"
            " document.addEventListener('securitypolicyviolation', e => window.blocked.push(e.blockedURI));"
        },
    )
    base = system.url("order_svc")
    for page in ("/docs", "/redoc"):
        browser.get(f"{base}{page}")
        wait(
            browser,
            lambda d: "Place an order" in d.find_element(By.TAG_NAME, "body").text,
            what=f"{page} shows the routes",
        )
        loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert any(u.endswith(".js") for u in loaded), loaded
        elsewhere = {u for u in loaded if origin(u) != origin(base)}
        assert elsewhere <= set(browser.execute_script("return window.blocked")), (
            f"{page} fetched {elsewhere}"
        )


def test_a_202_names_the_order_in_location(system: System, client: SagaClient, uid: UniqueIds) -> None:
    products, customers = seed(client, uid, {"pen": ("2.00", 5)}, {"ann": "50.00"})
    base = system.url("order_svc")
    with httpx.Client(base_url=base, headers=system.auth(), timeout=15) as http:
        placed = http.post(
            "/orders",
            json={"customer_id": customers["ann"], "items": [{"product_id": products["pen"], "quantity": 1}]},
        )
        assert placed.status_code == 202, placed.text
        order_id = placed.json()["order_id"]
        assert placed.headers["Location"] == f"/orders/{order_id}"
        assert http.get(placed.headers["Location"]).json()["order_id"] == order_id

        cancelled = http.post(f"/orders/{order_id}/cancel")
        assert cancelled.status_code == 202, cancelled.text
        assert cancelled.headers["Location"] == f"/orders/{order_id}"
        assert http.get(cancelled.headers["Location"]).json()["status"] == "CANCELLED"


def test_every_error_answered_is_documented_for_its_route_with_its_body(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    """Each error the services answer, provoked for real, is in the route's document with a
    schema its body satisfies. (The fuzzer checks the same for whatever it provokes.)"""
    products, customers = seed(client, uid, {"cup": ("1.00", 5)}, {"bo": "10.00"})
    rejected = client.place_order(customers["bo"], {uid("unknown"): 1})
    client.wait_for_events(rejected, {"OrderRejected"})
    key = uuid.uuid4().hex
    line = {"product_id": products["cup"], "quantity": 1}
    client.place_order(customers["bo"], {products["cup"]: 1}, idempotency_key=key)
    nobody = uuid.uuid4()
    # (service, method, route in the document, path, request options, status expected)
    cases: list[tuple[str, str, str, str, dict[str, Any], int]] = [
        ("order_svc", "GET", "/orders/{order_id}", f"/orders/{nobody}", {}, 404),
        ("order_svc", "GET", "/orders/{order_id}", "/orders/not-a-uuid", {}, 422),
        ("order_svc", "GET", "/orders/{order_id}/saga", f"/orders/{nobody}/saga", {}, 404),
        ("order_svc", "POST", "/orders/{order_id}/cancel", f"/orders/{nobody}/cancel", {}, 404),
        ("order_svc", "POST", "/orders/{order_id}/cancel", f"/orders/{rejected}/cancel", {}, 409),
        ("order_svc", "POST", "/orders", "/orders", {"json": {"items": []}}, 422),
        (
            "order_svc",
            "POST",
            "/orders",
            "/orders",
            {"json": {"customer_id": customers["bo"], "items": [line, line]}},
            422,
        ),
        (
            "order_svc",
            "POST",
            "/orders",
            "/orders",
            {
                "json": {"customer_id": customers["bo"], "items": [{**line, "quantity": 2}]},
                "headers": {"Idempotency-Key": key},
            },
            409,
        ),
        ("order_svc", "GET", "/orders", "/orders", {"params": {"limit": 0}}, 422),
        (
            "order_svc",
            "GET",
            "/saga-events/stream",
            "/saga-events/stream",
            {"headers": {"Last-Event-ID": "x"}},
            422,
        ),
        (
            "order_svc",
            "GET",
            "/dashboard/api/dead-letters/{service}/{letter_id}",
            "/dashboard/api/dead-letters/payment_svc/9000000000",
            {},
            404,
        ),
        (
            "order_svc",
            "POST",
            "/dashboard/api/dead-letters/{service}/{letter_id}/replay",
            "/dashboard/api/dead-letters/inventory_svc/9000000000/replay",
            {},
            404,
        ),
        (
            "order_svc",
            "GET",
            "/dashboard/api/dead-letters/{service}",
            "/dashboard/api/dead-letters/shipping_svc",
            {},
            422,
        ),
        (
            "order_svc",
            "GET",
            "/dashboard/api/throughput",
            "/dashboard/api/throughput",
            {"params": {"minutes": 0}},
            422,
        ),
        # numbers in a query, as a dead letter's id in a path: "1_0" was read as 10, "+10",
        # " 10" as 10 (an attack trial's letter ids; the same rule everywhere)
        ("order_svc", "GET", "/saga-events", "/saga-events", {"params": {"after": "1_0"}}, 422),
        ("order_svc", "GET", "/saga-events/stream", "/saga-events/stream", {"params": {"after": "+10"}}, 422),
        ("order_svc", "GET", "/orders", "/orders", {"params": {"offset": " 10"}}, 422),
        ("order_svc", "GET", "/audit", "/audit", {"params": {"limit": "1e1"}}, 422),
        (
            "order_svc",
            "GET",
            "/dashboard/api/throughput",
            "/dashboard/api/throughput",
            {"params": {"minutes": "6_0"}},
            422,
        ),
        ("inventory_svc", "GET", "/products/{product_id}", f"/products/{uid('none')}", {}, 404),
        ("inventory_svc", "PUT", "/products/{product_id}", "/products/p", {"json": {"name": "P"}}, 422),
        ("payment_svc", "GET", "/accounts/{customer_id}", f"/accounts/{uid('none')}", {}, 404),
        ("payment_svc", "PUT", "/accounts/{customer_id}", "/accounts/c", {"json": {"balance": "-1"}}, 422),
    ]
    for service in SERVICES:
        cases += [
            (service, "GET", "/dead-letters/{letter_id}", "/dead-letters/9000000000", {}, 404),
            (service, "GET", "/dead-letters/{letter_id}/value", "/dead-letters/9000000000/value", {}, 404),
            (service, "POST", "/dead-letters/{letter_id}/replay", "/dead-letters/9000000000/replay", {}, 404),
            (service, "POST", "/dead-letters/{letter_id}/discard", "/dead-letters/0/discard", {}, 422),
            # an attack trial: "1_0" was letter 10, "+1" and "1.0" letter 1
            (service, "GET", "/dead-letters/{letter_id}", "/dead-letters/1_0", {}, 422),
            (service, "POST", "/dead-letters/{letter_id}/replay", "/dead-letters/+1/replay", {}, 422),
            (service, "GET", "/dead-letters/{letter_id}/value", "/dead-letters/1.0/value", {}, 422),
            (service, "GET", "/dead-letters", "/dead-letters", {"params": {"status": "LOST"}}, 422),
            (service, "GET", "/dead-letters", "/dead-letters", {"params": {"limit": "1_0"}}, 422),
            (service, "GET", "/dead-letters", "/dead-letters", {"params": {"before": " 12"}}, 422),
        ]
    documents = {name: httpx.get(f"{system.url(name)}/openapi.json").json() for name in SERVICES}
    wrong: list[str] = []
    with httpx.Client(headers=system.auth(), timeout=15) as http:
        for service, method, route, path, options, status in cases:
            r = http.request(method, f"{system.url(service)}{path}", **options)
            assert r.status_code == status, f"{method} {path}: {r.status_code} {r.text}"
            answer = documents[service]["paths"][route][method.lower()]["responses"].get(str(status))
            if answer is None:
                wrong.append(f"{service} {method} {route}: {status} is not documented")
                continue
            schema = {**answer["content"]["application/json"]["schema"], **documents[service]}
            try:
                jsonschema.Draft202012Validator(schema).validate(r.json())
            except jsonschema.ValidationError as exc:
                wrong.append(f"{service} {method} {route} {status}: {exc.message}")
    assert not wrong, "\n".join(wrong)
