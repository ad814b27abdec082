"""The dashboard's proxy to the other services, without them: a service that does not
answer is a 502 naming it, in the body every error has; readiness says ``unreachable``,
``not_answering`` or ``error``, as sagactl does."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

import order_svc
from order_svc.app import SPEC
from order_svc.settings import Settings
from saga_kit.service import http_app
from tests.jsonserver import JsonServer

#: Nothing listens there (the discard port): every connection is refused at once.
NOWHERE = "http://127.0.0.1:9"


async def _no_metrics() -> bytes:
    return b""


def client(behind: str = NOWHERE) -> httpx.AsyncClient:
    settings = Settings.model_construct(
        database_url="postgresql+psycopg://nowhere/db",
        http_port=0,
        inventory_url=behind,
        payment_url=behind,
    )
    app = http_app(SPEC, cast(Any, None), settings, {}, _no_metrics)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")


async def test_a_service_that_cannot_be_reached_is_a_502_that_names_it() -> None:
    """Nothing was sent: "could not be reached", not the 504's "did not answer"."""
    async with client() as http:
        answers = {
            "inventory_svc": await http.get("/dashboard/api/dead-letters/inventory_svc"),
            "payment_svc": await http.post("/dashboard/api/dead-letters/payment_svc/7/replay"),
        }
        stock = await http.get("/dashboard/api/stock")
        unknown = await http.get("/dashboard/api/dead-letters/shipping_svc")
    for service, answer in answers.items():
        assert answer.status_code == 502, answer.text
        body = answer.json()
        assert body["reason"] == "bad_gateway"
        assert body["detail"].startswith(f"{service} could not be reached: ConnectError"), body
    assert stock.status_code == 502
    assert stock.json()["detail"].startswith("inventory_svc could not be reached"), stock.text
    assert unknown.status_code == 422  # only the three services are proxied


async def test_a_dead_letter_route_takes_a_service_by_its_short_name_too() -> None:
    """sagactl takes ``payment`` and ``payment_svc`` and lists ``"service": "payment"``;
    the dashboard's routes answered ``payment`` with a 422 that knew only ``payment_svc``."""
    async with client() as http:
        answers = {
            "inventory_svc": await http.get("/dashboard/api/dead-letters/inventory"),
            "payment_svc": await http.post("/dashboard/api/dead-letters/payment/7/discard"),
        }
        unknown = await http.get("/dashboard/api/dead-letters/shipping")
    for service, answer in answers.items():  # asked of the service named, which is away here
        assert answer.status_code == 502, answer.text
        assert answer.json()["detail"].startswith(f"{service} could not be reached"), answer.text
    assert unknown.status_code == 422
    (problem,) = unknown.json()["detail"]
    assert problem["loc"] == ["path", "service"]
    assert problem["msg"] == (
        "Input should be 'order', 'inventory', 'payment', 'order_svc', 'inventory_svc' or 'payment_svc'"
    )


def test_a_service_name_is_its_own_or_its_short_one() -> None:
    from typing import get_args

    from saga_kit.service_names import SERVICES, SHORT_NAMES, ServiceName, service_named

    assert get_args(ServiceName) == (*SHORT_NAMES, *SERVICES)
    assert [service_named(name) for name in ("order", "inventory_svc", "payment")] == [
        "order_svc",
        "inventory_svc",
        "payment_svc",
    ]
    with pytest.raises(ValueError, match="one of order, inventory, payment"):
        service_named("shipping")


async def test_a_bad_dead_letter_status_is_one_problem_listing_the_four_there_are() -> None:
    """It was two entries whose ``loc`` held pydantic's names for the types
    (``literal['PENDING','REPLAYED','DISCARDED']``, ``literal['ALL']``); now it is one, at
    ``status``, like ``/orders?status=``'s. Any case is still taken."""
    async with client() as http:
        bad = {
            "dashboard": await http.get("/dashboard/api/dead-letters/payment_svc?status=bogus"),
            "service": await http.get("/dead-letters?status=bogus"),  # the order service's own
        }
        lower_case = await http.get("/dashboard/api/dead-letters/payment_svc?status=replayed")
    for answer in bad.values():
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"] == [
            {
                "loc": ["query", "status"],
                "msg": "Input should be 'PENDING', 'REPLAYED', 'DISCARDED' or 'ALL'",
                "type": "literal_error",
            }
        ]
    assert lower_case.status_code == 502  # taken, and asked of payment, which is away here


async def test_the_health_panel_says_which_service_is_unreachable() -> None:
    async with client() as http:
        health = await http.get("/dashboard/api/health")
    assert health.status_code == 200
    body = health.json()
    assert list(body) == ["order_svc", "inventory_svc", "payment_svc"]
    for service in ("inventory_svc", "payment_svc"):
        assert body[service]["status"] == "unreachable"
        assert body[service]["error"].startswith(f"{service} could not be reached: ConnectError"), body[
            service
        ]


@pytest.mark.parametrize(
    ("server", "status", "error"),
    [
        (JsonServer(b"{}", hangup=True), "not_answering", "{service} took the request and did not answer: "),
        (JsonServer(b"[1, 2]"), "error", "answered 200, not a readiness: ValidationError"),
        (JsonServer(b"<html>", status=503), "error", "answered 503, not a readiness: JSONDecodeError"),
    ],
    ids=["hung-up", "another-shape", "not-json"],
)
async def test_the_health_panel_tells_a_service_that_did_not_answer_from_one_away(
    server: JsonServer, status: str, error: str
) -> None:
    """The panel said ``unreachable`` of a service that took the request and closed it
    unanswered, and of one that answered something else; ``sagactl health -o json`` says
    ``not_answering`` of the first. Now the dashboard's words are sagactl's."""
    with server:
        async with client(server.base) as http:
            health = (await http.get("/dashboard/api/health")).json()
    for service in ("inventory_svc", "payment_svc"):
        assert health[service]["status"] == status, health[service]
        assert health[service]["error"].startswith(error.format(service=service)), health[service]
        assert health[service]["checks"] == {}


async def test_a_service_that_took_the_request_and_did_not_answer_is_a_504() -> None:
    """An attack trial: a replay through the dashboard was a 502 "did not answer" while
    inventory was frozen, and the replay ran when it woke. A request taken and not
    answered is a 504 (RFC 9110 §15.6.5), and one that changes something says it may have
    been carried out; a read says no more than that."""
    with JsonServer(b"[]", hangup=True) as frozen:
        async with client(frozen.base) as http:
            replay = await http.post("/dashboard/api/dead-letters/inventory/7/replay")
            listing = await http.get("/dashboard/api/dead-letters/inventory")
    assert replay.status_code == 504, replay.text
    assert replay.json()["reason"] == "gateway_timeout"
    assert replay.json()["detail"].startswith("inventory_svc took the request and did not answer")
    assert "it may have been carried out" in replay.json()["detail"]
    assert listing.status_code == 504 and "carried out" not in listing.json()["detail"]


async def test_a_service_that_took_the_request_and_timed_out_is_a_504_saying_how_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A frozen service (an attack trial: SIGSTOP) takes the connection and answers
    nothing: a 504 that says how long the dashboard waited and that a discard may have
    been carried out, not "ReadTimeout" alone."""
    import order_svc.dashboard_api

    monkeypatch.setattr(order_svc.dashboard_api, "PROXY_TIMEOUT", 0.3)
    with JsonServer(b"{}", delay=1.0) as frozen:
        async with client(frozen.base) as http:
            discard = await http.post("/dashboard/api/dead-letters/payment/2/discard")
    assert discard.status_code == 504, discard.text
    assert discard.json()["detail"] == (
        "payment_svc took the request and did not answer within 0.3 s"
        " (it may have been carried out: look before trying again)"
    )


@pytest.mark.skipif(shutil.which("node") is None, reason="node runs the dashboard's script")
@pytest.mark.parametrize(
    ("status", "shown"), [(504, "replay not answered: it may have"), (409, "replay refused: it may have")]
)
def test_the_page_does_not_call_an_unanswered_replay_refused(status: int, shown: str) -> None:
    """The dashboard showed a 504's detail ("… may have been carried out") after "replay
    refused:", which said it was not. Its letterAction, run by node with what it calls
    stubbed, shows a 504 as not answered and any other error as refused."""
    script = (Path(order_svc.__file__).parent / "dashboard" / "app.js").read_text()
    start = script.index("async function letterAction(")
    action = script[start : script.index("\n}\n", start) + 2]
    harness = f"""
const state = {{}};
const letterUrl = () => "/x";
const showLetter = async () => {{}}, loadDeadLetters = async () => {{}};
async function getJSON() {{ const e = new Error("it may have"); e.status = {status}; throw e; }}
{action}
letterAction("inventory", 2, "replay").then(() => console.log(state.letterResult.text));
"""
    ran = subprocess.run(["node", "-e", harness], capture_output=True, text=True, timeout=30, check=True)
    assert ran.stdout.strip() == shown, ran
