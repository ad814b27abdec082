"""Who may call what, against the running services.

Every rule of ``saga_kit.auth.POLICY`` is called with no token, by a customer on its own
resource, by that customer on another customer's resource, and by the operator, and each
answer is the one its ``Access`` promises: 401 without a token (unless public), 403 for a
customer on an operator route (or placing an order for someone else), 404 for another
customer's order, saga, balance or payment (ids do not leak), and the route's normal
answer otherwise. The table covers exactly the routes the services serve. Every kind of
bad token is refused as ``invalid_token``, and a key published in the JWKS file is
trusted — and distrusted once removed — without a restart."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.routing import APIRoute

from events.commands import encode_command
from saga_kit import audit, consumer_api, deadletters
from saga_kit.auth import LEEWAY_SECONDS, POLICY, Access, DevIssuer, Role, write_dev_issuer
from sagastack.system import SERVICES, System
from tests.e2e.conftest import UniqueIds
from tests.e2e.test_commands import command, outcome, send
from tests.unit.test_openapi import SPECS

#: HTTP, a page or the CLI's layout, whatever the broker: make test runs it on Tansu only
pytestmark = [pytest.mark.e2e, pytest.mark.broker_independent]

#: Who calls: no token; customer ``ann`` on her own resources; ``ann`` on ``bob``'s; the
#: operator (on ann's).
CALLERS = ("nobody", "own", "other", "operator")
#: A dead letter that does not exist: the operator's normal answer is its 404.
NO_LETTER = 9_000_000_000


@dataclass
class World:
    """Real resources: a product, two customers with an account and an approved order each."""

    product: str
    ann: str
    bob: str
    orders: dict[str, str]
    #: ann's orders the cancel route may cancel, one for her and one for the operator
    cancellable: dict[str, str] = field(default_factory=dict)
    #: a PlaceOrder each customer sent on orders.commands with its own token (its id)
    commands: dict[str, str] = field(default_factory=dict)

    def customer(self, caller: str) -> str:
        """Whose resource ``caller`` is called on."""
        return self.bob if caller == "other" else self.ann


@dataclass(frozen=True)
class Call:
    path: str
    json: Any = None
    params: dict[str, str] | None = None


ALL = tuple(SERVICES)
ORDER, INVENTORY, PAYMENT = ("order_svc",), ("inventory_svc",), ("payment_svc",)

#: Every rule of the table: the services that serve it, and the call of it on the
#: resource of ``world.customer(caller)``.
REQUESTS: dict[tuple[str, str], tuple[tuple[str, ...], Callable[[World, str], Call]]] = {
    ("GET", "/health/live"): (ALL, lambda w, c: Call("/health/live")),
    ("GET", "/health/ready"): (ALL, lambda w, c: Call("/health/ready")),
    ("GET", "/metrics"): (ALL, lambda w, c: Call("/metrics")),
    ("GET", "/dead-letters"): (ALL, lambda w, c: Call("/dead-letters", params={"status": "ALL"})),
    ("GET", "/dead-letters/{letter_id}"): (ALL, lambda w, c: Call(f"/dead-letters/{NO_LETTER}")),
    ("GET", "/dead-letters/{letter_id}/value"): (ALL, lambda w, c: Call(f"/dead-letters/{NO_LETTER}/value")),
    ("POST", "/dead-letters/{letter_id}/replay"): (
        ALL,
        lambda w, c: Call(f"/dead-letters/{NO_LETTER}/replay"),
    ),
    ("POST", "/dead-letters/{letter_id}/discard"): (
        ALL,
        lambda w, c: Call(f"/dead-letters/{NO_LETTER}/discard"),
    ),
    ("GET", "/consumer"): (ALL, lambda w, c: Call("/consumer")),
    ("POST", "/consumer/resume"): (ALL, lambda w, c: Call("/consumer/resume")),
    ("GET", "/audit"): (ALL, lambda w, c: Call("/audit")),
    ("POST", "/orders"): (
        ORDER,
        lambda w, c: Call(
            "/orders",
            json={"customer_id": w.customer(c), "items": [{"product_id": w.product, "quantity": 1}]},
        ),
    ),
    ("GET", "/orders"): (ORDER, lambda w, c: Call("/orders", params={"customer_id": w.customer(c)})),
    ("GET", "/orders/{order_id}"): (ORDER, lambda w, c: Call(f"/orders/{w.orders[w.customer(c)]}")),
    ("GET", "/orders/{order_id}/saga"): (ORDER, lambda w, c: Call(f"/orders/{w.orders[w.customer(c)]}/saga")),
    ("POST", "/orders/{order_id}/cancel"): (
        ORDER,
        lambda w, c: Call(f"/orders/{w.cancellable.get(c, w.orders[w.customer(c)])}/cancel"),
    ),
    ("GET", "/commands/{command_id}"): (ORDER, lambda w, c: Call(f"/commands/{w.commands[w.customer(c)]}")),
    # a customer of no order: forgetting it destroys nothing of the matrix's world
    ("POST", "/customers/{customer_id}/forget"): (
        ORDER,
        lambda w, c: Call(f"/customers/matrix-{uuid.uuid4().hex[:8]}/forget"),
    ),
    ("GET", "/saga-events"): (ORDER, lambda w, c: Call("/saga-events")),
    ("GET", "/saga-events/stream"): (ORDER, lambda w, c: Call("/saga-events/stream")),
    ("GET", "/dashboard"): (ORDER, lambda w, c: Call("/dashboard")),
    ("GET", "/dashboard/static/{name}"): (ORDER, lambda w, c: Call("/dashboard/static/app.js")),
    ("GET", "/dashboard/api/summary"): (ORDER, lambda w, c: Call("/dashboard/api/summary")),
    ("GET", "/dashboard/api/stock"): (ORDER, lambda w, c: Call("/dashboard/api/stock")),
    ("GET", "/dashboard/api/balances"): (ORDER, lambda w, c: Call("/dashboard/api/balances")),
    ("GET", "/dashboard/api/health"): (ORDER, lambda w, c: Call("/dashboard/api/health")),
    ("GET", "/dashboard/api/throughput"): (ORDER, lambda w, c: Call("/dashboard/api/throughput")),
    ("GET", "/dashboard/api/dead-letters/{service}"): (
        ORDER,
        lambda w, c: Call("/dashboard/api/dead-letters/payment_svc"),
    ),
    ("GET", "/dashboard/api/dead-letters/{service}/{letter_id}"): (
        ORDER,
        lambda w, c: Call(f"/dashboard/api/dead-letters/payment_svc/{NO_LETTER}"),
    ),
    ("POST", "/dashboard/api/dead-letters/{service}/{letter_id}/replay"): (
        ORDER,
        lambda w, c: Call(f"/dashboard/api/dead-letters/payment_svc/{NO_LETTER}/replay"),
    ),
    ("POST", "/dashboard/api/dead-letters/{service}/{letter_id}/discard"): (
        ORDER,
        lambda w, c: Call(f"/dashboard/api/dead-letters/payment_svc/{NO_LETTER}/discard"),
    ),
    ("GET", "/products"): (INVENTORY, lambda w, c: Call("/products")),
    ("GET", "/products/{product_id}"): (INVENTORY, lambda w, c: Call(f"/products/{w.product}")),
    ("PUT", "/products/{product_id}"): (
        INVENTORY,
        lambda w, c: Call(f"/products/{w.product}", json={"name": "matrix", "price": "1.00", "stock": 50}),
    ),
    ("GET", "/accounts"): (PAYMENT, lambda w, c: Call("/accounts")),
    ("GET", "/accounts/{customer_id}"): (PAYMENT, lambda w, c: Call(f"/accounts/{w.customer(c)}")),
    ("PUT", "/accounts/{customer_id}"): (
        PAYMENT,
        lambda w, c: Call(f"/accounts/{w.customer(c)}", json={"balance": "100.00"}),
    ),
    ("GET", "/payments/{order_id}"): (PAYMENT, lambda w, c: Call(f"/payments/{w.orders[w.customer(c)]}")),
}

#: The route's normal answer to a caller it lets in: 200 unless said here.
NORMAL = {
    ("GET", "/dead-letters/{letter_id}"): 404,
    ("GET", "/dead-letters/{letter_id}/value"): 404,
    ("POST", "/dead-letters/{letter_id}/replay"): 404,
    ("POST", "/dead-letters/{letter_id}/discard"): 404,
    ("GET", "/dashboard/api/dead-letters/{service}/{letter_id}"): 404,
    ("POST", "/dashboard/api/dead-letters/{service}/{letter_id}/replay"): 404,
    ("POST", "/dashboard/api/dead-letters/{service}/{letter_id}/discard"): 404,
    ("POST", "/orders"): 202,
    ("POST", "/orders/{order_id}/cancel"): 202,
}


def expected(route: tuple[str, str], caller: str) -> tuple[int, str | None]:
    """The status (and ``reason``) ``caller`` gets from ``route`` by its ``Access``."""
    access = POLICY[route]
    normal = (NORMAL.get(route, 200), None)
    if access is Access.PUBLIC:
        return normal
    if caller == "nobody":
        return 401, "missing_token"
    if caller == "operator" or access is Access.ANY_ROLE:
        return normal
    if access is Access.OPERATOR:
        return 403, "forbidden"
    assert access is Access.OWN
    if caller == "own":
        return normal
    if route == ("POST", "/orders"):  # placing an order for someone else
        return 403, "forbidden"
    if route == ("GET", "/orders"):  # a list: another's orders are not in it
        return 200, None
    return 404, "not_found"


@pytest.fixture(scope="module")
def world(system: System) -> Iterator[World]:
    uid = UniqueIds()
    product, ann, bob = uid("authz-p"), uid("authz-ann"), uid("authz-bob")
    operator = system.client()
    operator.put_product(product, "matrix", Decimal("1.00"), 50)
    operator.put_account(ann, Decimal("100.00"))
    operator.put_account(bob, Decimal("100.00"))
    orders: dict[str, str] = {}
    cancellable: dict[str, str] = {}
    commands: dict[str, str] = {}
    for customer in (ann, bob):  # each places its own orders
        own = system.client(customer)
        orders[customer] = own.place_order(customer, {product: 1})
        if customer == ann:
            cancellable = {c: own.place_order(ann, {product: 1}) for c in ("own", "operator")}
        own.wait_for_events(orders[customer], {"PaymentCompleted", "InventoryCommitted"})
        sent = command(customer, {product: 1})  # and one on Kafka, with its own token
        send(system, encode_command(sent), token=system.token(customer, (Role.CUSTOMER,)))
        commands[customer] = str(sent.command_id)
        outcome(system, sent.command_id, {"placed"})
        own.close()
    yield World(product, ann, bob, orders, cancellable, commands)
    operator.close()


def headers_of(system: System, world: World, caller: str) -> dict[str, str]:
    if caller == "nobody":
        return {}
    if caller == "operator":
        return system.auth()
    return system.auth(world.ann, [Role.CUSTOMER])


def call(http: httpx.Client, method: str, url: str, request: Call) -> httpx.Response:
    """The answer's status and body; an endless stream is closed after its status."""
    with http.stream(method, url, json=request.json, params=request.params) as response:
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return httpx.Response(response.status_code, headers=response.headers)
        response.read()
        return response


def reason_of(answer: httpx.Response) -> object:
    """The ``reason`` of an error body; None for any other answer."""
    try:
        body = answer.json()
    except ValueError:
        return None
    return body.get("reason") if isinstance(body, dict) else None


def test_every_rule_of_the_table_for_every_caller(system: System, world: World) -> None:
    wrong: list[str] = []
    calls = 0
    for caller in CALLERS:
        with httpx.Client(headers=headers_of(system, world, caller), timeout=15) as http:
            for route, (services, build) in REQUESTS.items():
                status, reason = expected(route, caller)
                request = build(world, caller)
                for service in services:
                    answer = call(http, route[0], f"{system.url(service)}{request.path}", request)
                    calls += 1
                    got = reason_of(answer) if reason else None
                    if answer.status_code != status or got != reason:
                        wrong.append(
                            f"{caller:>8} {service:<13} {route[0]} {route[1]}:"
                            f" expected {status} {reason or ''}, got {answer.status_code} {answer.text[:150]}"
                        )
                    elif route == ("GET", "/orders") and status == 200:
                        owners = {order["customer_id"] for order in answer.json()}
                        if owners != (set() if caller == "other" else {world.ann}):
                            wrong.append(f"{caller} GET /orders?customer_id= lists orders of {owners}")
                    elif status == 401:
                        challenge = answer.headers.get("www-authenticate", "")
                        if not challenge.startswith("Bearer"):
                            wrong.append(f"{caller} {service} {route}: 401 without a Bearer challenge")
    assert not wrong, f"{len(wrong)} of {calls} calls answered otherwise:\n" + "\n".join(wrong)
    # another customer's 404 on cancel changed nothing; her own cancel did
    operator = system.client()
    assert operator.order(world.orders[world.bob])["status"] == "APPROVED"
    assert operator.order(world.cancellable["own"])["status"] == "CANCELLED"
    operator.close()


def test_a_customer_lists_only_its_own_orders(system: System, world: World) -> None:
    """``GET /orders`` without a filter, or filtered by another's id or id prefix, holds
    none of another customer's orders; the operator's holds both customers'."""
    ann = system.client(world.ann)
    try:
        mine = ann.http.get(f"{system.url('order_svc')}/orders", params={"limit": 1000}).json()
        assert mine and {o["customer_id"] for o in mine} == {world.ann}
        assert world.orders[world.ann] in {o["order_id"] for o in mine}
        prefix = world.orders[world.bob][:13]
        by_prefix = ann.http.get(f"{system.url('order_svc')}/orders", params={"order_id_prefix": prefix})
        assert by_prefix.status_code == 200 and by_prefix.json() == []
    finally:
        ann.close()
    everyone = system.http.get(f"{system.url('order_svc')}/orders", params={"limit": 1000}).json()
    assert {world.orders[world.ann], world.orders[world.bob]} <= {o["order_id"] for o in everyone}


def test_the_table_lists_exactly_the_routes_the_services_serve(system: System) -> None:
    """Each service's documented routes (its running ``/openapi.json``) and those it keeps
    out of its document (the dashboard's page and assets), against ``POLICY``: a route
    without a rule, or a rule without a route, fails here — and the matrix above calls
    every rule."""
    served: set[tuple[str, str]] = set()
    for service in SERVICES:
        document = httpx.get(f"{system.url(service)}/openapi.json", timeout=15).json()
        served |= {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    # what each service serves besides its own routers' (health, metrics) is all documented
    hidden = {
        (method, route.path)
        for spec in SPECS.values()
        for router in (*spec.routers(), deadletters.router, consumer_api.router, audit.router)
        for route in router.routes
        if isinstance(route, APIRoute) and not route.include_in_schema
        for method in route.methods
    }
    assert hidden, "the services keep some routes out of their documents (the dashboard)"
    assert served | hidden == set(POLICY)
    assert set(REQUESTS) == set(POLICY)


# -- tokens that are not good enough -----------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"


@dataclass(frozen=True)
class Forger:
    """Makes tokens from the development issuer's own key, with whatever is wrong."""

    issuer: DevIssuer

    @property
    def kid(self) -> str:
        return (self.issuer.directory / "issuer.kid").read_text().strip()

    def key(self) -> Any:
        return serialization.load_pem_private_key(
            (self.issuer.directory / "issuer.pem").read_bytes(), password=None
        )

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": "saga-dev-issuer",
            "aud": "saga-shop",
            "sub": "operator",
            "roles": ["operator"],
            "iat": now,
            "exp": now + 600,
        }
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def sign(self, claims: dict[str, Any], *, key: Any = None, kid: str | None = "") -> str:
        headers = {"kid": self.kid if kid == "" else kid} if kid is not None else {}
        token: str = jwt.encode(claims, key or self.key(), algorithm="EdDSA", headers=headers)
        if kid is None:  # PyJWT adds no kid unless asked
            assert "kid" not in jwt.get_unverified_header(token)
        return token


def _tampered_signature(token: str) -> str:
    head, payload, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[0] ^= 0x01
    return f"{head}.{payload}.{_b64(bytes(raw))}"


def _escalated(system: System) -> str:
    """A customer's genuine token, its payload rewritten to the operator role."""
    head, payload, signature = system.token("mallory", [Role.CUSTOMER]).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["roles"] = ["operator"]
    return f"{head}.{_b64(json.dumps(claims).encode())}.{signature}"


def _hs256_with_public_key(forger: Forger, secret: bytes) -> str:
    """The classic algorithm confusion: HMAC keyed with the (public) verification key."""
    signing_input = _unsigned({"alg": "HS256", "typ": "JWT", "kid": forger.kid}, forger.claims())
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def _public_key_forms(forger: Forger) -> list[bytes]:
    jwks = json.loads(forger.issuer.jwks_file.read_text())
    (jwk,) = [k for k in jwks["keys"] if k["kid"] == forger.kid]
    pem = (
        forger.key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return [pem, jwk["x"].encode(), json.dumps(jwk).encode()]


#: What is wrong with the token → a piece of the ``detail`` the service names it with.
BAD_TOKENS: dict[str, tuple[Callable[[System, Forger], list[str]], str]] = {
    "expired": (lambda s, f: [s.token(ttl_seconds=-(LEEWAY_SECONDS + 60))], "expired"),
    "not yet valid (nbf)": (lambda s, f: [s.token(not_before=time.time() + 3600)], "not valid yet"),
    "issued in the future (iat)": (
        lambda s, f: [f.sign(f.claims(iat=int(time.time()) + 3600, exp=int(time.time()) + 7200))],
        "not valid yet",
    ),
    "wrong issuer": (lambda s, f: [s.token(issuer="someone-else")], "issuer"),
    "wrong audience": (lambda s, f: [s.token(audience="another-shop")], "audience"),
    "unknown kid": (
        lambda s, f: [f.sign(f.claims(), key=Ed25519PrivateKey.generate(), kid="stranger")],
        "trust",
    ),
    "known kid, another key": (
        lambda s, f: [f.sign(f.claims(), key=Ed25519PrivateKey.generate())],
        "signature does not match",
    ),
    "tampered signature": (lambda s, f: [_tampered_signature(s.token())], "signature does not match"),
    "tampered payload": (lambda s, f: [_escalated(s)], "signature does not match"),
    "alg none": (
        lambda s, f: [
            _unsigned({"alg": "none", "typ": "JWT", "kid": f.kid}, f.claims()) + ".",
            _unsigned({"alg": "none", "typ": "JWT", "kid": f.kid}, f.claims()),
        ],
        "",
    ),
    "HS256 keyed with the public key": (
        lambda s, f: [_hs256_with_public_key(f, secret) for secret in _public_key_forms(f)],
        "",
    ),
    "no roles claim": (lambda s, f: [f.sign(f.claims(roles=None))], "roles"),
    "roles not a list": (lambda s, f: [f.sign(f.claims(roles="operator"))], "roles"),
    "no known role": (lambda s, f: [f.sign(f.claims(roles=["admin", "root"]))], "no known role"),
    "no sub": (lambda s, f: [f.sign(f.claims(sub=None))], "no sub claim"),
    "no exp": (lambda s, f: [f.sign(f.claims(exp=None))], "no exp claim"),
    "no kid": (lambda s, f: [f.sign(f.claims(), kid=None)], "names no key"),
    "not a JWT": (lambda s, f: ["not-a-jwt", "a.b.c"], "not a JWT"),
    # PyJWT names the extension in its words, which went into WWW-Authenticate unfiltered:
    # a character outside Latin-1 made the 401 a 500, a quote added a parameter to it
    "an unknown critical extension": (
        lambda s, f: [
            _unsigned({"alg": "EdDSA", "kid": f.kid, "crit": [name]}, f.claims()) + ".AAAA"
            for name in ("\u20ac", 'x", error="insufficient_scope', "\\", "x" * 300)
        ],
        "critical extension",
    ),
}

#: A 401's challenge for a token not valid: its description in the characters RFC 6750 §3
#: allows, so one quoted string (a token's words in it added a parameter, or made it a 500)
CHALLENGE = re.compile(
    r'Bearer realm="saga", error="invalid_token", error_description="[\x20\x21\x23-\x5b\x5d-\x7e]*"'
)

#: A route per service that any valid token may call (the operator: all of them).
PROBES = {"order_svc": "/orders", "inventory_svc": "/products", "payment_svc": "/accounts"}


@pytest.mark.parametrize("what", list(BAD_TOKENS))
def test_a_bad_token_is_refused_as_invalid_token(system: System, what: str) -> None:
    assert system.issuer is not None
    make, why = BAD_TOKENS[what]
    tokens = make(system, Forger(system.issuer))
    for service, path in PROBES.items():
        url = f"{system.url(service)}{path}"
        assert httpx.get(url, headers=system.auth(), timeout=15).status_code == 200, "a good token is let in"
        for token in tokens:
            answer = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=15)
            assert answer.status_code == 401, f"{service}: {what} → {answer.status_code} {answer.text}"
            assert answer.json()["reason"] == "invalid_token", answer.text
            assert why in answer.json()["detail"], answer.text
            assert CHALLENGE.fullmatch(answer.headers["www-authenticate"]), answer.headers["www-authenticate"]


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        (None, "missing_token"),
        ("", "missing_token"),
        ("Basic b3BlcmF0b3I6eA==", "invalid_token"),
        ("Bearer", "invalid_token"),
    ],
)
def test_a_request_without_a_bearer_token_is_refused(
    system: System, authorization: str | None, reason: str
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for service, path in PROBES.items():
        answer = httpx.get(f"{system.url(service)}{path}", headers=headers, timeout=15)
        assert answer.status_code == 401 and answer.json()["reason"] == reason, answer.text
        assert answer.headers["www-authenticate"].startswith('Bearer realm="saga"')


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/orders", b"{not json"),
        ("POST", "/orders", b"\xff\xfe not UTF-8"),
        ("PUT", "/accounts/ann", b"{not json"),
    ],
)
def test_an_unreadable_body_tells_an_unauthenticated_caller_nothing_but_401(
    system: System, method: str, path: str, body: bytes
) -> None:
    """The framework reads a body before the routes' dependencies run; a caller without a
    token still gets the 401, not the 422 (or the 415 of bytes that are not UTF-8) that
    would describe the route's input."""
    service = "payment_svc" if path.startswith("/accounts") else "order_svc"
    url = f"{system.url(service)}{path}"
    headers = {"Content-Type": "application/json"}
    anonymous = httpx.request(method, url, content=body, headers=headers, timeout=15)
    assert anonymous.status_code == 401 and anonymous.json()["reason"] == "missing_token", anonymous.text
    customer = httpx.request(
        method, url, content=body, headers={**headers, **system.auth("ann", [Role.CUSTOMER])}, timeout=15
    )
    invalid = (415, "unsupported_media_type") if b"UTF-8" in body else (422, "invalid_request")
    expected = invalid if service == "order_svc" else (403, "forbidden")
    assert (customer.status_code, customer.json()["reason"]) == expected, customer.text
    operator = system.http.request(method, url, content=body, headers=headers, timeout=15)
    assert (operator.status_code, operator.json()["reason"]) == invalid, operator.text


# -- key rotation ---------------------------------------------------------------------------


def processes(system: System) -> dict[str, int]:
    pids = {name: system.services[name].proc for name in SERVICES}
    return {name: proc.pid for name, proc in pids.items() if proc is not None}


def test_a_key_is_trusted_once_published_and_refused_once_removed_without_a_restart(
    system: System, tmp_path: Path
) -> None:
    """The rotation the module doc of saga_kit.auth describes: publish the new key next to
    the old one (``extra.jwks.json``), sign with it, then remove it; the services re-read
    their JWKS file and are never restarted."""
    assert system.issuer is not None
    directory = system.issuer.directory
    pids = processes(system)
    rotated = write_dev_issuer(tmp_path / "next")  # a second key, its own kid
    new, old = rotated.mint("operator", [Role.OPERATOR]), system.token()

    def answers(token: str) -> dict[str, int]:
        return {
            s: httpx.get(
                f"{system.url(s)}{p}", headers={"Authorization": f"Bearer {token}"}, timeout=15
            ).status_code
            for s, p in PROBES.items()
        }

    everywhere = dict.fromkeys(SERVICES, 200)
    nowhere = dict.fromkeys(SERVICES, 401)
    assert answers(new) == nowhere, "a key not yet published is not trusted"
    extra = directory / "extra.jwks.json"
    try:
        extra.write_text(json.dumps({"keys": json.loads(rotated.jwks_file.read_text())["keys"]}))
        write_dev_issuer(directory)
        assert answers(new) == everywhere, "the published key is trusted at once"
        assert answers(old) == everywhere, "the old key still is while both are published"
    finally:
        extra.unlink(missing_ok=True)
        write_dev_issuer(directory)
    assert answers(new) == nowhere, "a removed key is refused at once"
    assert answers(old) == everywhere
    assert processes(system) == pids, "no service was restarted"


def test_two_authorization_headers_are_refused_whichever_comes_first(system: System) -> None:
    """Once, a good token then junk was let in and junk then a good token was not. Empty
    headers are no token, not two (an attack trial: "2 Authorization headers" on a
    protected route, the public view on the readiness probe)."""
    good = f"Bearer {system.token()}"
    for service, path in PROBES.items():
        for pair in ((good, "Bearer junk"), ("Bearer junk", good), (good, good)):
            headers = httpx.Headers([("Authorization", pair[0]), ("Authorization", pair[1])])
            answer = httpx.get(f"{system.url(service)}{path}", headers=headers, timeout=15)
            assert answer.status_code == 401 and answer.json()["reason"] == "invalid_token", answer.text
            assert "2 Authorization headers" in answer.json()["detail"]
        # empty headers carry no credentials: no token here, as on the readiness probe
        empty = httpx.Headers([("Authorization", ""), ("Authorization", "")])
        answer = httpx.get(f"{system.url(service)}{path}", headers=empty, timeout=15)
        assert answer.status_code == 401 and answer.json()["reason"] == "missing_token", answer.text
        probe = httpx.get(f"{system.url(service)}/health/ready", headers=empty, timeout=15)
        assert probe.status_code == 200 and "checks" in probe.json(), probe.text
