"""HTTP pieces every service shares: the app factory, health endpoints, dependencies, and
the bodies of error answers with the helper that documents them in each route's OpenAPI."""

from __future__ import annotations

import asyncio
import codecs
import email.message
import ipaddress
import json
import logging
import re
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, unquote_to_bytes

import httptools
import psycopg
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, BeforeValidator
from sqlalchemy import exc as sa_exc
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from events.values import NameGivenTwice, error_words, once_each, printable
from saga_kit import auth, deadlines, tracing
from saga_kit.db import Database
from saga_kit.errors import DomainRejection, TransientError, described, is_transient
from saga_kit.settings import ServiceSettings
from saga_kit.urls import MEANT_FOR

log = logging.getLogger(__name__)

#: Prometheus text exposition, version 0.0.4.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Check = Callable[[], Awaitable[None]]

#: Where the scripts, styles and icon of ``/docs`` (Swagger UI) and ``/redoc`` are served
#: from: fastapi-offline ships them, so the API docs need no network.
DOCS_ASSETS = "/static-offline-docs"
#: Probes, scrapes and pages are not traced: they would drown the sagas' traces.
_UNTRACED = (
    "/health/",
    "/metrics",
    "/dashboard",
    "/saga-events/stream",
    "/docs",
    "/redoc",
    "/openapi.json",
    DOCS_ASSETS,
)


def _untraced(scope: Scope) -> bool:
    """A read of a probe, a scrape or a page (``_UNTRACED``). A call that changes something
    is traced wherever it is, so that its audit entry names its trace: the dashboard's
    replay and discard of a dead letter had none, and nothing linked the order service's
    entry to the service's own (an operator trial)."""
    path = str(scope.get("path", ""))
    return scope.get("method") in ("GET", "HEAD", "OPTIONS") and path.startswith(_UNTRACED)


class Problem(BaseModel):
    """The body of every error answer but a 422: what went wrong, for people, and a
    ``reason`` that programs can rely on (``not_found``, ``order_not_cancellable``, …)."""

    detail: str
    reason: str


class InvalidField(BaseModel):
    #: Where: ``body``, ``path``, ``query`` or ``header``, then the field's name or index.
    loc: list[str | int]
    msg: str
    type: str


class InvalidRequest(BaseModel):
    """The body of a 422: every invalid part of the request, where and why (never the
    input itself)."""

    detail: list[InvalidField]
    reason: Literal["invalid_request"]


#: The OpenAPI of a ``Retry-After`` header.
RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer"}}
}


def _in_digits(given: object) -> object:
    """A number written in the digits 0-9 only: the framework's int read "1_0" as 10 and
    "+1", " 1", "1.0" as 1 (an attack trial), one dead letter's id, or one position of a
    feed, typed for another."""
    if isinstance(given, str) and not (given.isascii() and given.isdigit()):
        raise ValueError("must be written in the digits 0-9 only")
    return given


#: An integer given in a path or a query (``Annotated[int, Query(ge=0), IN_DIGITS]``): the
#: digits 0-9 only, else a 422 that says so. After the ``Query``: before it, the bounds went
#: into the OpenAPI document as ``ge``/``le``, which no OpenAPI tool reads, not as
#: ``minimum``/``maximum`` (a newcomer trial found /docs showing no range).
IN_DIGITS = BeforeValidator(_in_digits)


def errors(described: Mapping[int, str] | None = None, *, invalid: bool = True) -> dict[int | str, Any]:
    """The error answers of a route for its OpenAPI document: each status in ``described``
    with its description and a ``Problem`` body (a 503 with its ``Retry-After``), the 503
    of a transient failure (``UNAVAILABLE``) unless ``described`` gives its own, and a 422
    with an ``InvalidRequest`` body unless the route reads no parameter, header or body
    (``invalid=False``)."""
    out: dict[int | str, Any] = {
        status: problem(text, headers=RETRY_AFTER if status == 503 else None)
        for status, text in (described or {}).items()
    }
    out.setdefault(503, UNAVAILABLE)
    if invalid:
        out[422] = {
            "model": InvalidRequest,
            "description": "a parameter, header or the body is invalid; `detail` says where and why",
        }
    return out


def problem(description: str, headers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One error answer with a ``Problem`` body, for a route's ``responses``."""
    return {"model": Problem, "description": description, **({"headers": headers} if headers else {})}


#: The OpenAPI of the 503 every route that reads the database may answer.
UNAVAILABLE = problem(
    "the database or the network is briefly away (`service_unavailable`); retry after `Retry-After`",
    headers=RETRY_AFTER,
)


#: What a request that met a transient failure is told to wait, in seconds: about what a
#: restarted PostgreSQL takes to accept connections again (a fast shutdown and start).
TRANSIENT_RETRY_AFTER_SECONDS = 1


def upstream_unavailable(who: str, retry_after: str | None = None) -> StarletteHTTPException:
    """The 503 ``service_unavailable`` of a route whose upstream (``who``) answered 503: the
    client is told to retry, after the upstream's own ``Retry-After`` when it gave a number
    of seconds, else ``TRANSIENT_RETRY_AFTER_SECONDS`` (a 502 would lose that signal)."""
    given = (retry_after or "").strip()
    seconds = given if given.isascii() and given.isdigit() else str(TRANSIENT_RETRY_AFTER_SECONDS)
    return StarletteHTTPException(
        503,
        f"{who} is briefly unavailable; retry after Retry-After seconds",
        headers={"Retry-After": seconds},
    )


def location(what: str) -> dict[str, Any]:
    """The OpenAPI of a ``Location`` header pointing at ``what``."""
    return {"Location": {"description": what, "schema": {"type": "string", "format": "uri-reference"}}}


#: The exception classes ``is_transient`` may call transient; the handler of each answers
#: 503 for a transient one and lets the rest through to the framework's 500.
_MAYBE_TRANSIENT: tuple[type[Exception], ...] = (
    OSError,  # ConnectionError and TimeoutError among them
    TransientError,
    psycopg.Error,
    sa_exc.SQLAlchemyError,  # DBAPIError (wrapping psycopg's) and the pool's TimeoutError
)


#: The docs pages may load nothing from another host, whatever their bundles try (ReDoc's
#: fetches its maker's logo from a CDN); inline scripts and styles are the pages' own.
_DOCS_POLICY = (
    b"content-security-policy",
    b"default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline';"
    b" img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; frame-ancestors 'none'",
)
_DOCS_PAGES = frozenset({"/docs", "/redoc", "/docs/oauth2-redirect"})


#: An answer that says nothing of caching is not stored (RFC 9111 §5.2.2.5): an order's
#: answer carries its customer's e-mail and address, and none said so (an attack trial;
#: shared caches keep nothing asked with an Authorization header anyway, RFC 9111 §3.5).
_NO_STORE = (b"cache-control", b"no-store")


class _ForHttp:
    """A pure ASGI middleware (no per-request task or body buffering, unlike a
    ``BaseHTTPMiddleware``) of HTTP requests (``http``); anything else passes through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.http(scope, receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class ExtraHeaders(_ForHttp):
    """Adds ``X-Trace-Id`` (the request's trace) to every answer, and the docs pages'
    Content-Security-Policy to theirs; links the request's span to a caller's
    ``traceparent`` it did not continue (``saga_kit.tracing.link_caller``)."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        ids = tracing.current_ids()
        if ids is not None:
            tracing.link_caller(Headers(scope=scope))
        extra = [(b"x-trace-id", ids[0].encode())] if ids is not None else []
        if scope["path"] in _DOCS_PAGES:
            extra.append(_DOCS_POLICY)

        async def with_extra(message: Message) -> None:
            if extra and message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_extra)


_MEANT_FOR = MEANT_FOR.lower().encode()


class ServiceIdentity(_ForHttp):
    """Every answer names the service that gave it, ``Server: order_svc`` (RFC 9110 §10.2.4;
    uvicorn's own ``Server: uvicorn`` is off, ``server_options``), and one that sets no
    ``Cache-Control`` of its own is not stored (``_NO_STORE``; the guards' refusals
    inside this too: a re-check trial found a 400 ``invalid_host``, a 413, a 421 without
    it; the server's own, a 431 or the parser's 400s, carry it from
    ``HeadLimitedProtocol``). A request meant for another (its ``Saga-Service`` header,
    in any case, names one this is not; each header of several is read) is answered 421
    Misdirected Request (RFC 9110 §15.5.20) before anything reads it, reason
    ``misdirected_request``: nothing is done. The inventory service's URL given as the
    payment service's showed inventory's dead letters as payment's, its audit head as
    payment's to keep, and would have replayed its letters (a newcomer trial). A
    WebSocket handshake never reaches it: the HTTP server refuses it (``HeadLimitedProtocol``).
    Pure ASGI, outside everything but ``HeadAsGet``.
    ``problem``: a refusal's body from its detail and reason (``{"detail", "reason"}``,
    the services' ``Problem``, by default)."""

    def __init__(self, app: ASGIApp, name: str, problem: ProblemShape | None = None) -> None:
        super().__init__(app)
        self.name = name
        self._names = {name.encode(), name.removesuffix("_svc").encode()}
        self._server = (b"server", name.encode())
        self._problem = problem or (lambda detail, reason: {"detail": detail, "reason": reason})

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        for header, value in scope["headers"]:
            meant_for = value.strip().lower() if header == _MEANT_FOR else b""
            if meant_for and meant_for not in self._names:  # empty: none, as an empty Authorization
                meant = printable(value.decode("latin-1"), 100)
                detail = f"this is {self.name}, not {meant!r}: nothing was done"
                refusal = self._problem(detail, "misdirected_request")
                for message in _json_answer(421, refusal, [self._server, _NO_STORE]):
                    await send(message)
                return
        server = self._server

        async def named(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                if any(k.lower() == b"cache-control" for k, _ in headers):
                    message["headers"] = [*headers, server]
                else:
                    message["headers"] = [*headers, server, _NO_STORE]
            await send(message)

        await self.app(scope, receive, named)


#: FastAPI's answer to a body it cannot decode at all (fastapi.routing).
UNREADABLE_BODY = "There was an error parsing the body"

#: The 400's words for a request whose body ended before it was complete, its client gone
#: (``broke_off``).
BODY_BROKE_OFF = (
    "the request's body ended before it was complete: its client went away, or the HTTP"
    " server could not read its chunks (and answered 400 invalid_http_request)"
)


def broke_off(exc: StarletteHTTPException) -> bool:
    """Is ``exc`` FastAPI's 400 for a body whose client went away before it was complete
    (Starlette's ``ClientDisconnect``)? The services and the provider answer it 400, the
    status the client got from the HTTP server when its chunks broke (nothing, when it
    left): it was read as an unreadable body, and the audit trail and the trace recorded
    a 422 the client never saw (an attack trial)."""
    return (
        exc.status_code == 400
        and exc.detail == UNREADABLE_BODY
        and isinstance(exc.__cause__, ClientDisconnect)
    )


#: Methods that change state: a browser on another origin may not send them here.
_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class RequestGuard:
    """Request hygiene in front of every route (pure ASGI), each refusal a ``Problem``:

    * **a path with a control character or an escaped slash** (``%0A``, ``%2F``) is
      answered 400 ``invalid_path`` (``path_refusal``);
    * **cross-origin state changes**: a state-changing request (POST, PUT, PATCH, DELETE)
      whose ``Origin`` is neither the service's own nor in ``HTTP_ALLOWED_ORIGINS`` is
      answered 403 ``cross_origin_refused`` (a page on another site cannot cancel an order
      with a bare cross-origin POST: browsers send ``Origin`` on every such request;
      clients that are not browsers send none);
    * **a body that is not JSON**: a POST, PUT or PATCH body whose ``Content-Type`` is not
      JSON in UTF-8 (missing, a form, ``text/plain``, another charset) is answered 415
      ``unsupported_media_type`` — where it used to be a 422 about the body's shape that
      did not say the header was why (``curl -d`` sends a form type by default);
    * **a compressed body**: a body with a ``Content-Encoding`` other than ``identity`` is
      answered 415
      ``unsupported_content_encoding`` with ``Accept-Encoding: identity`` (RFC 9110
      §15.5.16, RFC 7694 §3), where it used to be read as if it were plain JSON;
    * **a transfer coding other than chunked**: ``Transfer-Encoding`` anything but
      ``chunked`` alone (``gzip, chunked``) is answered 501
      ``unsupported_transfer_coding`` (RFC 9112 §6.1): the HTTP server undid the chunks
      and passed the rest on as the body, read as plain JSON (an attack trial's order
      was placed so, where a proxy that decodes the gzip would see another body);
    * **an announced body over the limit**: a ``Content-Length`` over ``max_body_size``
      bytes (any method) is answered 413 ``body_too_large`` before a byte of it is read. A
      body whose size is not announced (chunked) is counted as it arrives by Starlette's
      body limit (inside this guard), whose 413 ``create_app`` answers with the same
      reason;
    * **a body that does not arrive**: once a route starts reading a body, all of it must
      arrive within ``body_timeout`` seconds, or the request is answered 408
      ``request_timeout`` and the connection closed (a client that stalls mid-body holds
      a connection no longer; uvicorn has no such limit of its own);
    * **JSON that is not what it says**: a JSON body is checked once it has arrived
      (``check_json_body``) — bytes that are not UTF-8 (UTF-16, UTF-32, Latin-1) are
      answered 415 ``unsupported_media_type``; a key twice in one object, a number with
      more digits than Python reads, or nesting deeper than it parses, 422 with the reason
      (the framework would take the last of two keys, and name only the exception of the
      others).

    The rest of the hygiene is the libraries': the ``Host`` allow-list (DNS rebinding) is
    decided by Starlette's ``TrustedHostMiddleware`` (``HostAllowList``), CORS preflights
    for the allowed origins by its ``CORSMiddleware``. Every refusal here is in the
    OpenAPI document of each operation it can answer (``_document_common_answers``)."""

    def __init__(
        self,
        app: ASGIApp,
        allowed_origins: Sequence[str],
        max_body_size: int,
        body_timeout: float = 30.0,
    ) -> None:
        self.app = app
        self.allowed_origins = frozenset(o.rstrip("/") for o in allowed_origins)
        self.max_body_size = max_body_size
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            refusal = (
                path_refusal(scope) or self._refusal(scope["method"], headers) or _repeated(scope, headers)
            )
            if refusal is not None:
                for message in _json_answer(*refusal):
                    await send(message)
                return
            if _has_body(headers):  # past _refusal, a body of these methods is JSON
                check = scope["method"] in _WITH_JSON_BODY
                receive = BodyReader(receive, self.body_timeout, self.max_body_size if check else None)
        await self.app(scope, receive, send)

    def _refusal(
        self, method: str, headers: Headers
    ) -> tuple[int, dict[str, str], list[tuple[bytes, bytes]]] | None:
        """(status, Problem body, extra headers) of a request refused, or None."""

        coded = coding_refusal(headers)
        if coded is not None:
            status, reason, detail, extra = coded
            return status, {"detail": detail, "reason": reason}, extra
        origin = _field(headers, "origin")
        host = headers.get("host", "")  # exactly one: HostAllowList
        if (
            method in _STATE_CHANGING
            and origin is not None
            and origin.rstrip("/")
            not in {
                f"http://{host}",
                f"https://{host}",
                *self.allowed_origins,
            }
        ):
            detail = f"a request from the origin {printable(origin, 200)!r} may not change state here"
            return 403, {"detail": detail, "reason": "cross_origin_refused"}, []
        length = headers.get("content-length", "")
        has_body = _has_body(headers)
        content_type = _field(headers, "content-type")  # twice: never JSON, whichever comes first
        if has_body and method in _WITH_JSON_BODY and not _is_json(content_type):
            sent = f"the media type {printable(content_type, 100)!r}" if content_type else "no Content-Type"
            detail = f"a body with {sent} is not accepted here: send application/json (UTF-8)"
            return 415, {"detail": detail, "reason": "unsupported_media_type"}, []
        if length.isdigit() and int(length) > self.max_body_size:
            return 413, _too_large(self.max_body_size, length), []
        return None


#: Request headers that carry one value: sent twice, which one was meant is unknown.
SINGLE_HEADERS = ("Idempotency-Key", "Last-Event-ID")  # as their specifications spell them


def _field(headers: Headers, name: str) -> str | None:
    """A request header's value, a field sent twice being one field, its values joined by
    commas (RFC 9110 §5.3): "Content-Encoding: gzip" then "identity" is "gzip, identity",
    not "identity"; two Origin headers join into one no site has."""
    values = headers.getlist(name)
    return ", ".join(values) if values else None


def coding_refusal(headers: Headers) -> tuple[int, str, str, list[tuple[bytes, bytes]]] | None:
    """(status, reason, detail, extra headers) refusing a request whose body is coded in a
    way not read here, or None: a ``Transfer-Encoding`` other than ``chunked`` alone is 501
    ``unsupported_transfer_coding`` (RFC 9112 §6.1: the HTTP server undoes the chunks and
    leaves the rest to the app, so a gzip body was read as plain JSON, where a proxy that
    decodes it reads another body; ``, chunked`` is chunked: an attack trial found it a
    501); a body with a ``Content-Encoding`` other than ``identity`` is 415
    ``unsupported_content_encoding`` with ``Accept-Encoding: identity`` (RFC 9110 §15.5.16).
    The services (``RequestGuard``) and the payment provider's simulator (its ``BodyLimit``,
    which read a gzip-labelled body as plain JSON and set a balance from it: an attack
    trial) answer it each in their own shape."""
    framing = _field(headers, "transfer-encoding")
    if framing is not None and _elements(framing) != ["chunked"]:
        detail = (
            f"a body in the transfer coding {printable(framing.strip(), 100)!r} is not implemented"
            " here: send it chunked alone, or with a Content-Length"
        )
        return 501, "unsupported_transfer_coding", detail, []
    coding = (_field(headers, "content-encoding") or "").lower()
    if _has_body(headers) and any(c != "identity" for c in _elements(coding)):
        detail = (
            f"a body in the content coding {printable(coding.strip(), 100)!r} is not accepted here:"
            " send it uncompressed"
        )
        return 415, "unsupported_content_encoding", detail, [(b"accept-encoding", b"identity")]
    return None


def _elements(value: str) -> list[str]:
    """The elements of a header's comma-separated list, in lower case, the empty ones left
    out (RFC 9110 §5.6.1: a recipient ignores them)."""
    return [e for e in map(str.strip, value.lower().split(",")) if e]


#: The characters of Unicode's category Cc (C0, DEL, C1).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ESCAPED_SLASH = re.compile(rb"%2f", re.IGNORECASE)


def path_refusal(scope: Scope) -> tuple[int, dict[str, Any], list[tuple[bytes, bytes]]] | None:
    """400 ``invalid_path`` for a path with a control character (Unicode category Cc,
    sent percent-escaped): no resource here has one, and a route's pattern ends in ``$``,
    which matches before a last newline, so ``/orders%0A`` was served as ``/orders`` and
    its audit entry named another path (an attack trial). And for an escaped slash (``%2F``):
    the server decodes it before routing, so one part of the path was read as two, and
    ``POST /dead-letters/2%2Fdiscard`` discarded letter 2 past any rule on the path as sent
    (an attack trial). No id of the services holds a slash; the payment provider's may,
    sent as it is (``/v1/accounts/a/b``)."""
    control = _CONTROL.search(scope["path"])
    if control is not None:
        detail = f"the path holds the control character U+{ord(control[0]):04X}: no resource here has one"
        return 400, {"detail": detail, "reason": "invalid_path"}, []
    if _ESCAPED_SLASH.search(scope.get("raw_path", b"").partition(b"?")[0]):
        detail = "the path holds an escaped slash (%2F): no part of a path here holds one"
        return 400, {"detail": detail, "reason": "invalid_path"}, []
    return None


def _repeated(scope: Scope, headers: Headers) -> tuple[int, dict[str, Any], list[tuple[bytes, bytes]]] | None:
    """422 ``invalid_request`` for a query parameter given more than once (the framework
    took the last one silently; no route reads a list from the query) or a header of
    ``SINGLE_HEADERS`` sent more than once (the first one was taken)."""
    query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    counted = Counter(name for name, _ in query)  # not names.count: 16,000 names took 2.7 s
    twice = [("query", printable(n, 100)) for n, times in counted.items() if times > 1]
    twice += [("header", h) for h in SINGLE_HEADERS if len(headers.getlist(h)) > 1]
    if not twice:
        return None
    return 422, {"detail": [sent_twice(*where) for where in twice], "reason": "invalid_request"}, []


def sent_twice(where: str, name: str) -> dict[str, Any]:
    """The 422 detail of a query parameter or single-valued header (``where``: ``query``
    or ``header``) given more than once."""
    return {"loc": [where, name], "msg": "sent more than once: send one", "type": "duplicate"}


def header_text(value: str) -> str:
    """A header's value as the UTF-8 text its bytes are: the ASGI server hands them over
    as Latin-1, so ``é`` arrives as ``Ã©`` and ``€`` with a C1 control in it. Raises
    ``ValueError`` ("must be text in UTF-8") for bytes that are not UTF-8. An
    ``Idempotency-Key`` is read so by the services and by the payment provider's
    simulator alike."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise ValueError("must be text in UTF-8") from None


#: A ``%`` that does not begin an escape: a ``%`` not followed by two hex digits.
_BARE_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")


def path_text(scope: Scope) -> str:
    """The request's path as the UTF-8 text its percent-decoded bytes are. Raises
    ``ValueError`` for bytes that are not UTF-8 ("must be text in UTF-8"): the ASGI server
    decodes them with U+FFFD in their place, so ``%ff%fe`` and ``%fe%ff`` were one path (an
    attack trial: one account of the payment provider's simulator); and for a ``%`` that
    escapes nothing (RFC 3986 §2.1), which it keeps as it came, so ``%zz`` and ``%25zz``
    were one path (a second attack trial)."""
    raw = scope.get("raw_path")
    if raw is None:
        return str(scope["path"])
    raw = raw.partition(b"?")[0]
    if _BARE_PERCENT.search(raw):
        raise ValueError("a % in the path must begin an escape of two hex digits (%25 for a %)")
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeError:
        raise ValueError("must be text in UTF-8") from None


#: Methods whose body, when they have one, is JSON on every route of the services.
_WITH_JSON_BODY = frozenset({"POST", "PUT", "PATCH"})


def _has_body(headers: Headers) -> bool:
    return "transfer-encoding" in headers or headers.get("content-length", "") not in ("", "0")


class UnreadableBody(Exception):
    """A JSON body that cannot be taken as it is: answered with ``status`` — 415
    ``unsupported_media_type`` for bytes that are not UTF-8, else 422 ``invalid_request``
    — and this message (``create_app``), once the caller is known to be allowed to learn
    it (a caller without a token gets its 401 first)."""

    def __init__(self, message: str, status: Literal[415, 422] = 422) -> None:
        super().__init__(message)
        self.status = status


def service_unavailable(why: str, method: str) -> dict[str, str]:
    """The body of a 503 ``service_unavailable`` (sent with ``Retry-After``): ``why``, then
    what it means and what to do — a POST, with the same ``Idempotency-Key``. Not "briefly":
    a database that stopped is away until someone starts it again."""
    detail = (
        f"{why}: the database, or something else this service needs, does not answer now;"
        " retry after Retry-After seconds"
    )
    if method == "POST":
        detail += " (with the same Idempotency-Key, a retried POST cannot act twice)"
    return {"detail": detail, "reason": "service_unavailable"}


class AnswerDeadline:
    """ASGI middleware: a request whose answer has not started ``seconds`` after the
    service last had something to wait for from the client (the request, or the body's
    last part) is answered 503 ``service_unavailable`` with ``Retry-After``, and the route
    is cancelled behind it. What this bounds is the service's own waiting — a database
    that hangs without refusing (a stopped server, a network that drops packets) held
    every request that had a connection until it came back, 75 s in an attack trial,
    while the README promised a 503. The body's own wait is ``RequestGuard``'s (408);
    an answer that has started (a stream) is not cut.

    The 503 goes out at once; the cancelled route cleans up behind it (psycopg cancels
    its query on the server, and gives up on the connection after ~10 s if the server
    does not answer that either). Work a route handed to another task must follow the
    cancellation too: the order desk rolls back a batch whose callers went away
    (``order_svc.placing``). A POST answered while its commit was under way may still
    have acted: retried with the same ``Idempotency-Key``, it cannot act twice."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app, self.seconds = app, seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        #: when the service last had the client's input (None: it waits for it now)
        since: list[float | None] = [loop.time()]
        started = late = False

        async def receiving() -> Message:
            since[0] = None
            try:
                return await receive()
            finally:
                since[0] = loop.time()

        async def sending(message: Message) -> None:
            nonlocal started
            if late:
                return  # the 503 went out: the cancelled route says nothing more
            started = started or message["type"] == "http.response.start"
            await send(message)

        route = asyncio.ensure_future(self.app(scope, receiving, sending))
        try:
            while not started:
                at = since[0]
                left = self.seconds if at is None else at + self.seconds - loop.time()
                if left <= 0:
                    break
                done, _ = await asyncio.wait({route}, timeout=left)
                if done:
                    break
            else:
                await route  # answering: no deadline on a stream
                return
            if route.done():
                route.result()  # the route's own exception, as without this middleware
                return
        except BaseException:
            deadlines.leave(route)  # the client or the server went away: the route with it
            raise
        late = True
        deadlines.leave(route)
        log.warning(
            "%s %s: 503, no answer within %g s (is the database answering?)",
            scope["method"],
            scope["path"],
            self.seconds,
        )
        why = f"this service could not answer within {self.seconds:g} s"
        body = service_unavailable(why, scope["method"])
        retry = b"%d" % TRANSIENT_RETRY_AFTER_SECONDS
        for message in _json_answer(503, body, [(b"retry-after", retry)]):
            await send(message)


class BodyReader:
    """The ``receive`` of a request with a body (``RequestGuard``; the payment provider's
    simulator's ``BodyLimit``, without ``json_limit``): the whole body must
    arrive within ``timeout`` seconds of the route's first read (else 408); with
    ``json_limit``, a body up to that many bytes is kept as it arrives and checked by
    ``check_json_body`` when complete (a larger one is the body limit's 413)."""

    def __init__(self, receive: Receive, timeout: float, json_limit: int | None) -> None:
        self._receive = receive
        self._timeout = timeout
        self._deadline: float | None = None
        self._done = False
        self._limit = json_limit
        self._chunks: list[bytes] = []
        self._size = 0

    async def __call__(self) -> Message:
        if self._done:  # after the body: a wait for the client's disconnect, not timed
            return await self._receive()
        if self._deadline is None:
            self._deadline = asyncio.get_running_loop().time() + self._timeout
        try:
            async with asyncio.timeout_at(self._deadline):
                message = await self._receive()
        except TimeoutError:
            raise StarletteHTTPException(
                408,
                f"the request body did not arrive within {self._timeout:g} s",
                headers={"Connection": "close"},  # RFC 9110 §15.5.9
            ) from None
        if message["type"] != "http.request":
            self._done = True
            return message
        if self._limit is not None and self._size <= self._limit:
            chunk = message.get("body", b"")
            self._chunks.append(chunk)
            self._size += len(chunk)
        if not message.get("more_body", False):
            self._done = True
            if self._limit is not None and self._size <= self._limit:
                check_json_body(b"".join(self._chunks))
        return message


def check_json_body(body: bytes) -> None:
    """Is ``body`` JSON text in UTF-8 that says each thing once? Raises ``UnreadableBody``:
    415 for bytes that are not UTF-8 (RFC 8259 §8.1; a NUL byte, which JSON text never
    holds unescaped, is UTF-16 or UTF-32 — Python's ``json`` would guess those and read
    them); 422 for a name twice in one object (``events.values.once_each``), a number of
    more digits than ``sys.get_int_max_str_digits()``, or nesting deeper than the parser's
    recursion limit. A leading UTF-8 byte order mark is ignored (RFC 8259 §8.1 allows it).
    Text that is not JSON at all passes: the framework's own 422 (``json_invalid``) says
    where. Costs a second parse of each JSON body (tens of µs for an order's)."""
    unmarked = body.removeprefix(codecs.BOM_UTF8)
    try:
        text = unmarked.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = exc.start + len(body) - len(unmarked)
        raise UnreadableBody(f"the body is not UTF-8: byte {body[at]:#04x} at offset {at}", 415) from None
    if "\x00" in text:
        raise UnreadableBody("the body is not UTF-8 JSON: it holds NUL bytes (UTF-16 or UTF-32?)", 415)
    try:
        json.loads(text, object_pairs_hook=once_each)
    except NameGivenTwice as exc:
        raise UnreadableBody(str(exc)) from None
    except json.JSONDecodeError:
        return
    except RecursionError:
        raise UnreadableBody("the body nests arrays and objects too deeply to be read") from None
    except ValueError:  # the limit of int() (CVE-2020-10735)
        raise UnreadableBody(
            f"a number in the body has more than {sys.get_int_max_str_digits()} digits"
        ) from None


def _is_json(content_type: str | None) -> bool:
    """Is this ``Content-Type`` JSON in UTF-8 (``application/json`` or ``…+json``; RFC 8259
    §8.1: JSON exchanged between systems is UTF-8)? Parsed by the standard library's MIME
    header parser, as FastAPI parses it to decide whether a body is JSON."""
    if not content_type:
        return False
    parsed = email.message.Message()
    parsed["content-type"] = content_type
    subtype = parsed.get_content_subtype()
    if parsed.get_content_maintype() != "application" or not (subtype == "json" or subtype.endswith("+json")):
        return False
    return parsed.get_content_charset() in (None, "utf-8", "utf8")


def _too_large(limit: int, announced: str | None = None) -> dict[str, str]:
    """The Problem of a body over the limit (413 ``body_too_large``)."""
    if announced is not None:
        detail = f"the body is {announced} bytes; at most {limit} bytes are accepted"
    else:  # counted as it arrived
        detail = f"the body is larger than {limit} bytes, the most accepted"
    return {"detail": detail, "reason": "body_too_large"}


#: The answer to a request under an Idempotency-Key that an earlier request under it got
#: (``true``; Stripe's header): the order service's ``POST /orders`` and the payment
#: provider's charges and refunds send it.
IDEMPOTENT_REPLAYED = "Idempotent-Replayed"


class _ParserSaying:
    """httptools' parser, keeping why it last refused bytes: uvicorn answers every refusal
    alike and drops the parser's words (``HeadLimitedProtocol.send_400_response``)."""

    __slots__ = ("_parser", "refused")

    def __init__(self, parser: httptools.HttpRequestParser) -> None:
        self._parser = parser
        self.refused = ""

    def feed_data(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.refused = str(exc)
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)


#: The 400's words for a request whose ``Transfer-Encoding`` does not end in ``chunked``
#: alone (``identity``, ``gzip``, ``chunked, gzip``, ``chunked;x=1``): the parser refuses
#: it before the guard's 501 could (``RequestGuard``), and it was worded as a body whose
#: chunks could not be read (an attack trial). The parser (llhttp) is stricter than RFC
#: 9110 §5.6.1 at the end of the list: ``chunked,`` is refused (``, chunked`` is read), and
#: the words say so, where they said it did not end in chunked (two attack trials); so is
#: ``chunked, chunked`` (RFC 9112 §6.1: chunked at most once) and ``chunked<TAB>``.
TRANSFER_CODING_NOT_CHUNKED = (
    "the request's Transfer-Encoding does not end in the word chunked, once and alone (no"
    " parameter, nothing after it, not even an empty list element or a tab; chunked not twice),"
    " so the length of its body cannot be told here (RFC 9112 §6.3): send it chunked alone, or"
    " with a Content-Length"
)
#: ... and for one with both a ``Transfer-Encoding`` and a ``Content-Length``.
TRANSFER_CODING_AND_LENGTH = (
    "the request has both a Transfer-Encoding and a Content-Length, which may say two"
    " lengths (RFC 9112 §6.3): send one of them"
)
#: What the parser (llhttp) says of each, as ``_ParserSaying.refused`` keeps it.
_PARSER_SAYS = {
    "Request has invalid `Transfer-Encoding`": TRANSFER_CODING_NOT_CHUNKED,
    "Invalid `Transfer-Encoding` header value": TRANSFER_CODING_NOT_CHUNKED,
    "Content-Length can't be present with Transfer-Encoding": TRANSFER_CODING_AND_LENGTH,
}


#: What uvicorn logs, as a warning, of a request its parser stopped at.
_UVICORN_INVALID = "Invalid HTTP request received."


class _NotInvalid:
    """uvicorn's error log, as ``HeadLimitedProtocol`` gives it to uvicorn: without its
    warning "Invalid HTTP request received." of a request the protocol refused for a reason
    of its own (``refused_of_its_own``), which it logs in its own words. uvicorn called a
    valid WebSocket handshake invalid, each time one was refused (a review)."""

    def __init__(self, log: logging.Logger, protocol: HeadLimitedProtocol) -> None:
        self._log, self._protocol = log, protocol

    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None:
        if msg == _UVICORN_INVALID and self._protocol.refused_of_its_own():
            return
        self._log.warning(msg, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


class HeadLimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bound on a request's head (its request line and
    headers, ``max_head_bytes``): httptools has none, and reads a header of any length
    into memory before anything else sees it (an attack trial: a 100 MB header was a
    200, after ~100 MB and 15 s of one event loop). Bytes are counted as they arrive
    while a head is incomplete; past the bound the client gets 431 ``headers_too_large``
    and the connection closes. The close lingers (RFC 9112 §9.6): what the client still
    sends is read and dropped, up to ``LINGER_BYTES`` or ``LINGER_SECONDS``, so a client
    busy sending its head still reads the answer instead of a reset connection. Bytes that
    are not HTTP (a raw ``0xff`` in the path, a chunk's size that is not hexadecimal) are a
    400 ``invalid_http_request`` with a ``Problem`` body too, where uvicorn answered in
    plain text; a ``Transfer-Encoding`` that does not end in ``chunked`` alone, which the
    parser refuses, is a 400 that says so (``TRANSFER_CODING_NOT_CHUNKED``). A request to
    switch protocols (``Connection: upgrade`` with ``Upgrade``: a WebSocket handshake,
    ``h2c``; ``CONNECT``) is a 400 ``upgrade_not_supported``. A head must also arrive in
    time (``head_timeout``: 408). A header's value loses the white space after it, as
    RFC 9110 §5.5 says (httptools keeps it). A chunked body's trailers are header lines
    too, bounded as a head is (an attack trial: 100 MB of one was read). A request answered
    before its body was read gets no second answer when its body turns out not to be HTTP:
    the connection closes. ``limit_head`` makes the class with its bounds
    (``HTTP_MAX_HEADER_BYTES``, ``HTTP_HEADER_TIMEOUT_SECONDS``)."""

    max_head_bytes = 64 * 1024
    #: Seconds a request line and headers may take to arrive, from the connection's start
    #: or the request's first byte (longer: 408 ``request_timeout``, and the connection
    #: closes): a connection that sent nothing, or a header line every few seconds, was
    #: held for ever (a second attack trial). Between requests, keep-alive's own timeout.
    head_timeout = 30.0
    _head_timer: asyncio.TimerHandle | None = None
    #: After a 431, how much more is read and dropped (bytes), and for how long (seconds).
    LINGER_BYTES = 1024 * 1024
    LINGER_SECONDS = 2.0
    _head_bytes = 0
    _in_head = False
    _dropped: int | None = None  # bytes dropped since the 431; None before one
    _head_too_large = False
    _bad_target = False  # an absolute-form target of another scheme, or with user information
    _upgrade_refused = False  # a request to switch protocols (Upgrade, CONNECT)
    _refusal_due: tuple[int, str, str] | None = None  # once the answers before it are sent
    _close_after_answer = False  # a request answered, its body then refused: no second answer
    #: after a chunk's size line, before its data: where the last chunk's trailers come
    #: (header lines httptools keeps in memory, whatever their length)
    _after_chunk_size = False
    _trailer_bytes = 0
    #: The ``Server`` header of the refusals it answers itself: the app's answers name the
    #: service (``ServiceIdentity``), and these did not (an attack trial). ``limit_head``.
    server_name: bytes | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.parser = _ParserSaying(self.parser)  # type: ignore[assignment]
        self.logger = _NotInvalid(self.logger, self)  # type: ignore[assignment]

    def refused_of_its_own(self) -> bool:
        """Whether the parser stopped because a callback here refused the request for a
        reason of its own (a head too large, a protocol switch, a target of another scheme),
        which ``send_400_response`` answers and names."""
        return self._head_too_large or self._upgrade_refused or self._bad_target

    @staticmethod
    def problem(detail: str, reason: str) -> Mapping[str, Any]:
        """The body of a refusal it answers itself: the services' ``Problem``; the payment
        provider's simulator has its own shape (``limit_head``)."""
        return {"detail": detail, "reason": reason}

    def _refused_answer(self, detail: str, reason: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """The headers and body of a refusal it answers itself (``problem``), the
        connection closed after it."""
        body = json.dumps(self.problem(detail, reason), separators=(",", ":")).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            (b"connection", b"close"),
            _NO_STORE,
            *([(b"server", self.server_name)] if self.server_name else []),
        ]
        return headers, body

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes, self._in_head = 0, True
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self._dropped is not None:
            return
        if self._answering():  # reading waits for an answer in progress: so does the head
            self._arm_head_timer()
            return
        self._refuse(
            408,
            f"the request line and headers did not arrive within {self.head_timeout:g} s",
            "request_timeout",
        )

    def on_chunk_header(self) -> None:
        self._after_chunk_size, self._trailer_bytes = True, 0

    def on_chunk_complete(self) -> None:
        self._after_chunk_size = False

    def on_body(self, body: bytes) -> None:
        self._after_chunk_size = False
        super().on_body(body)

    def on_header(self, name: bytes, value: bytes) -> None:
        # httptools drops the white space before a field value but keeps what follows it;
        # a field value has neither (RFC 9110 §5.5), so ``Last-Event-ID: 5 `` is ``5``
        super().on_header(name, value.rstrip(b" \t"))

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        # a head that arrived in one piece was not counted as it came: its parsed size is
        # the request line's target and the header lines' (a few bytes less than sent)
        if len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers) > self.max_head_bytes:
            self._head_too_large = True
            raise ValueError("the head is too large")  # httptools stops; uvicorn answers 400 …
        if self.parser.should_upgrade():
            # the parser takes every byte after an upgrade's head as the new protocol's,
            # which uvicorn dropped (a body in the same packet) or read as a new request (a
            # body sent later: an order placed from inside another request's body, a
            # re-check attack trial); no protocol here is one to switch to
            self._upgrade_refused = True
            raise ValueError("a protocol switch this server does not make")  # uvicorn answers 400 …
        self._host_from_absolute_form()
        # past every refusal raised here: one of them is of a request whose cycle does not
        # exist yet, refused in its turn as a head is (``_refuse``), not in the place of
        # the request before it (a re-check trial: a pipelined GET got the 400 and its
        # route never ran)
        self._in_head = False
        super().on_headers_complete()

    def _host_from_absolute_form(self) -> None:
        """A request target in absolute form (``GET http://host:port/path``) names the host
        the request is for, and the ``Host`` header is ignored (RFC 9112 §3.2.2): its host
        replaces the ``Host`` here, so the allow-list (``HostAllowList``) decides on it,
        and the target becomes the origin form uvicorn reads (an empty path is ``/``).
        uvicorn took the path and kept ``Host``: an attack trial's ``GET
        http://evil.example/orders`` with an allowed ``Host`` was served. A scheme other
        than http(s), or user information in the target (RFC 9110 §4.2.4: an error), is a
        400; a request without exactly one ``Host`` keeps what it sent, which the
        allow-list refuses (RFC 9112 §3.2)."""
        if self.url[:1] in (b"/", b"*"):  # origin form, asterisk form: nothing to do
            return
        try:
            target = httptools.parse_url(self.url)
        except httptools.HttpParserInvalidURLError:
            return  # uvicorn's own parse answers it (400)
        if target.host is None:
            return
        if (target.schema or b"").lower() not in (b"http", b"https") or target.userinfo is not None:
            self._bad_target = True
            raise ValueError("a request target this server does not take")  # uvicorn answers 400 …
        self.url = (target.path or b"/") + (b"?" + target.query if target.query else b"")
        if sum(1 for name, _ in self.headers if name == b"host") != 1:
            return
        host = b"[" + target.host + b"]" if b":" in target.host else target.host
        if target.port is not None:
            host += b":%d" % target.port
        # in place: the request's scope holds this very list
        self.headers[:] = [(name, value) for name, value in self.headers if name != b"host"]
        self.headers.append((b"host", host))

    def data_received(self, data: bytes) -> None:
        if self._dropped is not None:
            self._dropped += len(data)
            if self._dropped > self.LINGER_BYTES:
                self.transport.close()
            return
        super().data_received(data)
        if self._after_chunk_size and not self.transport.is_closing():
            # the last chunk's trailers, counted as a head is (a chunk's data ends this)
            self._trailer_bytes += len(data)
            if self._trailer_bytes > self.max_head_bytes:
                self._after_chunk_size = False
                self._refuse_head("the request's trailers")
            return
        if not self._in_head or self.transport.is_closing():
            return
        # all of it counts (a chunk may end an earlier request too): over by a chunk at most
        self._head_bytes += len(data)
        if self._head_bytes > self.max_head_bytes:
            self._refuse_head()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes httptools cannot parse (or a callback refused), in
        plain text there: a ``Problem`` here, as every other refusal."""
        if self._head_too_large:  # raised by on_headers_complete: a 431
            self._refuse_head()
            return
        if self._upgrade_refused:  # raised by on_headers_complete
            self.logger.info("refused a request to switch protocols: 400 upgrade_not_supported")
            self._refuse(
                400,
                "the request asks to switch protocols (Connection: upgrade with Upgrade, or"
                " CONNECT), which this server does not: send it without them",
                "upgrade_not_supported",
            )
            return
        if self._bad_target:  # raised by _host_from_absolute_form
            self.logger.info("refused a request target of another scheme or with user information: 400")
            self._refuse(
                400,
                "the request target names another scheme than http(s), or user information",
                "invalid_http_request",
            )
            return
        said = _PARSER_SAYS.get(getattr(self.parser, "refused", ""))
        if said is not None:
            self._refuse(400, said, "invalid_http_request")
            return
        what = "its body's chunks" if self._reading_body() else "its request line or a header"
        self._refuse(400, f"the request is not valid HTTP/1.1: {what} cannot be read", "invalid_http_request")

    def _refuse_head(self, what: str = "the request line and headers") -> None:
        """431 ``headers_too_large``: ``what`` (a head, or a chunked body's trailers) passed
        ``max_head_bytes``."""
        self.logger.warning("%s passed %d bytes; answered 431", what, self.max_head_bytes)
        self._refuse(
            431, f"{what} are larger than {self.max_head_bytes} bytes, the most accepted", "headers_too_large"
        )

    def _refuse(self, status: int, detail: str, reason: str) -> None:
        """Answer ``status`` with a ``Problem`` and close the connection, lingering; after
        the answers of the requests before it on the connection (pipelined), which are
        still to come (a second attack trial: the first request's answer was lost, and a
        write after the end of the connection raised in the service)."""
        reading_body = self._reading_body()
        in_head, self._in_head, self._dropped = self._in_head, False, 0
        if reading_body:
            cycle = self.cycle
            assert cycle is not None
            if cycle.response_started:
                # answered before its body was read (a 415): no second answer (an attack
                # trial got its 415, then a 400) — the connection ends with the first
                self._close_after_answer = True
                if cycle.response_complete:
                    self.transport.close()
                return
            # the rest of the body will never be read, and the route waiting for it waited
            # until the body's timeout (an attack trial: 30 s, then 408): it hears the
            # client is gone (what it answers is dropped), and the client is answered now
            cycle.disconnected = True
            cycle.message_event.set()
            self._write_refusal(status, detail, reason)
            return
        if not in_head and self._stand_in(status, detail, reason):
            return
        if self._answering():
            self._refusal_due = (status, detail, reason)
            return
        self._write_refusal(status, detail, reason)

    def _stand_in(self, status: int, detail: str, reason: str) -> bool:
        """When the refused request is one waiting behind another on the connection
        (pipelined) — its head was read, its framing or body was not — it is answered the
        refusal in its turn, and its route never runs: it ran, and the request had two
        answers, the route's and the refusal (an attack trial: 501 then 400), or the route
        waited 30 s for a body the parser would never give it (408). True if so."""
        for i, (cycle, _) in enumerate(self.pipeline):
            if cycle is self.cycle:
                self.pipeline[i] = (cycle, _refusal_app(status, *self._refused_answer(detail, reason)))  # type: ignore[assignment]
                return True
        return False

    def _reading_body(self) -> bool:
        """The bytes refused are the running request's own body (its chunks, its
        trailers): the parser is past its head, and its message is not complete."""
        cycle = self.cycle
        return cycle is not None and cycle.more_body and not self.pipeline and not self._in_head

    def _answering(self) -> bool:
        return bool(self.pipeline) or (self.cycle is not None and not self.cycle.response_complete)

    def on_response_complete(self) -> None:
        if self._close_after_answer:
            self.transport.close()
            return
        super().on_response_complete()
        if self._refusal_due is not None and not self._answering():
            if self.timeout_keep_alive_task is not None:
                self.timeout_keep_alive_task.cancel()
            due, self._refusal_due = self._refusal_due, None
            self._write_refusal(*due)

    def _write_refusal(self, status: int, detail: str, reason: str) -> None:
        if self.transport.is_closing():
            return
        headers, body = self._refused_answer(detail, reason)
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[status],
                    *(k + b": " + v + b"\r\n" for k, v in [*self.server_state.default_headers, *headers]),
                    b"\r\n",
                    body,
                ]
            )
        )
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(self.LINGER_SECONDS, self.transport.close)


def _refusal_app(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> ASGIApp:
    """An ASGI app that answers any request ``status`` with these headers and body, a
    refusal that closes the connection (``HeadLimitedProtocol._stand_in``)."""

    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return refuse


#: The body of a refusal from its detail and reason (``HeadLimitedProtocol.problem``).
ProblemShape = Callable[[str, str], Mapping[str, Any]]


def limit_head(
    max_head_bytes: int,
    head_timeout: float = HeadLimitedProtocol.head_timeout,
    *,
    name: str | None = None,
    problem: ProblemShape | None = None,
) -> type[HeadLimitedProtocol]:
    """``HeadLimitedProtocol`` bounded at ``max_head_bytes`` and ``head_timeout`` seconds,
    its own refusals naming the server ``name`` and shaped by ``problem`` (default: the
    services' ``Problem``), for ``uvicorn.Config(http=…)``."""
    bounds: dict[str, Any] = {"max_head_bytes": max_head_bytes, "head_timeout": head_timeout}
    if name is not None:
        bounds["server_name"] = name.encode()
    if problem is not None:
        bounds["problem"] = staticmethod(problem)
    return type("HeadLimitedProtocol", (HeadLimitedProtocol,), bounds)


#: Seconds an idle keep-alive connection is kept open: longer than clients keep theirs
#: (httpx: 5 s, uvicorn's own default too), so a client never sends a request on a
#: connection the server is closing at that moment (an attack trial's load met a few
#: ``ReadError``s so).
KEEP_ALIVE_SECONDS = 20


def server_options(
    max_head_bytes: int,
    head_timeout: float = HeadLimitedProtocol.head_timeout,
    *,
    name: str | None = None,
    problem: ProblemShape | None = None,
) -> dict[str, Any]:
    """The ``uvicorn.Config`` options every HTTP server here shares: httptools with its
    head bounded and its own refusals named and shaped (``limit_head``),
    ``KEEP_ALIVE_SECONDS``, no access log, no lifespan."""
    return {
        "http": limit_head(max_head_bytes, head_timeout, name=name, problem=problem),
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        "log_config": None,
        "access_log": False,
        "lifespan": "off",
        "server_header": False,  # the service names itself instead (ServiceIdentity)
        # no route is a WebSocket: a handshake is refused as any request to switch
        # protocols is (HeadLimitedProtocol: 400 upgrade_not_supported, named and not
        # stored); with a WebSocket library, uvicorn answered one the app refused, or found
        # invalid, itself: a bare 403 or 400, no Server, no Cache-Control (attack trials)
        "ws": "none",
    }


#: Set in the scope by ``HeadAsGet`` on a HEAD it passes on as a GET.
_HEAD = "saga.head"


class HeadAsGet:
    """HEAD answered as the GET of the same resource without its content (RFC 9110 §9.3.2:
    a server MUST support HEAD where it supports GET; FastAPI, unlike Starlette's own
    routes, registers no HEAD for a GET route, so a probe or a cache's HEAD got a 405).
    Status and headers are the GET's, ``Content-Length`` included; the answer ends after
    its headers, and the app then reads a disconnect, so a stream (the live feed) is not
    left running for nobody. Pure ASGI, outermost: everything inside sees a GET (the
    authorization table, the routes); a 405 names HEAD again (``create_app``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        answered = False

        async def headers_only(message: Message) -> None:
            nonlocal answered
            if answered or message["type"] != "http.response.start":
                return  # the content, or anything after the answer: not sent
            await send(message)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            answered = True

        async def until_answered() -> Message:
            return {"type": "http.disconnect"} if answered else await receive()

        await self.app({**scope, "method": "GET", _HEAD: True}, until_answered, headers_only)


#: Set in the scope by ``HostAllowList`` when Starlette's check let the request in.
_HOST_ADMITTED = "saga.host_admitted"


async def _discard(_message: Message) -> None:
    """A ``send`` that sends nothing: the allow-list's own refusal is not the answer."""


class HostAllowList:
    """The ``Host`` allow-list (``HTTP_ALLOWED_HOSTS``; DNS rebinding), in front of every
    route (pure ASGI). Starlette's ``TrustedHostMiddleware`` decides; its refusal (a plain
    text "Invalid host header") is answered here as every other error is, a ``Problem``:
    400 ``invalid_host`` for a request whose ``Host`` is missing, repeated (RFC 9112 §3.2),
    unparsable or not allowed.
    The 400 is in every operation's OpenAPI document (``_document_common_answers``)."""

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]) -> None:
        self.app = app
        self._decide = TrustedHostMiddleware(
            self._admit, allowed_hosts=list(allowed_hosts), www_redirect=False
        )
        #: the IPv6 addresses allowed (``::1`` or ``[::1]``): Starlette cuts a Host at its
        #: first colon, so it can match no IPv6 literal, and this list decides those
        self._ipv6 = {a for a in map(_ipv6_address, allowed_hosts) if a is not None}
        self._any = "*" in allowed_hosts  # Starlette's wildcard: every Host, IPv6 or not

    @staticmethod
    async def _admit(scope: Scope, _receive: Receive, _send: Send) -> None:
        scope[_HOST_ADMITTED] = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hosts = [value for name, value in scope["headers"] if name == b"host"]
        port_ok = len(hosts) != 1 or _port_ok(hosts[0].decode("latin-1"))
        if len(hosts) == 1 and port_ok:
            literal = None if self._any else _ipv6_literal(hosts[0].decode("latin-1"))
            if literal is not None:
                scope[_HOST_ADMITTED] = literal in self._ipv6
            else:
                await self._decide(scope, receive, _discard)  # answers nothing itself: _discard
        if scope.pop(_HOST_ADMITTED, False):
            await self.app(scope, receive, send)
            return
        if len(hosts) > 1:  # RFC 9112 §3.2: a server MUST answer 400
            detail = f"{len(hosts)} Host headers: a request names one host"
        elif hosts:
            shown = printable(hosts[0].decode("latin-1"), 100)
            if port_ok:
                detail = f"the Host {shown!r} is not one this service answers to"
            else:
                detail = f"the Host {shown!r} names no port there can be (digits, 0 to 65535)"
        else:
            detail = "no Host header: a request names the host it is for"
        refusal = {"detail": detail, "reason": "invalid_host"}
        for message in _json_answer(400, refusal):
            await send(message)


def _port_ok(host: str) -> bool:
    """Whether a ``Host``'s port, if it names digits for one, is one there can be: at most
    65,535. Starlette's check (and ``_ipv6_literal``) take any digits (RFC 3986 §3.2.3's
    ``*DIGIT``), and ``127.0.0.1:99999`` was served (an attack trial); what is not digits
    they refuse themselves."""
    port = host.rpartition("]")[2] if host.startswith("[") else host
    digits = port.rpartition(":")[2] if ":" in port else ""
    significant = digits.lstrip("0") or "0"  # int() of past 4,300 digits raises
    return not (digits.isascii() and digits.isdigit()) or (
        len(significant) <= 5 and int(significant) <= 65_535
    )


def _ipv6_address(host: str) -> ipaddress.IPv6Address | None:
    """The address of an allow-list entry that is an IPv6 address, bracketed or not."""
    try:
        return ipaddress.IPv6Address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return None


def _ipv6_literal(host: str) -> ipaddress.IPv6Address | None:
    """The address of a ``Host`` that is an IPv6 literal with or without a port
    (``[::1]``, ``[::1]:8001``; RFC 3986 §3.2.2: always in brackets), else None. Spellings
    of one address are one (``[0:0:0:0:0:0:0:1]`` is ``[::1]``)."""
    if not host.startswith("["):
        return None
    inside, bracket, rest = host[1:].partition("]")
    port = rest.removeprefix(":")
    if not bracket or (rest and not (rest.startswith(":") and port.isascii() and port.isdigit())):
        return None
    try:
        return ipaddress.IPv6Address(inside)
    except ValueError:
        return None


def _json_answer(
    status: int, body: Mapping[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()
) -> list[Message]:
    content = json.dumps(body, separators=(",", ":")).encode()  # as the routes' answers
    return [
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(content)),
                *headers,
            ],
        },
        {"type": "http.response.body", "body": content},
    ]


def challenge_text(detail: str) -> str:
    """``detail`` as an ``error_description`` of a ``WWW-Authenticate`` challenge may carry
    it: RFC 6750 §3 allows the characters %x20-21 / %x23-5B / %x5D-7E only, so a quote, a
    backslash or anything outside printable ASCII is a ``?``. The detail can hold a token's
    own words (PyJWT's "Unsupported critical extension: <name>"): unfiltered, a non-Latin-1
    character there made the 401 a 500 (an attack trial), and a quote let the token add
    parameters to the challenge."""
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in detail)


def authenticator(
    verifier: auth.TokenVerifier | None, metrics_public: bool
) -> Callable[[Request], Awaitable[None]]:
    """The dependency every route runs first: the route is looked up in
    ``saga_kit.auth.POLICY``; unless it is public, the bearer token is verified (401
    ``missing_token`` / ``invalid_token`` with ``WWW-Authenticate``, RFC 6750 §3) and the
    role checked (403 ``forbidden``). On a public route in ``saga_kit.auth.TOKEN_OPTIONAL``
    a token sent is verified the same way (one not valid is a 401, not ignored; an empty
    ``Authorization`` header is no token, as on every route); on the other public routes
    (the liveness probe, the API docs) a token is not looked at. The caller is left in
    ``request.state.principal`` for the routes (``PrincipalDep``): the token's,
    ``saga_kit.auth.ANONYMOUS`` (no role) on a public route without one, and
    ``saga_kit.auth.UNAUTHENTICATED`` (an operator) on every route with ``verifier``
    None (authentication off)."""

    async def authenticate(request: Request) -> None:
        path = getattr(request.scope.get("route"), "path", None)
        if verifier is None:
            request.state.principal = auth.UNAUTHENTICATED
            return
        request.state.principal = auth.ANONYMOUS
        if path is None:
            return
        method = request.method  # a HEAD is a GET here (HeadAsGet)
        access = auth.access_of(method, path, metrics_public=metrics_public)
        # on a public route, only a token sent is verified: an empty header is none
        if access is not auth.Access.PUBLIC or (
            (method, path) in auth.TOKEN_OPTIONAL
            and auth.credentials(request.headers.getlist("authorization"))
        ):
            principal = await verifier.principal_of(request.headers.getlist("authorization"))
            # known before the role check: a refused call is audited under its caller
            request.state.principal = principal
            if not principal.allowed(access):
                raise StarletteHTTPException(403, f"{method} {path} needs the operator role")

    return authenticate


async def get_principal(request: Request) -> auth.Principal:
    principal: auth.Principal = request.state.principal
    return principal


#: The caller (``saga_kit.auth.Principal``): routes with ``OWN`` access check with it that
#: the resource is the caller's.
PrincipalDep = Annotated[auth.Principal, Depends(get_principal)]


async def get_database(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


DatabaseDep = Annotated[Database, Depends(get_database)]


async def get_settings(request: Request) -> ServiceSettings:
    settings: ServiceSettings = request.app.state.settings
    return settings


SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]


def _upper_case(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


#: A query value naming one of a fixed set of capitalised words (an order's status, a dead
#: letter's), taken in any case: ``?status=approved`` is ``APPROVED``. The OpenAPI document
#: still lists the capitalised values; anything else is still a 422 listing them.
AnyCase = BeforeValidator(_upper_case)


class Liveness(BaseModel):
    status: Literal["ok"]


class Degraded(Exception):
    """Raised by a readiness check that passes but works around a failure (e.g. the payment
    provider's circuit breaker is open: payments wait): the service stays ready (200) and
    the body says ``degraded`` with the reason."""


class NotReady(Exception):
    """Raised by a readiness check that fails, its message the reason as an operator reads
    it (``outbox relay is retrying: …``): said alone, where another exception is said with
    its type (``TimeoutError: …``; an operator trial read ``RuntimeError: outbox relay …``)."""


class CheckResult(BaseModel):
    ok: bool
    #: Why the check failed (absent when it passed).
    error: str | None = None
    #: Passed, but working around a failure: what and since when (absent otherwise).
    degraded: str | None = None


class Readiness(BaseModel):
    #: ``degraded``: every check passed, but one works around a failure (still 200).
    status: Literal["ready", "degraded", "not_ready"]
    #: ``database``, ``broker``, ``consumers`` and ``outbox_relay``.
    checks: dict[str, CheckResult]


async def _checked(check: Check, seconds: float) -> CheckResult:
    """One readiness check's result, within ``seconds``. The checks run side by
    side: one after another, a database that does not answer held the probe for 12 s
    (its checks' timeouts added up). A check that does not end in time is cancelled and
    left, not waited for (``saga_kit.deadlines``)."""
    try:
        await deadlines.within(check(), seconds)
    except deadlines.NoAnswer as late:
        return CheckResult(ok=False, error=str(late))
    except Exception as exc:
        return _failed_check(exc)
    return CheckResult(ok=True)


def _failed_check(exc: Exception) -> CheckResult:
    """The result of a check that raised ``exc``: ``Degraded`` passes, with the reason."""
    if isinstance(exc, Degraded):
        return CheckResult(ok=True, degraded=printable(str(exc), 1000))
    if isinstance(exc, NotReady):
        return CheckResult(ok=False, error=printable(str(exc), 1000))
    # a failing check is the answer, not an error: its first line, which says what failed;
    # the driver's hints and SQLAlchemy's "(Background on this error at: …)" after it made
    # sagactl health ~90 lines at 80 columns while the database was away (an operator trial)
    said = described(exc).strip().splitlines()
    return CheckResult(ok=False, error=printable(said[0] if said else type(exc).__name__, 1000))


def _withheld(result: CheckResult) -> CheckResult:
    """``result`` as a caller who is not an operator sees it: whether it passed and whether
    it is degraded, not why."""
    return CheckResult(
        ok=result.ok,
        error=auth.WITHHELD if result.error is not None else None,
        degraded=auth.WITHHELD if result.degraded is not None else None,
    )


def health_router(checks: Mapping[str, Check], timeout: float = 2.0) -> APIRouter:
    """``/health/live`` and ``/health/ready``: public (a probe carries no token), the
    readiness checks' reasons given to an operator only — Spring Boot's ``show-details:
    when-authorized``. The caller is the ``authenticator``'s (``PrincipalDep``): an app
    that includes this router runs it (with no verifier when it has no authentication:
    everyone is an operator then)."""
    router = APIRouter(tags=["health"])

    @router.get("/health/live", summary="Is the process alive", response_model=Liveness)
    async def live() -> Liveness:
        """200 while the process runs and its event loop answers."""
        return Liveness(status="ok")

    @router.get(
        "/health/ready",
        summary="Is the service ready for work",
        response_model=Readiness,
        responses={
            503: {
                "model": Readiness,
                "description": "a check failed; the body says which, and to an operator why",
            },
        },
    )
    async def ready(principal: PrincipalDep) -> JSONResponse:
        """200 when the database, broker, consumers and outbox relay are healthy, else 503;
        the body names each check, and a failing one its error. 200 with status
        ``degraded`` when a check passes by working around a failure (the payment
        service's provider circuit open: payments wait), with the reason. Public, but the
        reasons are given only with an operator's bearer token (they may name internals:
        a socket path, a host); others read ``saga_kit.auth.WITHHELD`` in their place. A
        token that is not valid is a 401, as on every route."""
        operator = principal.operator
        answers = await asyncio.gather(*(_checked(check, timeout) for check in checks.values()))
        results = dict(zip(checks, answers if operator else map(_withheld, answers), strict=True))
        ok = all(r.ok for r in results.values())
        degraded = any(r.degraded for r in results.values())
        body = Readiness(status=("degraded" if degraded else "ready") if ok else "not_ready", checks=results)
        return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if ok else 503)

    return router


def metrics_router(render: Callable[[], Awaitable[bytes]]) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {METRICS_CONTENT_TYPE: {}}}},
    )
    async def metrics() -> Response:
        """The service's metrics in the Prometheus text exposition format (version 0.0.4):
        events consumed and produced, batches, outbox backlog, consumer lag, dead letters,
        scheduled jobs."""
        return Response(await render(), media_type=METRICS_CONTENT_TYPE)

    return router


def no_route(service: str, own: set[tuple[str, str]]) -> Callable[[str, str], str]:
    """The 404 detail for a request no route of ``service`` matched, a function of the
    method and path. A route of another service (one of ``saga_kit.auth.POLICY``'s, which
    lists every service's) is named as such: ``PUT /accounts/ann`` sent to the inventory
    service said only "Not Found". ``own``: ``service``'s (method, path template) pairs."""
    elsewhere = [(method, compile_path(path)[0]) for method, path in auth.POLICY if (method, path) not in own]

    def detail(method: str, path: str) -> str:
        said = f"{service} has no route {method} {printable(path, 200)}"
        if any(m == method and regex.match(path) for m, regex in elsewhere):
            said += ": that is another service's route (make run prints each service's URL)"
        return f"{said}; this service's routes are listed at /docs"

    return detail


def create_app(
    name: str,
    title: str,
    db: Database,
    settings: ServiceSettings,
    routers: list[APIRouter],
    checks: Mapping[str, Check],
    metrics: Callable[[], Awaitable[bytes]],
    inner_middleware: Sequence[Callable[[ASGIApp], ASGIApp]] = (),
) -> FastAPI:
    """The app of service ``name``: health and metrics routes, ``routers``,
    authentication (every route in ``saga_kit.auth.POLICY``), then the middleware:
    ``inner_middleware`` (ASGI classes, nearest the routes: they see the route and the
    caller), trace-id headers, the cross-origin guard, CORS, the Host allow-list, the
    service's name on every answer and its 421 (``ServiceIdentity``), HEAD as
    GET. A path no route matches is a 404 that says so, and whether another service has
    that route (``no_route``)."""
    verifier = settings.token_verifier()
    if verifier is None:
        log.warning("authentication is off (no AUTH_JWKS_FILE or AUTH_JWKS_URL): every request is let in")
    routers = [health_router(checks, settings.readiness_check_seconds), metrics_router(metrics), *routers]
    # a route the authorization table does not list stops the service here (fail closed)
    routes = [r for router in routers for r in router.routes if isinstance(r, APIRoute)]
    auth.check_policy((method, r.path) for r in routes for method in r.methods or ())
    #: each route's path and methods, for the Allow header of a 405
    allow_list = [(r.path_regex, r.methods or set()) for r in routes]
    unmatched = no_route(name, {(method, r.path) for r in routes for method in r.methods or ()})
    authenticate = authenticator(verifier, settings.auth_metrics_public)
    app = FastAPIOffline(
        title=title,
        dependencies=[Depends(authenticate)],
        version="1.0.0",
        static_url=DOCS_ASSETS,
        # Swagger UI would otherwise ask a public validator about the document
        swagger_ui_parameters={"validatorUrl": None},
        # The framework's own OpenTelemetry server span is the request's one span (it
        # continues an incoming traceparent); probes and scrapes are left out.
        telemetry={
            "tracing": True,
            "operation_spans": False,
            "metrics": False,
            "logs": False,
            "exclude": _untraced,
        },
    )
    app.state.db = db
    app.state.settings = settings
    # who a caller is, for the audit trail of a call refused before any route's
    # authentication ran (saga_kit.audit.AuditTrail)
    app.state.identify = verifier.principal_of if verifier is not None else None
    for router in routers:
        app.include_router(router)

    _document_common_answers(app, settings.auth_metrics_public)
    for middleware in inner_middleware:
        app.add_middleware(middleware)
    # outside the routes' own middleware (the audit trail), inside the body's guard: the
    # body's wait is the guard's (408), the service's own waiting this one's (503)
    app.add_middleware(AnswerDeadline, seconds=settings.http_answer_timeout_seconds)
    # A body larger than the limit is refused with 413 as it arrives (Starlette's body
    # limit), inside RequestGuard, which refuses one announced larger before it is read:
    # FastAPI's own max_body_size sits outside every middleware and answers the announced
    # case in plain text, which no OpenAPI document describes.
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=settings.http_max_body_bytes)
    app.add_middleware(ExtraHeaders)
    app.add_middleware(
        RequestGuard,
        allowed_origins=settings.http_allowed_origins,
        max_body_size=settings.http_max_body_bytes,
        body_timeout=settings.http_body_timeout_seconds,
    )
    if settings.http_allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.http_allowed_origins,
            allow_methods=["GET", "POST", "PUT"],
            allow_headers=["Content-Type", "Idempotency-Key", "Authorization"],
            expose_headers=["Location", "X-Trace-Id", "Retry-After"],
        )
    app.add_middleware(HostAllowList, allowed_hosts=settings.http_allowed_hosts)
    app.add_middleware(ServiceIdentity, name=name)
    app.add_middleware(HeadAsGet)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """An error answer has the shape of every other: ``Problem``. A body FastAPI cannot
        even read (e.g. not UTF-8: its 400 "error parsing the body") is an invalid request
        like any other invalid body: 422 ``invalid_request``, where and why."""
        if exc.status_code == 400 and exc.detail == UNREADABLE_BODY:
            refused = await refused_caller(request)
            if refused is not None:
                return refused
            if broke_off(exc):
                return JSONResponse(
                    {"detail": BODY_BROKE_OFF, "reason": "invalid_http_request"}, status_code=400
                )
            cause = exc.__cause__
            if isinstance(cause, UnreadableBody) and cause.status == 415:
                return JSONResponse(
                    {"detail": str(cause), "reason": "unsupported_media_type"}, status_code=415
                )
            if isinstance(cause, UnreadableBody):
                why = str(cause)
            elif cause:
                why = f"the body could not be read ({type(cause).__name__})"
            else:
                why = "the body could not be read"
            return JSONResponse(
                {
                    "detail": [{"loc": ["body"], "msg": why, "type": "body_unreadable"}],
                    "reason": "invalid_request",
                },
                status_code=422,
            )
        if exc.status_code == 413:  # a body counted as it arrived (RequestGuard: announced)
            return JSONResponse(_too_large(settings.http_max_body_bytes), status_code=413)
        if exc.status_code == 405:
            # the router names only the methods of the first route whose path matched (GET
            # /orders answered "Allow: POST"); RFC 9110 §15.5.6 wants all of the resource's
            allowed = {m for regex, methods in allow_list if regex.match(request.url.path) for m in methods}
            if "GET" in allowed:
                allowed.add("HEAD")  # HeadAsGet
            method = "HEAD" if request.scope.get(_HEAD) else request.method
            return JSONResponse(
                {
                    "detail": f"{method} is not a method of this resource",
                    "reason": "method_not_allowed",
                },
                status_code=405,
                headers={"Allow": ", ".join(sorted(allowed))},
            )
        if exc.status_code == 404 and request.scope.get("route") is None:  # no route matched
            method = "HEAD" if request.scope.get(_HEAD) else request.method
            return JSONResponse({"detail": unmatched(method, request.url.path), "reason": "not_found"}, 404)
        reason = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
        return JSONResponse(
            {"detail": str(exc.detail), "reason": reason}, status_code=exc.status_code, headers=exc.headers
        )

    async def refused_caller(request: Request) -> JSONResponse | None:
        """The 401 or 403 of a request whose body could not be read: the framework reads
        the body before the routes' dependencies run, so who calls is checked here first —
        an unauthenticated caller learns nothing from a 422."""
        if hasattr(request.state, "principal"):
            return None  # checked already
        try:
            await authenticate(request)
        except auth.Unauthorized as exc:
            return await unauthorized(request, exc)
        except StarletteHTTPException as exc:
            return JSONResponse(
                {"detail": str(exc.detail), "reason": "forbidden"}, status_code=exc.status_code
            )
        return None

    @app.exception_handler(auth.Unauthorized)
    async def unauthorized(_: Request, exc: auth.Unauthorized) -> JSONResponse:
        challenge = 'Bearer realm="saga"'
        if exc.reason != "missing_token":
            challenge += f', error="invalid_token", error_description="{challenge_text(exc.detail)}"'
        return JSONResponse(
            {"detail": exc.detail, "reason": exc.reason},
            status_code=401,
            headers={"WWW-Authenticate": challenge},
        )

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        """503 with ``Retry-After`` for a failure that passes by itself: the database
        restarting, a lost connection, a full pool. Anything else is a bug, left to the
        framework's 500 (and its traceback in the log)."""
        if not is_transient(exc):
            raise exc
        log.warning(
            "%s %s: 503, a transient failure (%s: %s)",
            request.method,
            request.url.path,
            type(exc).__name__,
            printable(str(exc).splitlines()[0] if str(exc) else "", 200),
        )
        return JSONResponse(
            service_unavailable(f"a transient failure ({type(exc).__name__})", request.method),
            status_code=503,
            headers={"Retry-After": str(TRANSIENT_RETRY_AFTER_SECONDS)},
        )

    for cls in _MAYBE_TRANSIENT:
        app.add_exception_handler(cls, unavailable)

    @app.exception_handler(Exception)
    async def bug(_: Request, exc: Exception) -> JSONResponse:
        return unexpected_error(
            name, {"detail": "an unexpected error: see the service's log", "reason": "internal_error"}
        )

    @app.exception_handler(DomainRejection)
    async def rejection(_: Request, exc: DomainRejection) -> JSONResponse:
        return JSONResponse({"detail": exc.detail, "reason": exc.reason}, status_code=409)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        refused = await refused_caller(request)
        if refused is not None:
            return refused
        return JSONResponse({"detail": validation_errors(exc), "reason": "invalid_request"}, status_code=422)

    return app


def unexpected_error(name: str, body: Mapping[str, Any]) -> JSONResponse:
    """The 500 of a bug (an exception no other handler takes), ``body`` its error shape,
    from the server ``name``. Starlette answers it from its ``ServerErrorMiddleware``,
    outside every middleware an app adds, so the ``Server`` and ``Cache-Control: no-store``
    that ``ServiceIdentity`` gives every other answer are set here (an attack trial found
    a services' 500 in plain text with neither). The exception is raised on, and the
    server logs its traceback."""
    return JSONResponse(body, status_code=500, headers={"Server": name, "Cache-Control": "no-store"})


def _document_common_answers(app: FastAPI, metrics_public: bool) -> None:
    """The OpenAPI document says what each route needs (``saga_kit.auth.POLICY``): a bearer
    JWT (``securitySchemes``) and its 401, and the 403 of operator-only routes; on every
    route the 400 of the ``Host`` allow-list (``HostAllowList``) and the 421 of
    ``ServiceIdentity``; on every state-changing
    one ``RequestGuard``'s 403, 408, 413 and 415."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        document.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "a JWT signed by the configured issuer; its `roles` name customer or operator",
        }
        problem_body = {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}

        def answer(description: str, header: str | None = None, about: str = "") -> dict[str, Any]:
            """An error answer with a ``Problem`` body (and the ``header`` it carries)."""
            headers = {header: {"description": about, "schema": {"type": "string"}}} if header else None
            return {
                "description": description,
                **({"headers": headers} if headers else {}),
                "content": problem_body,
            }

        challenge = (
            "WWW-Authenticate",
            'the challenge (RFC 6750 §3): `Bearer realm="saga"`, with'
            ' `error="invalid_token"` and its description for a bad token',
        )
        for path, operations in document.get("paths", {}).items():
            for method, operation in operations.items():
                method = method.upper()
                responses = operation.setdefault("responses", {})
                responses.setdefault(
                    "400",
                    answer(
                        "no `Host`, or not one this service answers to (`invalid_host`); a path"
                        " with a control character (`invalid_path`)"
                    ),
                )
                responses.setdefault(
                    "501",
                    answer(
                        "a `Transfer-Encoding` other than `chunked` alone"
                        " (`unsupported_transfer_coding`): nothing was done"
                    ),
                )
                responses.setdefault(
                    "421",
                    answer(
                        "a request whose `Saga-Service` header names another service"
                        " (`misdirected_request`): nothing was done"
                    ),
                )
                forbidden = []
                if method in _STATE_CHANGING:
                    forbidden.append("a request from another origin (`cross_origin_refused`)")
                    responses["413"] = answer(
                        "the body is larger than `HTTP_MAX_BODY_BYTES` (`body_too_large`)"
                    )
                    responses["408"] = answer(
                        "the body did not arrive within `HTTP_BODY_TIMEOUT_SECONDS` (`request_timeout`)"
                    )
                    responses["415"] = answer(
                        "a body that is not `application/json` in UTF-8 (`unsupported_media_type`),"
                        " or a compressed one (`Content-Encoding` other than `identity`:"
                        " `unsupported_content_encoding`, with `Accept-Encoding: identity`)",
                        "Accept-Encoding",
                        "`identity` (with `unsupported_content_encoding`)",
                    )
                access = auth.access_of(method, path, metrics_public=metrics_public)
                if access is not auth.Access.PUBLIC:
                    operation["security"] = [{"bearer": []}]
                    responses["401"] = answer(
                        "no bearer token (`missing_token`), or not a valid one (`invalid_token`)", *challenge
                    )
                elif (method, path) in auth.TOKEN_OPTIONAL:  # public, and more for a token
                    operation["security"] = [{}, {"bearer": []}]
                    responses["401"] = answer("a token that is not valid (`invalid_token`)", *challenge)
                if "403" in responses:  # the route's own reason
                    forbidden.insert(0, responses["403"]["description"])
                if access is auth.Access.OPERATOR:
                    forbidden.insert(0, "needs the operator role (`forbidden`)")
                if forbidden:
                    responses["403"] = answer("; or ".join(forbidden))
        schemas = document["components"].setdefault("schemas", {})
        schemas.setdefault("Problem", Problem.model_json_schema())
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _characters(n: Any) -> str:
    return f"{n} character{'' if n == 1 else 's'}"


#: pydantic's length errors of a string, in its own words for one ("String should have …").
_LENGTH_ERRORS: dict[str, Callable[[dict[str, Any]], str]] = {
    "too_short": lambda ctx: f"String should have at least {_characters(ctx.get('min_length'))}",
    "too_long": lambda ctx: f"String should have at most {_characters(ctx.get('max_length'))}",
}


#: How pydantic's ``EmailStr`` begins a refusal (its reason follows, email-validator's).
_NOT_AN_EMAIL_ADDRESS = "value is not a valid email address"


def validation_errors(exc: RequestValidationError, limit: int = 20) -> list[dict[str, Any]]:
    """The 422 body: where and why, never the input itself. The framework's default echoes
    the input, and an input JSON cannot carry (a NaN, a lone surrogate) turned the 422
    into a 500; nothing from the request is echoed here but printable names."""
    out: list[dict[str, Any]] = []
    for err in exc.errors()[:limit]:
        msg = error_words(err)
        ctx = err.get("ctx")
        if err.get("type") == "json_invalid" and isinstance(ctx, dict) and ctx.get("error"):
            msg = f"{msg}: {ctx['error']}"
        elif err.get("type") == "uuid_parsing":
            # pydantic quotes the character it stopped at ("found `z` at 32"): where, not what
            msg = re.sub(r": found `.*?` at (\d+)", r" at position \1", msg, flags=re.S)
        elif msg.startswith(_NOT_AN_EMAIL_ADDRESS):
            # email-validator's reason quotes what it refused ("… not valid IDNA (… of 'હરિ')",
            # "invalid characters before the @-sign: '(', ')'"): its words, not the quotes
            msg = re.sub(r"\s*\([^()]*'[^()]*\)|:\s*'[^']*'(?:,\s*'[^']*')*", "", msg)
        elif (length := _LENGTH_ERRORS.get(str(err.get("type")))) and isinstance(err.get("input"), str):
            # a text checked before its length (events.values.SafeText) is measured "after
            # validation", and pydantic then counts "items": say characters, as for any string
            msg = length(ctx if isinstance(ctx, dict) else {})
        out.append(
            {
                "loc": [p if isinstance(p, int) else printable(str(p), 100) for p in err.get("loc", ())],
                "msg": printable(msg, 300),
                "type": str(err.get("type", "invalid")),
            }
        )
    return out
