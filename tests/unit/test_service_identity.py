"""``saga_kit.http.ServiceIdentity``: every answer names its service and is not stored
unless it says otherwise, and a request meant for another (``Saga-Service``) is answered
421 without reaching the app."""

from __future__ import annotations

import json

import pytest
from starlette.types import Message, Receive, Scope, Send

from saga_kit.http import ServiceIdentity


async def _answer(
    headers: list[tuple[bytes, bytes]], answered: tuple[tuple[bytes, bytes], ...] = ((b"x-app", b"1"),)
) -> tuple[list[Message], bool]:
    """What ``ServiceIdentity`` of ``payment_svc`` answers to a GET with ``headers`` (the
    app behind it answers 200 with ``answered``), and whether the app was reached."""
    reached = False

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal reached
        reached = True
        await send({"type": "http.response.start", "status": 200, "headers": list(answered)})
        await send({"type": "http.response.body", "body": b"{}"})

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "GET", "path": "/", "headers": headers}
    await ServiceIdentity(app, "payment_svc")(scope, receive, send)
    return sent, reached


@pytest.mark.parametrize("meant", [None, b"payment_svc", b"payment", b"PAYMENT_SVC", b" ", b""])
async def test_an_answer_names_its_service(meant: bytes | None) -> None:
    sent, reached = await _answer([(b"saga-service", meant)] if meant is not None else [])
    assert reached and sent[0]["status"] == 200
    named, not_stored = (b"server", b"payment_svc"), (b"cache-control", b"no-store")
    assert sent[0]["headers"] == [(b"x-app", b"1"), named, not_stored]


async def test_an_answer_that_says_how_to_cache_keeps_its_own_word() -> None:
    sent, _ = await _answer([], answered=((b"Cache-Control", b"no-cache"),))
    assert sent[0]["headers"] == [(b"Cache-Control", b"no-cache"), (b"server", b"payment_svc")]


@pytest.mark.parametrize("meant", [b"inventory_svc", b"Inventory", b"payment_svc, order_svc", b"\xe9"])
async def test_a_request_meant_for_another_is_421_and_reaches_nothing(meant: bytes) -> None:
    sent, reached = await _answer([(b"saga-service", meant)])
    assert not reached
    assert sent[0]["status"] == 421 and (b"server", b"payment_svc") in sent[0]["headers"]
    assert (b"cache-control", b"no-store") in sent[0]["headers"]
    body = json.loads(sent[1]["body"])
    assert body["reason"] == "misdirected_request"
    assert body["detail"] == f"this is payment_svc, not {meant.decode('latin-1')!r}: nothing was done"


async def test_one_of_two_headers_naming_another_is_421() -> None:
    sent, reached = await _answer([(b"saga-service", b"payment_svc"), (b"saga-service", b"order_svc")])
    assert not reached and sent[0]["status"] == 421
