"""What ``saga_kit.http.RequestGuard`` does with a request's body before a route sees it:
a body that stops arriving is answered 408 and its connection closed; a JSON body in
another encoding than UTF-8 is a 415; a name twice in one object, a number too long to
read or nesting too deep is a 422 that says which (each an ``UnreadableBody``, answered
once the caller is known)."""

from __future__ import annotations

import asyncio
import codecs
import json

import pytest
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive, Scope, Send

from saga_kit.http import RequestGuard, UnreadableBody, check_json_body


class Reader:
    """A route that reads its whole body (as FastAPI does), then answers 200; what it read
    or the exception the reading raised is kept."""

    def __init__(self) -> None:
        self.body = b""
        self.error: BaseException | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            while True:
                message = await receive()
                self.body += message.get("body", b"")
                if not message.get("more_body", False):
                    break
        except Exception as exc:
            self.error = exc
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def _scope(headers: list[tuple[bytes, bytes]]) -> Scope:
    return {"type": "http", "method": "POST", "path": "/orders", "headers": headers}


JSON = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")]


def _client(*chunks: bytes, stall: bool = False) -> Receive:
    """The client's side: these chunks, then (``stall``) nothing more, ever."""
    queue = list(chunks)

    async def receive() -> Message:
        if not queue:
            await asyncio.Event().wait()
        chunk = queue.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(queue) or stall}

    return receive


async def _sent(messages: list[Message], message: Message) -> None:
    messages.append(message)


async def test_a_body_that_stops_arriving_is_a_408_that_closes_the_connection() -> None:
    app = Reader()
    guard = RequestGuard(app, allowed_origins=(), max_body_size=1024, body_timeout=0.05)
    sent: list[Message] = []
    await asyncio.wait_for(
        guard(_scope(JSON), _client(b'{"customer_id": ', stall=True), lambda m: _sent(sent, m)), 2
    )
    assert isinstance(app.error, HTTPException) and app.error.status_code == 408
    assert app.error.detail == "the request body did not arrive within 0.05 s"
    assert app.error.headers == {"Connection": "close"}
    assert app.body == b'{"customer_id": '  # what arrived reached the route


async def test_a_body_that_arrives_in_time_is_read_and_the_wait_after_it_is_not_timed() -> None:
    app = Reader()
    guard = RequestGuard(app, allowed_origins=(), max_body_size=1024, body_timeout=0.05)
    sent: list[Message] = []
    await guard(_scope(JSON), _client(b'{"a": ', b"[1, 2]}"), lambda m: _sent(sent, m))
    assert app.error is None and app.body == b'{"a": [1, 2]}' and sent[0]["status"] == 200

    reader = Reader()
    after: list[Message] = []

    async def listening(scope: Scope, receive: Receive, send: Send) -> None:
        await reader(scope, receive, send)
        after.append(await receive())  # a streaming answer waits for the disconnect

    async def client() -> Message:
        if reader.body:
            await asyncio.sleep(0.1)  # longer than the body's time limit
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": b"{}", "more_body": False}

    await RequestGuard(listening, (), 1024, body_timeout=0.05)(_scope(JSON), client, lambda m: _sent(sent, m))
    assert reader.error is None and after == [{"type": "http.disconnect"}]


@pytest.mark.parametrize(
    ("body", "detail", "python_reads"),
    [
        ('{"customer_id": "é"}'.encode("utf-16"), "the body is not UTF-8: byte 0xff at offset 0", True),
        ('{"customer_id": "a"}'.encode("utf-16-le"), "the body is not UTF-8 JSON: it holds NUL bytes", True),
        ('{"customer_id": "a"}'.encode("utf-32"), "the body is not UTF-8: byte 0xff at offset 0", True),
        ('{"customer_id": "a"}'.encode("utf-32-be"), "the body is not UTF-8 JSON: it holds NUL bytes", True),
        ('{"customer_id": "Zoë"}'.encode("latin-1"), "the body is not UTF-8: byte 0xeb at offset 19", False),
        (
            codecs.BOM_UTF8 + b'{"customer_id": "\xff"}',
            "the body is not UTF-8: byte 0xff at offset 20",
            False,
        ),
    ],
)
def test_json_in_another_encoding_than_utf8_is_a_415(body: bytes, detail: str, python_reads: bool) -> None:
    if python_reads:  # what Python's json, and so the framework, would have taken
        assert json.loads(body)["customer_id"]
    with pytest.raises(UnreadableBody) as refused:
        check_json_body(body)
    assert refused.value.status == 415 and str(refused.value).startswith(detail)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            b'{"customer_id": "bob", "customer_id": "alice"}',
            "the name 'customer_id' appears twice in one object",
        ),
        (b'{"items": [{"quantity": 1, "quantity": 9}]}', "the name 'quantity' appears twice in one object"),
        (b'{"quantity": ' + b"9" * 5000 + b"}", "a number in the body has more than 4300 digits"),
        (b"[" * 100_000 + b"]" * 100_000, "the body nests arrays and objects too deeply to be read"),
    ],
)
def test_json_that_says_a_thing_twice_or_cannot_be_read_is_refused_with_the_reason(
    body: bytes, reason: str
) -> None:
    with pytest.raises(UnreadableBody) as refused:
        check_json_body(body)
    assert refused.value.status == 422 and str(refused.value).startswith(reason)


@pytest.mark.parametrize(
    "body",
    [
        b'{"customer_id": "Zo\xc3\xab", "items": [{"a": 1}, {"a": 2}]}',
        codecs.BOM_UTF8 + b'{"a": 1}',  # RFC 8259 8.1: a parser may ignore it
        b'{"a": "\\u0000"}',  # an escaped NUL is JSON's own business
        b"{not json",  # the framework's 422 says where
    ],
)
def test_utf8_json_that_says_each_thing_once_passes(body: bytes) -> None:
    check_json_body(body)


async def test_the_guard_checks_a_json_body_once_it_has_arrived_not_before() -> None:
    app = Reader()
    guard = RequestGuard(app, allowed_origins=(), max_body_size=1024)
    await guard(_scope(JSON), _client(b'{"a": 1, ', b'"a": 2}'), lambda m: _sent([], m))
    assert isinstance(app.error, UnreadableBody) and app.body == b'{"a": 1, '


@pytest.mark.parametrize(
    "types",
    [
        [b"application/json", b"text/plain"],
        [b"text/plain", b"application/json"],
        [b"application/json", b"application/json"],
    ],
)
async def test_a_body_whose_content_type_is_said_twice_is_a_415_whichever_comes_first(
    types: list[bytes],
) -> None:
    """RFC 9110 §5.3: a field sent twice is its values joined; Content-Type is one value,
    so two of them are no media type this service reads (only the first was checked)."""
    app = Reader()
    guard = RequestGuard(app, allowed_origins=(), max_body_size=1024)
    headers = [(b"host", b"127.0.0.1"), *((b"content-type", t) for t in types), (b"content-length", b"2")]
    sent: list[Message] = []
    await guard(_scope(headers), _client(b"{}"), lambda m: _sent(sent, m))
    assert sent[0]["status"] == 415 and app.body == b""
    assert json.loads(sent[1]["body"])["reason"] == "unsupported_media_type"


@pytest.mark.parametrize(
    ("content_type", "said"),
    [
        (None, "a body with no Content-Type is not accepted here"),
        (b"text/plain", "a body with the media type 'text/plain' is not accepted here"),
    ],
)
async def test_a_body_that_is_not_json_is_a_415_saying_what_was_sent(
    content_type: bytes | None, said: str
) -> None:
    """Without a Content-Type the answer named "the media type 'none'" (a trial)."""
    app = Reader()
    guard = RequestGuard(app, allowed_origins=(), max_body_size=1024)
    typed = [(b"content-type", content_type)] if content_type else []
    headers = [(b"host", b"127.0.0.1"), *typed, (b"content-length", b"2")]
    sent: list[Message] = []
    await guard(_scope(headers), _client(b"{}"), lambda m: _sent(sent, m))
    assert sent[0]["status"] == 415
    assert json.loads(sent[1]["body"])["detail"].startswith(said)


@pytest.mark.parametrize(
    ("query", "headers", "where"),
    [
        (b"status=PENDING&status=APPROVED", [], [["query", "status"]]),
        (b"limit=1&after=2&limit=3", [], [["query", "limit"]]),
        (b"", [(b"last-event-id", b"5"), (b"last-event-id", b"900")], [["header", "Last-Event-ID"]]),
        (b"a=1", [(b"idempotency-key", b"k1"), (b"idempotency-key", b"k2")], [["header", "Idempotency-Key"]]),
    ],
)
async def test_a_parameter_given_twice_is_a_422_that_names_it(
    query: bytes, headers: list[tuple[bytes, bytes]], where: list[list[str]]
) -> None:
    """The framework took the last of two query values, and the first of two headers,
    silently (an attack trial); which one was meant is unknown."""
    reader, sent = Reader(), []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {**_scope([(b"host", b"127.0.0.1"), *headers]), "method": "GET", "query_string": query}
    await RequestGuard(reader, [], 1024)(scope, _client(b""), send)
    assert sent[0]["status"] == 422
    body = json.loads(sent[1]["body"])
    assert body["reason"] == "invalid_request" and [d["loc"] for d in body["detail"]] == where


async def test_parameters_given_once_pass() -> None:
    reader, sent = Reader(), []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        **_scope([(b"host", b"127.0.0.1"), (b"last-event-id", b"5")]),
        "method": "GET",
        "query_string": b"a=1&b=1",
    }
    await RequestGuard(reader, [], 1024)(scope, _client(b""), send)
    assert sent[0]["status"] == 200


def test_a_422_for_an_id_says_where_it_is_wrong_not_what_it_held() -> None:
    """pydantic's message quotes the character it stopped at; the README promises a 422
    never repeats the value it refused."""
    import uuid

    from fastapi.exceptions import RequestValidationError
    from pydantic import TypeAdapter, ValidationError

    from saga_kit.http import validation_errors

    for given in ("12345678-1234-1234-1234-12345678zzzz", "12345678-1234-1234-1234-1234567\ufffd9abc"):
        with pytest.raises(ValidationError) as caught:
            TypeAdapter(uuid.UUID).validate_python(given)
        (said,) = validation_errors(RequestValidationError(caught.value.errors()))
        assert said["msg"].startswith("Input should be a valid UUID, invalid character at position 3"), said
        assert "z" not in said["msg"] and "\ufffd" not in said["msg"]


@pytest.mark.parametrize(
    ("given", "said"),
    [
        (
            "a@xn--secret.com",
            "value is not a valid email address: The part after the @-sign is not valid IDNA.",
        ),
        (
            "se(cret)@x.com",
            "value is not a valid email address:"
            " The email address contains invalid characters before the @-sign.",
        ),
        ("not-an-address", "value is not a valid email address: An email address must have an @-sign."),
    ],
)
def test_an_email_address_refused_is_not_quoted_in_the_answer(given: str, said: str) -> None:
    """An attack trial: email-validator's reason quoted what it refused (a label of the
    domain, the characters before the @-sign), though a 422 never repeats the value."""
    from fastapi.exceptions import RequestValidationError
    from pydantic import EmailStr, TypeAdapter, ValidationError

    from saga_kit.http import validation_errors

    with pytest.raises(ValidationError) as caught:
        TypeAdapter(EmailStr).validate_python(given)
    (problem,) = validation_errors(RequestValidationError(caught.value.errors()))
    assert problem["msg"] == said
    assert "'" not in problem["msg"] and "secret" not in problem["msg"]
