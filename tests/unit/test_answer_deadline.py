"""``saga_kit.http.AnswerDeadline``: a route that has not started its answer within the
deadline — counted from the request, or from the last part of its body — is answered 503
``service_unavailable`` with ``Retry-After`` at once and cancelled behind it (a database
that hung without refusing held every such request for as long as it hung: 75 s in an
attack trial). A body that takes its time, an answer that has started (a stream) and a
route's own error are left as they were."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.types import Message, Receive, Scope, Send

from saga_kit.http import AnswerDeadline


def _scope(method: str = "GET") -> Scope:
    return {"type": "http", "method": method, "path": "/orders/x", "headers": []}


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class Answers:
    """What the client was sent."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def body(self) -> dict[str, str]:
        return dict(json.loads(b"".join(m.get("body", b"") for m in self.messages[1:])))


async def test_a_route_that_waits_past_the_deadline_is_a_503_at_once_and_is_cancelled() -> None:
    cancelled, cleaned_up = asyncio.Event(), asyncio.Event()

    async def hangs(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await asyncio.sleep(3600)  # a query on a database that does not answer
        except asyncio.CancelledError:
            cancelled.set()
            await cleaned_up.wait()  # psycopg cancels the query on the server meanwhile
            await send({"type": "http.response.start", "status": 200, "headers": []})
            raise

    sent = Answers()
    await asyncio.wait_for(AnswerDeadline(hangs, 0.1)(_scope("POST"), _no_body, sent), 5)
    assert not cleaned_up.is_set()  # answered before the route's clean-up ended
    assert sent.status == 503
    assert dict(sent.messages[0]["headers"])[b"retry-after"] == b"1"
    assert sent.body["reason"] == "service_unavailable"
    assert sent.body["detail"].startswith("this service could not answer within 0.1 s")
    assert "Idempotency-Key" in sent.body["detail"]  # a POST: how to retry it safely
    await asyncio.wait_for(cancelled.wait(), 1)
    cleaned_up.set()
    await asyncio.sleep(0.05)
    assert len(sent.messages) == 2  # the cancelled route's late start was not sent


async def test_the_time_a_body_takes_to_arrive_is_not_counted() -> None:
    """The body's wait is ``RequestGuard``'s (408); the deadline counts from its last part."""
    parts = [b'{"a": ', b"1}"]

    async def slow_client() -> Message:
        await asyncio.sleep(0.7)  # each part longer than the deadline
        body = parts.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(parts)}

    async def reads_then_answers(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive())["more_body"]:
            pass
        await asyncio.sleep(0.05)  # its own work, within the deadline
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    sent = Answers()
    await AnswerDeadline(reads_then_answers, 0.5)(_scope("POST"), slow_client, sent)
    assert sent.status == 200


async def test_an_answer_that_has_started_is_not_cut() -> None:
    async def streams(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(3):
            await asyncio.sleep(0.1)
            await send({"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    sent = Answers()
    await AnswerDeadline(streams, 0.05)(_scope(), _no_body, sent)
    assert sent.status == 200 and len(sent.messages) == 5


async def test_a_routes_own_error_and_a_quick_answer_pass_as_they_are() -> None:
    async def fails(scope: Scope, receive: Receive, send: Send) -> None:
        raise LookupError("a bug")

    with pytest.raises(LookupError, match="a bug"):
        await AnswerDeadline(fails, 1.0)(_scope(), _no_body, Answers())

    async def answers(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent = Answers()
    await AnswerDeadline(answers, 1.0)(_scope(), _no_body, sent)
    assert sent.status == 204 and len(sent.messages) == 2


async def test_a_client_that_goes_away_takes_the_route_with_it() -> None:
    cancelled = asyncio.Event()

    async def hangs(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    serving = asyncio.ensure_future(AnswerDeadline(hangs, 60.0)(_scope(), _no_body, Answers()))
    await asyncio.sleep(0.05)
    serving.cancel()  # uvicorn cancels a request at shutdown
    with pytest.raises(asyncio.CancelledError):
        await serving
    await asyncio.wait_for(cancelled.wait(), 1)
