"""No request makes a service answer 500, and every answer is one its OpenAPI document
describes: every operation of every service's document, fuzzed by schemathesis with valid
and invalid inputs, answers below 500 with a status the operation documents, and the
media type, headers and body documented for that status — called by the operator and by a
customer (whose 403s and 404s of other customers' resources must be documented too).

Runs its own system: the fuzzer sets stock and balances, places orders, and replays and
discards dead letters by whatever ids it invents."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from saga_kit.auth import Role
from sagastack.system import SERVICES, BrokerKind, System

#: HTTP, a page or the CLI's layout, whatever the broker: make test runs it on Tansu only
pytestmark = [pytest.mark.e2e, pytest.mark.broker_independent]

#: Examples per operation and generation mode; the suite stays bounded (about a minute).
EXAMPLES = 25
#: Never ends by design (server-sent events); its parameters are fuzzed through the
#: non-streaming /saga-events, and a bad Last-Event-ID has its own test.
_ENDLESS = "/saga-events/stream"
#: uvicorn's answer to bytes that are not an HTTP request, e.g. a field value with a control
#: character (RFC 9110 §5.5 allows none), which the fuzzer's garbled ``Authorization`` can
#: hold and ``requests`` sends as given: the server's parser refuses it before any route
#: or middleware of the service runs, so no operation's document can describe it.
_NOT_HTTP = b"Invalid HTTP request received."
#: An answer conforms to the operation's document: a documented status (errors included),
#: and that status's media type, headers (``Location`` of a 202) and body schema.
CONFORMS = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def system(run_root: Path, broker_kind: BrokerKind) -> Iterator[System]:
    with System(run_root / "fuzz", free_ports=True, fresh=True, broker_kind=broker_kind) as running:
        yield running


#: Who calls: the operator, and a customer (the fuzzer's ids are never its own).
CALLERS = {"operator": ("operator", (Role.OPERATOR,)), "customer": ("fuzz-customer", (Role.CUSTOMER,))}


@pytest.mark.parametrize("caller", list(CALLERS))
@pytest.mark.parametrize("service", list(SERVICES))
def test_no_input_makes_a_service_answer_5xx_or_anything_undocumented(
    system: System, service: str, caller: str
) -> None:
    base_url = system.url(service)
    bearer = f"Bearer {system.token(*CALLERS[caller])}"
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json").exclude(path=_ENDLESS)

    @schema.auth()
    class Caller:
        """Every case carries the caller's token; a negative case may have it dropped or
        garbled by the fuzzer (each then a documented 401)."""

        def get(self, case: schemathesis.Case, context: Any) -> str:
            return bearer

        def set(self, case: schemathesis.Case, data: str, context: Any) -> None:
            case.headers = {**(case.headers or {}), "Authorization": data}

    failures: list[str] = []
    undocumented: list[str] = []
    #: answers of 401 to the caller's own (valid) token, and the operations that let it in
    refused: list[str] = []
    let_in: set[str] = set()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8, "the fuzzer sees the service's operations"
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            cases = operation.as_strategy(generation_mode=mode)

            @settings(
                max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
            )
            @given(case=cases)
            def call(case: schemathesis.Case) -> None:
                response = case.call(base_url=base_url, timeout=15)
                if (case.headers or {}).get("Authorization") == bearer:
                    if response.status_code == 401:
                        refused.append(f"{case.method} {case.formatted_path} → 401: {response.text[:200]}")
                    else:
                        let_in.add(case.operation.label)
                overloaded = response.status_code == 503 and "Retry-After" in response.headers
                if response.status_code >= 500 and not overloaded:
                    failures.append(
                        f"{case.method} {case.formatted_path} → {response.status_code}: {case.body!r}"
                    )
                if response.status_code == 400 and response.content == _NOT_HTTP:
                    return  # a control character in a header the fuzzer garbled: not HTTP
                try:
                    case.validate_response(response, checks=CONFORMS)
                except FailureGroup as group:
                    why = "; ".join(f"{f.title}: {f.message}"[:300] for f in group.exceptions)
                    undocumented.append(
                        f"{case.method} {case.formatted_path} → {response.status_code}: {why}"
                    )

            try:
                call()
            except Unsatisfiable:  # no invalid input exists (an operation without parameters)
                assert mode is GenerationMode.NEGATIVE
    assert not failures, "\n".join(failures[:20])
    assert not refused, "\n".join(refused[:20])
    assert let_in == {operation.label for operation in operations}, "each was fuzzed with the token"
    assert not undocumented, "\n".join(sorted(set(undocumented))[:20])


# -- the hostile values, each in every field of every body ----------------------------------

#: Raw JSON fragments (not all of them JSON a strict encoder writes) that once answered 500
#: or meant something other than they say: non-finite numbers, NUL, lone surrogates, other
#: scripts' digits, exponents, negative zero, booleans and strings where integers belong,
#: numbers too large for any column, deep nesting.
HOSTILE = (
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b'"NaN"',
    b'"a\\u0000b"',
    b'"\\ud800"',
    b'"\\udfff\\ud800"',
    '"\u0661\u0662.\u0665\u0660"'.encode(),  # Arabic-Indic digits: Decimal reads them as 12.50
    b'"\xef\xbc\x91"',  # fullwidth 1
    b'"1e3"',
    b'"-0.00"',
    b'"0.001"',
    b'" 1.00"',
    b"1.5",
    b"true",
    b'"1"',
    b"99999999999999999999999999999999",
    b"-1",
    b"1e400",
    b"null",
    b"[]",
    b"{}",
    b"[" * 500 + b"]" * 500,
)

_IDS = {b'"NaN"', b'"1e3"', b'"-0.00"', b'"0.001"', b'"1"'}
#: The hostile values that are nevertheless valid in a field: an id may be "NaN", a name
#: any storable text, and "1" is one unit of money.
ACCEPTED: dict[str | int, set[bytes]] = {
    "customer_id": _IDS,
    "product_id": _IDS,
    "name": {*_IDS, b'" 1.00"', '"\u0661\u0662.\u0665\u0660"'.encode(), b'"\xef\xbc\x91"'},
    "price": {b'"1"'},
    "balance": {b'"1"'},
}

#: (method, path, a valid body) — each field of the body is replaced by each hostile value.
BODIES = (
    ("order_svc", "POST", "/orders", {"customer_id": "c", "items": [{"product_id": "p", "quantity": 1}]}),
    ("inventory_svc", "PUT", "/products/p", {"name": "P", "price": "1.00", "stock": 1}),
    ("payment_svc", "PUT", "/accounts/c", {"balance": "1.00"}),
)


def _with(body: dict[str, object], path: tuple[str | int, ...], raw: bytes) -> bytes:
    """``body`` as JSON with the value at ``path`` replaced by the raw fragment ``raw``."""
    import json

    marker = "__HOSTILE__"
    copy = json.loads(json.dumps(body))
    node = copy
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = marker
    return json.dumps(copy).encode().replace(f'"{marker}"'.encode(), raw)


def _paths(body: object, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    if isinstance(body, dict):
        return [p for k, v in body.items() for p in [(*prefix, k), *_paths(v, (*prefix, k))]]
    if isinstance(body, list):
        return [p for i, v in enumerate(body) for p in [(*prefix, i), *_paths(v, (*prefix, i))]]
    return []


def test_hostile_values_in_any_field_get_a_4xx_with_a_reason(system: System) -> None:
    import httpx

    answered: list[str] = []
    for service, method, path, body in BODIES:
        with httpx.Client(base_url=system.url(service), headers=system.auth(), timeout=15) as http:
            for field in _paths(body):
                for raw in HOSTILE:
                    content = _with(body, field, raw)
                    r = http.request(
                        method, path, content=content, headers={"content-type": "application/json"}
                    )
                    valid = raw in ACCEPTED.get(field[-1], set())
                    if r.status_code >= 500 or (r.status_code < 400) != valid:
                        answered.append(
                            f"{method} {path} {field}={raw[:40]!r} → {r.status_code} {r.text[:120]}"
                        )
                    elif r.status_code >= 400:
                        assert r.json()["detail"], r.text  # a reason, not just a code
    assert not answered, "\n".join(answered)
