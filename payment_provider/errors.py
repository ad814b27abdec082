"""The provider's error answers, as types. Each is answered with its status and the body
``{"error": <code>, "message": <text>}`` (a decline adds ``decline_code``, an invalid
request ``details``); ``install`` makes the app answer them, and every other failure,
in that shape."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import psycopg
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import SQLAlchemyError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from saga_kit.errors import is_transient
from saga_kit.http import (
    BODY_BROKE_OFF,
    UNREADABLE_BODY,
    BodyReader,
    UnreadableBody,
    broke_off,
    check_json_body,
    coding_refusal,
    no_route,
    path_refusal,
    unexpected_error,
    validation_errors,
)

log = logging.getLogger(__name__)


class ProviderError(Exception):
    """An answer other than success: ``status`` with ``{"error": code, "message": …}``."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.extra}


class IdempotencyKeyRequired(ProviderError):
    status, code = 400, "idempotency_key_required"

    def __init__(self) -> None:
        super().__init__("this request needs an Idempotency-Key header (1 to 200 printable characters)")


class InvalidRequest(ProviderError):
    status, code = 422, "invalid_request"

    def __init__(self, details: list[dict[str, Any]]) -> None:
        super().__init__("the request is invalid; details says where and why", details=details)


class NoSuchAccount(ProviderError):
    status, code = 404, "no_such_account"

    def __init__(self) -> None:
        super().__init__("no account has this id")


class NoSuchCharge(ProviderError):
    status, code = 404, "no_such_charge"

    def __init__(self) -> None:
        super().__init__("no successful charge was made under this key")


class NoSuchRefund(ProviderError):
    status, code = 404, "no_such_refund"

    def __init__(self) -> None:
        super().__init__("no refund was made under this key")


class IdempotencyKeyReused(ProviderError):
    status, code = 409, "idempotency_key_reused"

    def __init__(self) -> None:
        super().__init__("this Idempotency-Key was used before with another body")


class OutcomeUnknown(ProviderError):
    """The database failed while committing: the change may or may not have been made. A
    500, never the 503 that promises "nothing done" (see ``install``)."""

    status, code = 500, "outcome_unknown"

    def __init__(self) -> None:
        super().__init__(
            "the database failed while committing: ask again with the same Idempotency-Key"
            " to learn the outcome"
        )


class ChargeAlreadyRefunded(ProviderError):
    status, code = 409, "charge_already_refunded"

    def __init__(self) -> None:
        super().__init__("this charge was already refunded under another Idempotency-Key")


def error_body(code: str, message: str) -> dict[str, str]:
    return {"error": code, "message": message}


def unreadable_body(cause: BaseException | None) -> InvalidRequest:
    """The 422 of a body that cannot be read (the framework's 400 "There was an error
    parsing the body", raised from ``cause``): bytes that are not UTF-8, a name twice in
    one object, nesting deeper than the parser reads (``BodyLimit``'s check). An attack
    trial got a 400 ``bad_request`` for these, where every other invalid body is a 422
    ``invalid_request`` with ``details``."""
    if isinstance(cause, UnreadableBody):
        why = str(cause)
    elif cause is not None:
        why = f"the body could not be read ({type(cause).__name__})"
    else:
        why = "the body could not be read"
    return InvalidRequest([{"loc": ["body"], "msg": why, "type": "body_unreadable"}])


def too_large(max_body_bytes: int) -> dict[str, str]:
    """The body of a 413: a request body over ``max_body_bytes``."""
    return error_body("body_too_large", f"the body is larger than {max_body_bytes} bytes, the most accepted")


class BodyTooLarge(HTTPException):
    """A body counted past the limit as it arrived (``BodyLimit``): answered 413."""

    def __init__(self) -> None:
        super().__init__(413, "the body is larger than the most accepted")


class BodyLimit:
    """Request bodies, in front of everything else (pure ASGI): at most ``max_body_bytes`` — one
    announced larger (``Content-Length``) is answered 413 before a byte of it is read, one
    that is not is counted as it arrives — and JSON in UTF-8 that says each thing once
    (``saga_kit.http.check_json_body``, the services' own check), else 422
    ``invalid_request``; a body coded in a way not read here
    (``saga_kit.http.coding_refusal``: a ``Transfer-Encoding`` other than ``chunked``
    alone, 501; a ``Content-Encoding``, 415) before anything reads it; a path with a
    control character or an escaped slash, 400 ``invalid_path`` (``saga_kit.http.path_refusal``, the services'
    own check); all in the provider's shape. Raised in a route, the app's handlers
    (``install``) answer them; raised where the fault controls buffer a body, outside
    those handlers, this answers them. An attack trial found Starlette's body limit
    answering that case in plain text, and a UTF-16 body creating an account (the
    framework's JSON parser guesses UTF-16 and UTF-32)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, body_timeout: float = 30.0) -> None:
        self.app, self.max_body_bytes, self.body_timeout = app, max_body_bytes, body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused_path = path_refusal(scope)
        if refused_path is not None:  # /v1/charges%0A was /v1/charges (a re-check attack trial)
            status, problem, _ = refused_path
            await JSONResponse(error_body(problem["reason"], problem["detail"]), status)(scope, receive, send)
            return
        headers = Headers(scope=scope)
        coded = coding_refusal(headers)
        if coded is not None:  # a gzip body was read as plain JSON (an attack trial)
            status, code, message, extra = coded
            refused = JSONResponse(error_body(code, message), status_code=status)
            refused.raw_headers.extend(extra)
            await refused(scope, receive, send)
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            await JSONResponse(too_large(self.max_body_bytes), status_code=413)(scope, receive, send)
            return
        size, chunks, started = 0, [], False
        timed = BodyReader(receive, self.body_timeout, None)  # 408 past the body's deadline

        async def reading() -> Message:
            nonlocal size
            message = await timed()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise BodyTooLarge
                chunks.append(chunk)
                if not message.get("more_body", False):
                    check_json_body(b"".join(chunks))
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, reading, sending)
        except (UnreadableBody, StarletteHTTPException) as exc:  # BodyTooLarge is one (413)
            if started:
                raise
            if isinstance(exc, BodyTooLarge):
                answer = JSONResponse(too_large(self.max_body_bytes), status_code=413)
            elif isinstance(exc, UnreadableBody):
                error = unreadable_body(exc)
                answer = JSONResponse(error.body(), status_code=error.status)
            elif exc.status_code == 408:  # the body's deadline (BodyReader)
                answer = JSONResponse(error_body("request_timeout", str(exc.detail)), 408, exc.headers)
            else:
                raise
            await answer(scope, receive, send)


def install(app: FastAPI, max_body_bytes: int, name: str) -> None:
    """Answer every error of the server ``name`` in the provider's shape: its own errors, the
    framework's (404 for an unknown route, which says whose route it is when a saga
    service has it; 405, 422, a body it cannot parse as 422 too, 413 ``body_too_large``
    past ``max_body_bytes``) and anything unexpected (503 ``unavailable`` while the
    database is away, else 500 ``internal_error``).

    A 503 promises that nothing was done, and clients rely on it (the payment service
    voids a cancelled order's payment when every call was answered 503): a transaction
    that fails before its COMMIT is rolled back, so 503; one whose COMMIT fails is
    ``OutcomeUnknown`` (500)."""

    @app.exception_handler(ProviderError)
    async def provider_error(_: Request, exc: ProviderError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    # a saga service's route sent here (its URL mistaken for the provider's) is named as
    # such: the provider's port given as the payment service's read a bare "Not Found"
    own = {(method, r.path) for r in app.routes if isinstance(r, APIRoute) for method in r.methods or ()}
    unmatched = no_route("the payment provider (simulator)", own)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404 and request.scope.get("route") is None:  # no route matched
            body = error_body("not_found", unmatched(request.method, request.url.path))
            return JSONResponse(body, status_code=404)
        if broke_off(exc):
            return JSONResponse(error_body("invalid_http_request", BODY_BROKE_OFF), status_code=400)
        if exc.status_code == 400 and exc.detail == UNREADABLE_BODY:
            unreadable = unreadable_body(exc.__cause__)
            return JSONResponse(unreadable.body(), status_code=unreadable.status)
        if exc.status_code == 413:  # counted as it arrived (``BodyTooLarge``)
            return JSONResponse(too_large(max_body_bytes), status_code=413)
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
        body = error_body(code, str(exc.detail))
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        error = InvalidRequest(validation_errors(exc))
        return JSONResponse(error.body(), status_code=error.status)

    async def database_error(_: Request, exc: Exception) -> JSONResponse:
        """The database away (503, retrying may help) or failing otherwise (500)."""
        if is_transient(exc):
            log.warning("answering 503: %s", exc)
            return JSONResponse(error_body("unavailable", "the provider's database is away"), status_code=503)
        log.error("answering 500", exc_info=exc)
        return JSONResponse(error_body("internal_error", "an unexpected error"), status_code=500)

    for kind in (SQLAlchemyError, psycopg.Error, OSError):
        app.add_exception_handler(kind, database_error)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        """A bug: 500 (the server logs the exception)."""
        return unexpected_error(name, error_body("internal_error", "an unexpected error"))
