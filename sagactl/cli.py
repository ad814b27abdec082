"""sagactl: operate a running system over the services' HTTP APIs (and its Kafka door).

It talks to the services only through their public endpoints — their HTTP APIs, and
the broker for 'place --via kafka', 'cancel --via kafka' and 'publish' — so it works
the same against 'make run', a compose deployment or a test system. Service URLs default to
the ports of 'make run' and are overridden per service with --order-url … or the
environment (SAGACTL_ORDER_URL, SAGACTL_INVENTORY_URL, SAGACTL_PAYMENT_URL).

Every call carries the bearer token of --token or SAGA_TOKEN (an operator's sees
everything; a customer's only its own orders). 'sagactl token' mints a development one
with the key 'make run' / 'make demo' made under the run directory.

These options (--order-url …, --token) may come before the command or after it
('sagactl forget alice --token X'), or between a group and its command ('sagactl dlq
--token X list'); given in more than one place, the last one given wins, and only
it is checked: it replaces the environment's as well.

Every command takes --output (-o): text fits the terminal (80 columns and
up; ids shortened to 8 characters), wide shows full ids and every column however
wide that is, json prints the API's data and nothing else on stdout. An error is
one line on stderr and a non-zero exit: 1 when a service refused, 2 when sagactl was
called wrong (a usage error), 3 when a service or the broker could not be reached, 4
when a call that changes something was sent and not answered (it may have been carried
out: the line says how to learn whether).

'--via kafka' (and 'publish') connects to the broker of --bootstrap or
SAGACTL_KAFKA_BOOTSTRAP as the services do: KAFKA_SECURITY_PROTOCOL,
KAFKA_SSL_CAFILE, KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD_FILE …
(saga_kit.kafka_security).
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import logging
import math
import os
import re
import shlex
import signal
import string
import sys
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, NoReturn, TypeVar
from urllib.parse import quote

import httpx
import regex
import typer
from httpx_sse import connect_sse
from rich.console import Console, Group, RenderableType
from rich.highlighter import JSONHighlighter
from rich.measure import Measurement
from rich.panel import Panel
from rich.table import Column, Table
from rich.text import Text

from events.values import (
    MAX_DEADLINE_SECONDS,
    MAX_LINE_QUANTITY,
    MIN_DEADLINE_SECONDS,
    once_each,
    printable,
    storable,
)
from order_svc.domain import CANCEL_REQUESTED, ORDER_ID_PREFIX, OrderStatus, transition
from saga_kit import auditchain
from saga_kit.auth import POLICY, SUBJECT_RULE, WITHHELD, DevIssuer, Role, is_subject
from saga_kit.service_names import SHORT_NAMES, service_named, short_name
from saga_kit.urls import MEANT_FOR, NOT_SENT, base_url, kafka_bootstrap, unanswered


def _reader_gone() -> NoReturn:
    """End the command, its output's reader gone: exit ``PIPE_CLOSED``, nothing said;
    stdout goes nowhere from then on, so that nothing is said when Python flushes it at
    exit either (Python's documentation's recipe, "Note on SIGPIPE")."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise SystemExit(PIPE_CLOSED)


class _Console(Console):
    """rich's console, whose answer to a closed pipe is sagactl's (``_reader_gone``), not
    exit 1."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        _reader_gone()


#: Output: nothing sagactl prints is read as rich's markup — a table cell, a tree's label
#: is what a service said (a balance of "[/]" was a MarkupError, a traceback); styles are
#: given as styles.
console = _Console(markup=False)
#: Errors: one line on stderr, never wrapped, never read as markup.
errors = _Console(stderr=True, soft_wrap=True, highlight=False, markup=False)


class _GlobalOptionsGroup(typer.core.TyperGroup):
    """sagactl's command group, whose own options (--token, --order-url, --inventory-url,
    --payment-url: ``main``'s) every command also takes after its name, and every group
    of commands (dlq, audit) between its name and its command's, with the same meaning:
    ``sagactl forget alice --token X`` and ``sagactl dlq --token X list`` were "No such
    option: --token" (click reads a group's options before the name of its command only).
    Each command and each group under this one gets a copy of each, without its
    environment variable and default, that passes nothing to it: given, its value
    replaces the one read before it (by ``main``: before the command, from the
    environment, or the default; or by the group above), and click reads them in the
    order they are given, so the last one given wins. Click parses them, so '--' and an
    option's value that looks like a command mean what they meant. What they hold is
    checked once every one has been read, as the command is about to run
    (``_check_what_was_given``), so a malformed value that a later one replaced stands
    in no way: ``sagactl --token 'x y' health --token T`` and ``SAGACTL_ORDER_URL=notaurl
    sagactl health --order-url http://…`` were usage errors (a newcomer trial)."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        again = [_after_the_command(param) for param in self.params if param.name in GLOBAL_OPTIONS]
        pending = list(self.commands.values())
        while pending:
            command = pending.pop()
            copies = [copy.copy(param) for param in again]
            # taken (a script's habit), but not listed where nothing uses them ('sagactl
            # token --token' read as nonsense: a newcomer trial)
            for param in copies:
                param.hidden = command.name in OFFLINE_COMMANDS
            command.params.extend(copies)
            if isinstance(command, typer.core.TyperGroup):
                pending.extend(command.commands.values())
            else:
                command.invoke = _checking_what_was_given(command.invoke)  # type: ignore[method-assign,assignment]

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        """sagactl's own options read; ``sagactl --help`` is printed here, before
        ``invoke``: its reader gone, it ends as ``invoke`` says."""
        try:
            return super().make_context(info_name, args, parent, **extra)
        except BrokenPipeError:
            _reader_gone()

    def invoke(self, ctx: Any) -> Any:  # a click.Context of typer's own copy of click
        """The command; a reader of its output that stopped reading ends it
        (``_reader_gone``); a value refused as the command's options are read is said in
        plain words."""
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # a print's (rich's consoles: ``_Console``)
            _reader_gone()
        except typer.BadParameter as bad:
            # typer reads a choice through pydantic, whose words begin "Value error, "
            # ("Invalid value for '--status': Value error, 'APROVED' is not one of …", a
            # newcomer trial): said without them, as the services' 422s are
            bad.message = bad.message.removeprefix("Value error, ")
            raise


#: ``main``'s options, as its parameters are named: each command takes them too.
GLOBAL_OPTIONS = ("order_url", "inventory_url", "payment_url", "token")


def _after_the_command(param: Any) -> Any:
    """A copy of one of ``main``'s options for a command (or a group of them) to take
    after its name: no environment variable, no default, no value passed to the command,
    and processed before the command's own (is_eager), as ``main`` processed it before
    them."""
    option = copy.copy(param)
    option._runtime_param = None  # typer's, made from the option: made again for the copy
    option.envvar, option.show_envvar, option.default = None, False, None
    option.expose_value, option.is_eager, option.callback = False, True, _given_after_the_command
    option.show_default = False
    return option


def _given_after_the_command(ctx: Any, param: Any, value: str | None) -> None:
    """One of ``main``'s options given after the command's (or group's) name: it replaces
    what ``main`` (or a group above) read, and is checked with the rest before the
    command runs. Click calls it with None when the option is not given."""
    if value is None:
        return
    urls = _urls(ctx)
    if param.name == "token":
        urls.token = value or None  # an empty one is none, as it is to ``main``
    else:
        setattr(urls, param.name.removesuffix("_url"), value)
    urls.given_by[param.name] = param.opts[0]


def _checking_what_was_given(invoke: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A command's ``invoke(ctx)``, run after ``_check_what_was_given(ctx)``: click calls
    it once the command's options have all been read."""

    def checked(ctx: Any) -> Any:
        _check_what_was_given(ctx)
        return invoke(ctx)

    return checked


def _check_what_was_given(ctx: Any) -> None:
    """A usage error (exit 2, before anything is sent) naming where it came from (an
    option, or an environment variable) if a service's URL the command holds is not a
    base URL (``saga_kit.urls.base_url``), or the token it will send is not a bearer
    token (a command that calls no service, ``OFFLINE_COMMANDS``, takes any). Called
    once every option has been read, so only the values the command will use are
    checked: the last given of each, or the environment's or the default when none was
    given."""
    urls = _urls(ctx)
    if ctx.find_root().invoked_subcommand in OFFLINE_COMMANDS:
        return
    for service in SERVICES:
        option = f"{service}_url"
        try:
            setattr(urls, service, _service_base_url(urls.of(service)).rstrip("/"))
        except ValueError as exc:
            _fail(f"{urls.given_by[option]} is not a service's base URL: {exc}", USAGE)
    if urls.token:
        _check_token(urls.token, urls.given_by["token"])


#: The first segment of every service's routes (``saga_kit.auth.POLICY`` lists them all).
ROUTE_ROOTS = frozenset(path.split("/")[1] for _, path in POLICY)


def _service_base_url(url: str) -> str:
    """``url`` if it is a base URL (``saga_kit.urls.base_url``) that does not end in one of
    the services' routes; ``ValueError`` saying which. ``SAGACTL_ORDER_URL=…/orders`` called
    ``…/orders/orders`` and read "order_id: Input should be a valid UUID" of an id never
    given, and ``place --via kafka`` placed its order, then waited out a minute of "no
    route" 404s as "not taken yet" and blamed the token (newcomer trials). A gateway that
    mounts a service under a path named like a route (``/orders``) is refused with it."""
    base_url(url)
    last = httpx.URL(url).path.rstrip("/").rpartition("/")[2]
    if last in ROUTE_ROOTS:
        root = url.rstrip("/").removesuffix(last).rstrip("/")
        raise ValueError(
            f"it ends in '/{last}', one of the services' routes: give the service's root ({root})"
        )
    return url


app = typer.Typer(
    cls=_GlobalOptionsGroup,
    help=__doc__,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    # -h as well as --help, on every command (click hands it down to sub-commands)
    context_settings={"help_option_names": ["-h", "--help"]},
)
dlq = typer.Typer(help="Dead letters: events a service could not process.", no_args_is_help=True)
app.add_typer(dlq, name="dlq")
audit_app = typer.Typer(help="The audit trail: who changed what, hash-chained.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")

#: The services by the names sagactl shows: order, inventory, payment.
SERVICES = SHORT_NAMES
#: How many characters of an id a text table shows (like a short git hash).
SHORT_ID = 8
#: A width no table reaches: wide tables are measured against it.
UNBOUNDED = 100_000
#: Exit codes: a service refused (or answered something unusable); sagactl was called
#: wrong (click's own code for a usage error); a service or the broker could not be
#: reached; a call that changes something was sent and no answer came (it may have been
#: carried out). Distinct, so a script can tell a mistake of its own from an outage, and
#: an outage from a call whose outcome is unknown.
REFUSED, USAGE, UNREACHABLE, IN_DOUBT = 1, 2, 3, 4
#: Exit code when the reader of sagactl's output stopped reading (``| head -1``): a Unix
#: tool's, ended by SIGPIPE, as a shell counts it (128 + 13). Click's own was 1, this
#: CLI's "a service refused", said of a saga that was shown (a newcomer trial).
PIPE_CLOSED = 128 + signal.SIGPIPE
#: Seconds a call waits to connect, and then for each part of the answer.
HTTP_TIMEOUT = 10.0


class LetterStatus(StrEnum):
    """A dead letter's status, as ``GET /dead-letters?status=`` takes it: its name (ALL:
    any); its value in lower case, as the help shows the choices and so their default."""

    PENDING = "pending"
    REPLAYED = "replayed"
    DISCARDED = "discarded"
    ALL = "all"


class Output(StrEnum):
    text = "text"
    wide = "wide"
    json = "json"


OutputOpt = Annotated[
    Output,
    typer.Option(
        "--output",
        "-o",
        case_sensitive=False,
        help="text (fits the terminal), wide (full ids, every column) or json (the API's data)",
    ),
]


#: --service (repeatable): the services a command looks at (all three when absent).
ServicesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--service",
        "-s",
        metavar="SERVICE",  # not typer's <list[str]> (a newcomer trial)
        help="only these services: order, inventory, payment (repeatable)",
        callback=lambda v: _check_services(v),
    ),
]


@dataclass
class Urls:
    order: str
    inventory: str
    payment: str
    #: the bearer token every call carries (None: none)
    token: str | None = None
    #: where each of ``main``'s options (GLOBAL_OPTIONS) came from, as a message names it:
    #: the option (--token) or its environment variable (SAGA_TOKEN)
    given_by: dict[str, str] = field(default_factory=dict)
    _client: httpx.Client | None = field(default=None, repr=False)
    _making_client: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def of(self, service: str) -> str:
        return str(getattr(self, service))

    @property
    def token_from(self) -> str:
        """Where token came from, as a message names it: --token or SAGA_TOKEN."""
        return self.given_by.get("token", "--token")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @property
    def client(self) -> httpx.Client:
        """One connection pool for all of a command's calls: a wait polls every 0.2 s, and
        a client (its TLS context, its connection) made per call cost ~0.2 s of CPU each."""
        with self._making_client:  # one, whichever of the threads asking every service asks first
            if self._client is None:
                self._client = httpx.Client(timeout=HTTP_TIMEOUT, headers=self.headers)
            return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _urls(ctx: typer.Context) -> Urls:
    urls: Urls = ctx.obj
    return urls


def _meant_for(service: str) -> dict[str, str]:
    """The header that names the service a call is meant for: a service that is another
    answers 421 and does nothing (``saga_kit.http.ServiceIdentity``; the inventory's URL
    given as the payment's showed inventory's dead letters as payment's: a newcomer trial)."""
    return {MEANT_FOR: f"{service}_svc"}


#: The commands that call no service's HTTP API, so send no token: a URL or a token
#: sagactl could not use stands in no way of theirs (``export SAGA_TOKEN=$(sagactl
#: token)`` replaces a malformed one).
OFFLINE_COMMANDS = ("token", "publish", "kafka-acls")
#: A bearer token's characters (RFC 6750 §2.1, b64token), then "=" only at its end:
#: anything else in an Authorization header was httpx's UnicodeEncodeError (a traceback)
#: or, a newline or a blank, "cannot reach" (exit 3; an attack trial).
TOKEN_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-._~+/")


def _option(ctx: typer.Context, name: str) -> Any:
    """``main``'s option (a click Option) whose parameter is called name."""
    return next(param for param in ctx.command.params if param.name == name)


def _given_by(ctx: typer.Context, name: str) -> str:
    """How ``main``'s option name was given, as a message names it: its environment
    variable (SAGA_TOKEN) if it was read from there, else the option (--token)."""
    param = _option(ctx, name)
    # by its name: typer carries its own copy of click (typer._click), and its enum
    source = ctx.get_parameter_source(name)
    if source is not None and source.name == "ENVIRONMENT" and isinstance(param.envvar, str):
        return param.envvar
    return str(param.opts[0])


def _check_token(token: str, given_by: str) -> None:
    """A usage error (exit 2, before anything is sent) unless token is a bearer token:
    one line naming given_by (--token or SAGA_TOKEN) and the first character that
    cannot be in one, never the token itself."""
    body = token.rstrip("=")
    bad = next((i for i, ch in enumerate(body) if ch not in TOKEN_CHARACTERS), None)
    if body and bad is None:
        return
    if token[:7].lower() == "bearer " and token[7:].strip():  # a header's value copied whole
        _fail(f"{given_by} is the token alone: leave out 'Bearer ' (sagactl sends it)", USAGE)
    what = "it is only '='" if bad is None else f"character {bad + 1} is {body[bad]!r}"
    _fail(
        f"{given_by} is not a bearer token: {what}; one is ASCII letters, digits and - . _ ~ + /,"
        f" then = only at its end (RFC 6750); {MINT_HINT}",
        USAGE,
    )


@app.callback()
def main(
    ctx: typer.Context,
    order_url: Annotated[
        str,
        typer.Option(envvar="SAGACTL_ORDER_URL", help="the order service's base URL"),
    ] = "http://127.0.0.1:8001",
    inventory_url: Annotated[
        str,
        typer.Option(envvar="SAGACTL_INVENTORY_URL", help="the inventory service's base URL"),
    ] = "http://127.0.0.1:8002",
    payment_url: Annotated[
        str,
        typer.Option(envvar="SAGACTL_PAYMENT_URL", help="the payment service's base URL"),
    ] = "http://127.0.0.1:8003",
    token: Annotated[
        str | None,
        typer.Option(
            envvar="SAGA_TOKEN", help="bearer token (JWT) for every call; `sagactl token` mints one"
        ),
    ] = None,
) -> None:
    # what the command will use, checked once its own options are read: an option given
    # after it may replace any of these (_check_what_was_given)
    urls = Urls(
        order_url,
        inventory_url,
        payment_url,
        token or None,  # an empty one is none, as an empty Authorization header is to the services
        {name: _given_by(ctx, name) for name in GLOBAL_OPTIONS},
    )
    # click takes SAGACTL_ORDER_URL= as unset, and the default's port was called: perhaps
    # another stack's (a trial). Set and empty, it is a URL that is not one
    for service in SERVICES:
        name = f"{service}_url"
        variable, source = _option(ctx, name).envvar, ctx.get_parameter_source(name)
        if os.environ.get(variable) == "" and source is not None and source.name == "DEFAULT":
            setattr(urls, service, "")
            urls.given_by[name] = variable
    ctx.obj = urls
    ctx.call_on_close(urls.close)


# -- talking to the services, and failing in one sentence ---------------------------------


class _Ending(Exception):
    """``_fail`` in a thread of ``_EachService.read``: the line is said once, by the
    command's own thread (each thread said its own: three 403 lines for one token that
    may not list dead letters, a newcomer trial)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message, self.code = message, code


#: Set in ``_EachService.read``'s threads: ``_fail`` raises ``_Ending`` there.
_in_each_service = threading.local()


def _fail(message: str, code: int = REFUSED) -> NoReturn:
    """End the command: message as one line on stderr, exit code."""
    if getattr(_in_each_service, "active", False):
        raise _Ending(message, code)
    _say(message)
    raise typer.Exit(code)


def _say(message: str) -> None:
    """An error as one line on stderr, the command going on; control characters made
    visible (it may quote what a service or the user said)."""
    errors.print(Text(printable(" ".join(message.split())), style="red"))


def _request(
    ctx: typer.Context, service: str, method: str, path: str, retry: str = "", **kwargs: Any
) -> httpx.Response:
    """One HTTP call to service, whatever it answered; the command ends with one line
    saying why if it could not be reached (exit 3, UNREACHABLE), or if a call that changes
    something was sent and no answer came (exit 4, IN_DOUBT: it may have been carried out;
    ``retry`` says how to learn its outcome safely)."""
    try:
        return _send(ctx, service, method, path, **kwargs)
    except _Missing as missing:
        if missing.kind == "in_doubt":
            _fail(f"{missing.said}{retry or '; look before trying again'}", IN_DOUBT)
        _fail(missing.said, UNREACHABLE)


def _send(ctx: typer.Context, service: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One HTTP call to service, whatever it answered; ``_Missing`` ("unreachable",
    saying why) if it could not be reached; ("not_answering") if it took a GET and did
    not answer it (in time, or at all: the connection closed); ("in_doubt") if it did not
    answer another method once the request was sent (an attack trial: a frozen service
    took a forget and a replay, did them when it woke, and sagactl had said "cannot reach
    … is the system running?")."""
    base = _urls(ctx).of(service)
    kwargs["headers"] = {**kwargs.get("headers", {}), **_meant_for(service)}
    try:
        return _urls(ctx).client.request(method, base + path, **kwargs)
    except httpx.HTTPError as exc:
        if isinstance(exc, NOT_SENT) or method in ("GET", "HEAD"):
            raise _Missing(unanswered(exc), _unreachable(service, base, exc, f"{method} {path}")) from None
        raise _Missing(
            "in_doubt",
            f"the {service} service at {base} took {method} {path} and did not answer"
            f"{_unanswered(exc)}: it may have been carried out",
        ) from None


def _call(ctx: typer.Context, service: str, method: str, path: str, retry: str = "", **kwargs: Any) -> Any:
    """One HTTP call to service; its JSON answer, or the command ends with one line
    saying why (exit 3: it could not be reached; 1: it refused; 4: sent, not answered,
    ``retry`` saying how to learn the outcome)."""
    return _answer(ctx, service, method, path, _request(ctx, service, method, path, retry, **kwargs))


def _answer(ctx: typer.Context, service: str, method: str, path: str, response: httpx.Response) -> Any:
    """The JSON of response to 'method path', or the command ends with one line
    saying why (exit 1: the service refused, or answered something other than JSON)."""
    base = _urls(ctx).of(service)
    if response.status_code == 421:  # another service's URL given for it: the command's to mend
        _fail(_refusal(service, response), USAGE)
    if response.is_error:
        _fail(_refusal(service, response))
    try:
        return _json_of(response)
    except ValueError:
        _fail(f"the {service} service at {base} answered {method} {path} with something other than JSON")


def _json_of(response: httpx.Response) -> Any:
    """response's body as JSON; ``ValueError`` if it is not JSON, or nested deeper than
    Python's parser goes (its RecursionError escaped as a traceback: an attack trial)."""
    try:
        return response.json()
    except RecursionError:
        raise ValueError("JSON nested too deeply to read") from None


T = TypeVar("T")


class _Missing(Exception):
    """A service's part of a command for every service that is missing: ``kind``
    ``unreachable`` (nothing sent: no connection), ``not_answering`` (it took a read and
    gave no answer: frozen, or closed the connection) or ``unavailable`` (a 5xx: up, its
    database away); or a call that changes something, sent and not answered:
    ``in_doubt``."""

    def __init__(
        self, kind: Literal["unreachable", "not_answering", "unavailable", "in_doubt"], said: str
    ) -> None:
        super().__init__(said)
        self.kind, self.said = kind, said


def _get_or_missing(ctx: typer.Context, service: str, path: str, params: Mapping[str, Any]) -> Any:
    """``GET path`` of service: its JSON, or ``_Missing`` if it could not be reached or
    answered 5xx; a 4xx (this call's fault, the same at every service) ends the command."""
    response = _send(ctx, service, "GET", path, params=params)
    if response.is_server_error:
        raise _Missing("unavailable", _refusal(service, response))
    return _answer(ctx, service, "GET", path, response)


@dataclass
class _EachService(Generic[T]):
    """What a command for every service read of each (``found``), and why each missing
    one is (``unreachable``, ``not_answering``, ``unavailable``: ``_Missing``'s kinds,
    service → the sentence saying why): the others are still worth seeing."""

    found: dict[str, T]
    unreachable: dict[str, str]
    not_answering: dict[str, str]
    unavailable: dict[str, str]

    @classmethod
    def read(cls, names: Iterable[str], read: Callable[[str], T]) -> _EachService[T]:
        """``read`` of every service at once, each in a thread of its own (one after
        another, services whose database hangs took their answer deadlines in turn: 19 s
        for ``dlq list``, an attack trial); ``found`` keeps the order of ``names``. What
        ends the command (a 4xx) is raised as it would have been, in the same order."""

        def attempt(name: str) -> T | _Missing | _Ending:
            _in_each_service.active = True
            try:
                return read(name)
            except (_Missing, _Ending) as missing:
                return missing
            finally:
                _in_each_service.active = False

        names = list(names)
        each = cls({}, {}, {}, {})
        with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
            for name, got in zip(names, pool.map(attempt, names), strict=True):
                if isinstance(got, _Ending):  # the first service's, as one after another did
                    _fail(got.message, got.code)
                if isinstance(got, _Missing):
                    getattr(each, got.kind)[name] = got.said
                else:
                    each.found[name] = got
        return each

    @property
    def missing(self) -> dict[str, str]:
        return self.unreachable | self.not_answering | self.unavailable

    def end(self, what: str, *, failed: bool = False) -> None:
        """A line on stderr for each missing service (``what`` of it is not shown), then
        exit 1 if the command ``failed`` with what it found (that comes first), else 3 if
        a service could not be reached or did not answer (a read: harmless to ask again),
        else 1 if one is missing; nothing otherwise."""
        for said in self.missing.values():
            _say(f"{said}; {what}")
        if failed or self.missing:
            no_answer = self.unreachable or self.not_answering
            raise typer.Exit(UNREACHABLE if no_answer and not failed else REFUSED)


def _unreachable(service: str, base: str, exc: Exception, request: str = "") -> str:
    """Why service gave no answer, as one sentence: "cannot reach" (and where to look)
    only if nothing was sent; one that took the connection "did not answer" (``request``,
    e.g. ``GET /orders``, if given): an attack trial froze a service and was told it could
    not be reached, "is the system running?". A service ``make run`` is restarting cannot be
    reached for a few seconds too, and "is the system running?" was all a trial was told."""
    if not isinstance(exc, NOT_SENT):
        asked = f" {request}" if request else ""
        return f"the {service} service at {base} did not answer{asked}{_unanswered(exc)}"
    return (
        f"cannot reach the {service} service at {base}: {str(exc) or type(exc).__name__}"
        f" (is the system running? 'make run' starts it, and starts a service that stopped"
        f" again within seconds: ask again; if it listens elsewhere, say where with"
        f" --{service}-url or SAGACTL_{service.upper()}_URL)"
    )


def _unanswered(exc: Exception) -> str:
    """How a service that took a request failed to answer, as the end of "did not answer…":
    " within 10 s", or what broke (the connection closed without an answer)."""
    if isinstance(exc, httpx.TimeoutException):
        return f" within {HTTP_TIMEOUT:g} s"
    return f": {str(exc) or type(exc).__name__}"


#: Where a token comes from, as an error that wants one says it.
MINT_HINT = "`sagactl token` mints a development one"
TOKEN_HINT = f"pass --token or set SAGA_TOKEN; {MINT_HINT}"


def _refusal(service: str, response: httpx.Response) -> str:
    """An error answer as one sentence: its status and what the service said; a 421, the
    URL given for service is another's (``_meant_for``), said as such."""
    if response.status_code == 421:
        named = response.headers.get("server")
        other = f"{printable(named, 40)}'s" if named else f"another service's ({_detail_of(response)})"
        where = f"{response.url.scheme}://{printable(response.url.netloc.decode('ascii', 'replace'), 100)}"
        return (
            f"the URL given for the {service} service, {where} (--{service}-url or"
            f" SAGACTL_{service.upper()}_URL), is {other}: it did nothing with the call;"
            f" give the {service} service's"
        )
    said = _detail_of(response)
    if response.status_code == 401 and "Authorization" in response.request.headers:
        said += f" (the token given was refused: give another; {MINT_HINT})"  # not "pass --token"
    elif response.status_code == 401:
        said += f" ({TOKEN_HINT})"
    elif response.status_code == 403 and "operator role" in said:
        said += f" (an operator's token: {MINT_HINT})"
    return f"the {service} service answered {response.status_code}: {said}"


def _problems(found: Sequence[Mapping[str, Any]], shown: int = 3) -> str:
    """Validation errors — a 422's detail or pydantic's errors(), both a list of
    '{loc, msg}' — as one clause: where and why, the first few, and how many more."""

    def where(loc: Any) -> str:
        path = ""
        for part in loc if isinstance(loc, list | tuple) else [loc]:  # a server may send any JSON
            if isinstance(part, int):
                path += f"[{part}]"
            elif (named := _compact(part)) not in ("body", "query", "path") or path:
                path += f".{named}" if path else named
        return path or "the body"

    said = "; ".join(f"{where(p.get('loc', ()))}: {_compact(p.get('msg', 'invalid'))}" for p in found[:shown])
    more = len(found) - shown
    return said + (f" (and {more} more)" if more > 0 else "")


# -- showing what came back ----------------------------------------------------------------


def _emit(output: Output, data: Any, human: Callable[[], RenderableType | str]) -> None:
    """data as JSON on stdout for '--output json', else what human renders."""
    if output is Output.json:
        _json(data)
        return
    shown = human()
    if output is Output.wide and isinstance(shown, Table):
        # wide: as wide as the table needs, like 'kubectl -o wide' (the terminal may wrap)
        needed = Measurement.get(console, console.options.update_width(UNBOUNDED), shown).maximum
        _Console(width=max(console.width, needed), markup=False).print(shown)
        return
    console.print(shown, soft_wrap=isinstance(shown, str))  # a line stays one line when piped


def _json(data: Any) -> None:
    """'--output json': the API's data, and nothing else, on stdout."""
    print(json.dumps(data, indent=2))


def _short(an_id: str | None, output: Output) -> str:
    if an_id is None:
        return ""
    return an_id if output is Output.wide else an_id[:SHORT_ID]


def _age(iso: str, now: datetime) -> str:
    """How long ago iso was, in its largest unit: 42s, 5m, 3h, 2d."""
    then = datetime.fromisoformat(iso)
    seconds = max(0.0, (now - (then if then.tzinfo else then.replace(tzinfo=UTC))).total_seconds())
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _when(iso: str, output: Output, now: datetime) -> str:
    """Age in text, the timestamp itself in wide."""
    return iso if output is Output.wide else _age(iso, now)


def _check_service(service: str) -> str:
    """``order``, ``inventory`` or ``payment``; the names the services give themselves in
    logs, metrics and the dashboard (``order_svc``, …) are taken too."""
    try:
        return short_name(service_named(service.lower()))  # as statuses, in any case (a trial)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _check_external_id(given: str) -> str:
    """A customer or product id as the services take it (``events.values.ExternalId``),
    checked before it goes into a URL path."""
    from pydantic import TypeAdapter, ValidationError

    from events.values import ExternalId

    try:
        return str(TypeAdapter(ExternalId).validate_python(given))
    except ValidationError:
        raise typer.BadParameter("an id is 1-64 letters, digits and . _ : -, and not only dots") from None


def _check_subject(subject: str) -> str:
    if not is_subject(subject):
        raise typer.BadParameter(f"a token's subject is {SUBJECT_RULE}")
    return subject


def _check_services(services: list[str] | None) -> list[str] | None:
    return None if services is None else [_check_service(s) for s in services]


ServiceArg = Annotated[str, typer.Argument(help="order, inventory or payment", callback=_check_service)]


def _letter_id(given: str) -> int:
    """A dead letter's id as the services take it (``saga_kit.deadletters.LetterId``): the
    digits 0-9 only, 1 to 2**63-1. Python's int() read "1_0" as 10 and "+1", " 1" as 1, so
    a typo could replay or discard another letter (an attack trial), or page from another."""
    return _digits_id(given, "an id", "dlq list")


def _digits_id(given: str, what: str, listed_by: str) -> int:
    """An id of the digits 0-9 only, 1 to 2**63-1 (``_letter_id``); refused naming ``what``
    it should be and the command that lists them (``listed_by``)."""
    return _digits(given, 1, 2**63 - 1, what, f" ({listed_by})")


def _digits(given: str, low: int, high: int | None, what: str, where: str = "") -> int:
    """``given`` as a whole number of the digits 0-9 only, ``low`` to ``high`` (None: no
    end), or a usage error saying it is not ``what`` (and ``where`` such numbers are found)."""
    if not (given.isascii() and given.isdigit()):
        raise typer.BadParameter(f"{printable(repr(given), 40)} is not {what}: the digits 0-9 only{where}")
    number = int(given)
    if number < low or (high is not None and number > high):
        span = f"{low} or more" if high is None else f"from {low} to {high}"
        raise typer.BadParameter(f"{given[:40]} is not {what}: {span}{where}")
    return number


def _count(low: int, high: int | None = None) -> Callable[[str | int], int]:
    """An option's parser of a count, ``low`` to ``high``, of the digits 0-9 only: click's
    int() read "2_0" as 20, and its refusals were in pydantic's words ("Input should be
    greater than or equal to 1", an attack trial). The option's default (an int) passes."""
    return lambda given: given if isinstance(given, int) else _digits(given, low, high, "a count")


#: --limit of a list read from every service: how many of each (dlq list, audit list).
PerServiceLimit = Annotated[
    int, typer.Option(parser=_count(1, 1000), metavar="1-1000", help="the most of each service's")
]
LetterIdArg = Annotated[
    int, typer.Argument(parser=_letter_id, metavar="LETTER_ID", help="the dead letter's id (dlq list)")
]
STATUS_STYLE = {"PENDING": "yellow", "APPROVED": "green", "REJECTED": "red", "CANCELLED": "magenta"}


#: a readiness check's mark, as ``health`` shows it
CHECK_STYLE = {"ok": "", "degraded": "yellow", "FAILED": "red"}


def _status(status: str) -> Text:
    return _text(status, STATUS_STYLE.get(status, ""))


def _text(said: Any, style: str = "", limit: int = 10_000) -> Text:
    """What a service said, as a terminal may show it: a string with its control characters
    made visible (``events.values.printable``; an attack trial: an escape sequence in an
    answer reached the terminal) and what shows nothing escaped too (``_SHOWS_NOTHING``),
    anything else as compact JSON, cut to ``limit`` characters; never read as markup."""
    shown = printable(_compact(said), limit)
    return Text(_SHOWS_NOTHING.sub(_escaped, shown), style=style)


def _value(said: Any, style: str = "", limit: int = 10_000, escaped: bool = False) -> Text:
    """``_text`` of one value alone in a cell (an id, a name, a path, a key), its tabs,
    newlines and last spaces escaped (``\\t``, ``\\n``, ``\\x20``): ``/products/wid%20``
    read as ``/products/wid``, ``Widget\\t`` as ``Widget``, and a newline in a name split
    its row (re-check trials). A backslash is doubled, so that an escape is never the text
    of one (a subject ``mallory\\x20`` looked like ``mallory`` and a space), unless the
    service ``escaped`` it so already (an audit entry's path). A text not in Unicode's
    composed form (NFC) shows escaped what composing would change (``_composed_or_escaped``:
    ``e`` and U+0301, and U+212B, looked like ``é`` and ``Å``, re-check trials). A composed
    line's layout (``_text``) is left as it is."""
    if isinstance(said, str) and not escaped:
        said = said.replace("\\", "\\\\")
    if isinstance(said, str) and not unicodedata.is_normalized("NFC", said):
        said = _composed_or_escaped(said)
    shown = _text(said, style, limit)
    plain = _LAST_SPACES.sub(lambda found: "\\x20" * len(found[0]), _LAYOUT.sub(_escaped, shown.plain))
    shown.plain = _FIRST_MARK.sub(_escaped, plain)
    return shown


#: What a table cell shows escaped, beyond ``printable``'s, so that two texts differ on
#: screen when they differ (attack trials: audit entries looked alike): what Unicode says a
#: renderer shows nothing of (Default_Ignorable_Code_Point: U+200B, U+FEFF, U+00AD,
#: direction marks, variation selectors, the grapheme joiner, the Hangul fillers), the
#: other format characters, the line and paragraph separators (they broke a row in two),
#: a space that is not U+0020 (U+00A0, U+3000) and the blank braille pattern U+2800; and
#: what a terminal shows as one same box, or as nothing, whichever it is: private-use and
#: unassigned characters (U+E000 and U+E001 look alike). But not the two that an emoji shows
#: (Unicode TS #51): U+FE0F after a pictograph or a keycap's digit (its emoji form: "❤️"),
#: and U+200D joining pictographs into one ("👩‍💻").
_SHOWS_NOTHING = regex.compile(
    r"(?!(?<=[\p{Extended_Pictographic}0-9#*]\p{Emoji_Modifier}?)\uFE0F)"
    r"(?!(?<=[\p{Extended_Pictographic}\p{Emoji_Modifier}\uFE0F])\u200D(?=\p{Extended_Pictographic}))"
    r"[\p{Default_Ignorable_Code_Point}\p{Cf}\p{Co}\p{Cn}\p{Zl}\p{Zp}\u2800[\p{Zs}--\x20]]",
    regex.V1,
)
_LAST_SPACES = regex.compile(r"\x20+\Z")
#: A combining mark first in a cell: it has no letter of its own, so it draws on the cell's
#: border or padding, or shows nothing.
_FIRST_MARK = regex.compile(r"\A\p{M}")
_LAYOUT = regex.compile(r"[\t\n]")


def _composed_or_escaped(text: str) -> str:
    """``text`` with each character that Unicode's composition (NFC) would change escaped:
    one NFC replaces (U+212B ANGSTROM SIGN is U+00C5, U+037E is ";"), and a combining
    mark NFC would compose with the character before it (``e`` and U+0301 is ``é``);
    other marks, a Devanagari vowel sign's, are shown as they are."""
    shown, before = [], ""
    for ch in text:
        changed = unicodedata.normalize("NFC", ch) != ch
        if not changed and before and unicodedata.category(ch).startswith("M"):
            alone = unicodedata.normalize("NFC", before)
            changed = unicodedata.normalize("NFC", before + ch) != alone + ch
        shown.append(_escape(ch) if changed else ch)
        before = ch
    return "".join(shown)


def _escape(text: str) -> str:
    """``text`` as Python's escapes (``\\x1b``, ``\\u200b``, ``\\U000e0001``), all ASCII."""
    return text.encode("unicode_escape").decode("ascii")


def _escaped(found: regex.Match[str]) -> str:
    return _escape(found[0])


#: Columns of a fixed, short content (ids, states, amounts, ages): never wrapped.
def _fixed(header: str, justify: Any = "left") -> Column:
    return Column(header, no_wrap=True, justify=justify)


#: Columns of free text (names, reasons, lists): wrapped to what the terminal leaves, long
#: words folded rather than cut, so nothing is hidden.
def _free(header: str) -> Column:
    return Column(header, overflow="fold", min_width=len(header))


# -- dead letters ------------------------------------------------------------------------


@dlq.command("list")
def dlq_list(
    ctx: typer.Context,
    service: ServicesOpt = None,
    status: Annotated[
        LetterStatus, typer.Option(case_sensitive=False, help="only letters in this status (all: any)")
    ] = LetterStatus.PENDING,
    limit: PerServiceLimit = 100,
    before: Annotated[
        int | None,
        typer.Option(
            parser=_letter_id, metavar="LETTER_ID", help="only letters with a lower id (the next page)"
        ),
    ] = None,
    output: OutputOpt = Output.text,
) -> None:
    """Dead letters of every service, newest first. Those of a service that cannot be
    reached, takes the request and does not answer, or answers 5xx (its database away:
    503), are missing: a line on stderr names it (json: "unreachable", "not_answering"
    and "unavailable", each such service and why), and after the others are listed the
    exit code is 3 if one could not be reached or did not answer, 1 if one answered 5xx,
    and 0 when every service answered. A service that had more than --limit says
    so, with the --before that shows its next page."""
    params: dict[str, Any] = {"status": status.name, "limit": limit}
    if before is not None:
        params["before"] = before
    names = service or SERVICES
    each = _EachService.read(names, lambda name: _get_or_missing(ctx, name, "/dead-letters", params))
    letters = [{"service": name, **d} for name, found in each.found.items() for d in found]
    #: the services that answered as many as asked, the oldest shown past id 1 (ids start
    #: at 1: none is before it; a trial was told --before 1): there may be more. json's
    #: limit_reached, the same list (it named every service that filled the page)
    oldest = {name: min(d["id"] for d in found) for name, found in each.found.items() if len(found) >= limit}
    full = _there_may_be_more(oldest, limit, before, "id", output)
    if each.found or output is Output.json:
        read = list(each.found) if each.missing else None
        _emit(
            output,
            {
                "dead_letters": letters,
                "unreachable": each.unreachable,
                "not_answering": each.not_answering,
                "unavailable": each.unavailable,
                "limit_reached": full,
            },
            lambda: _letters_table(letters, status.name, output, read, before),
        )
    each.end("its dead letters are not listed")


def _there_may_be_more(
    oldest: Mapping[str, int], limit: int, before: int | None, unit: str, output: Output
) -> list[str]:
    """The services whose page was full (``oldest``: service → the lowest id or seq of
    its page of ``limit``), past the first (ids and seqs start at 1: none is before it; a
    trial was told --before 1); said on stderr, with the --before of each one's next
    page, unless the output is json (its ``limit_reached``)."""
    full = [name for name, first in oldest.items() if first > 1]
    if output is not Output.json:  # said, not shown as if it were all (an attack trial)
        for name in full:
            shown = f"the newest {limit}" + (f" before {unit} {before}" if before is not None else "")
            errors.print(
                f"{name}: {shown} shown, there may be more"
                f" (the next: --service {name} --before {oldest[name]}; or --limit, up to 1000)",
                style="dim",
            )
    return full


def _letters_table(
    letters: list[dict[str, Any]],
    status: str,
    output: Output,
    only: Sequence[str] | None = None,
    before: int | None = None,
) -> RenderableType:
    """text: service, id, event (and its saga), reason, age — plus the status when
    several are listed; wide adds where each came from and the full saga id. only: the
    services read, when not all that were asked could be; before: the --before given,
    named when none is found (without it, none before an id read as none at all)."""
    if not letters:
        return (
            f"no {status.lower()} dead letters"
            + (f" before id {before}" if before is not None else "")
            + (f" in {', '.join(only)}" if only else "")
        )
    wide = output is Output.wide
    now = datetime.now(UTC)
    columns = [_fixed("service"), _fixed("id", "right")]
    if wide or status == "ALL":
        columns.append(_fixed("status"))
    columns.append(_free("event"))
    if wide:
        columns += [_fixed("order"), _fixed("from"), _fixed("tries", "right")]
    columns += [_free("reason"), _fixed("at", "left") if wide else _fixed("age", "right")]
    table = Table(*columns)
    for d in letters:
        row: list[RenderableType] = [d["service"], str(d["id"])]
        if wide or status == "ALL":
            row.append(d["status"])
        event = _text(d["event_type"] or "—")  # none, as dlq show and the dashboard say it
        reason = _text(d["reason"])  # it quotes what arrived
        # a forged record's type and order read as what it was and the saga it belonged to
        claimed = f" {UNVERIFIED_MARK}" if d.get("unverified") else ""
        if d["event_type"]:
            event.append(claimed, style="dim")
        if wide:
            source = f"{d['source_topic']}[{d['source_partition']}]@{d['source_offset']}"
            order = _value(d["order_id"] or "").append(claimed if d["order_id"] else "", style="dim")
            row += [event, order, _text(source), str(d["replay_attempts"])]
        else:
            if d["order_id"]:
                event.append(f"\norder {_short(d['order_id'], output)}{claimed}", style="dim")
            if d["replay_attempts"]:
                reason.append(f" (replay attempts: {d['replay_attempts']})", style="dim")
            row.append(event)
        row += [reason, _when(d["created_at"], output, now)]
        table.add_row(*row)
    return table


#: Beside a letter's event type and order id in ``dlq show`` when nothing vouched for its
#: record (``unverified``: no signature verified, or a command's token never checked):
#: what the body claims, which its writer chose; and its short form in ``dlq list``.
UNVERIFIED = "(unverified claim)"
UNVERIFIED_MARK = "(claimed)"

#: A key's and a body's place in ``dlq show`` for a record the client could not read
#: (``unread``); a text that begins so has its first character escaped (``_NOT_TEXT``).
NOT_READ = "(not read: the Kafka client could not read the record; see reason)"


@dlq.command("show")
def dlq_show(
    ctx: typer.Context, service: ServiceArg, letter_id: LetterIdArg, output: OutputOpt = Output.text
) -> None:
    """One dead letter: why, where from, its headers and its original bytes."""
    d = _call(ctx, service, "GET", f"/dead-letters/{letter_id}")
    if output is Output.json:
        _json(d)
        return
    # a header's name is the writer's: folded past 32 columns (one of 100 characters took
    # the whole width, and every fact beside it was blank: a re-check trial)
    meta = Table.grid(Column(overflow="fold", max_width=32), Column(overflow="fold"), padding=(0, 2))
    for key in ("status", "reason", "event_type", "order_id", "replay_attempts", "created_at", "resolved_at"):
        shown = _text("—" if d[key] is None else d[key])  # it quotes what arrived
        if d.get("unverified") and key in ("event_type", "order_id") and d[key] is not None:
            shown.append(f" {UNVERIFIED}", style="dim")
        meta.add_row(key, shown)
    meta.add_row(
        "source", _text(f"{d['source_topic']} partition {d['source_partition']} offset {d['source_offset']}")
    )
    # a record the client could not read: its key and body are not known, not absent (a
    # tombstone's "(null)" beside "cannot read this record" read as what it held: a trial)
    unread = Text(NOT_READ, style="dim") if d.get("unread") else None
    meta.add_row("key", unread or _bytes_cell(d["key"]))
    if unread is not None:
        meta.add_row("headers", unread)
    for h in d["headers"]:
        withheld = f" ({h['value']['size']} bytes, withheld: a credential)" if h.get("redacted") else ""
        # a name and a value as a record's writer sent them (a newline split the row, and
        # "v" and "v" and a tab looked alike: a re-check trial)
        name = h["key"] if h.get("key_base64") is None else _utf8(h["key_base64"])
        shown = _value(f"header {name}")
        if h.get("key_truncated"):  # its start: an ellipsis alone may end a name
            shown.append(" (the start of a longer name)", style="dim")
        meta.add_row(shown, _bytes_cell(h["value"], withheld))
    if d["headers_total"] > len(d["headers"]):
        meta.add_row("headers", f"… {d['headers_total'] - len(d['headers'])} more not shown")
    console.print(Panel(meta, title=_text(f"{service} dead letter {letter_id}")))
    if unread is not None:
        console.print(Text("value: ") + unread)
        return
    value = d["value"]
    pretty = _pretty_json(value)
    if pretty is not None:  # labelled as every other body is (a trial read it as the panel's)
        console.print(Text("value:"))
        console.print(JSONHighlighter()(Text(pretty, overflow="fold")))
        return
    # its text itself, as the key's: an ESC and the text \x1b, a tombstone and the text
    # (null), looked alike here (a re-check trial)
    console.print(Text("value: ") + _bytes_cell(value), overflow="fold")
    if value is not None and value["truncated"]:
        console.print(
            Text(f"(all {value['size']} bytes: GET {_urls(ctx).of(service)}/dead-letters/{letter_id}/value)")
        )


def _pretty_json(view: dict[str, Any] | None) -> str | None:
    """A dead letter's body (a BytesView) as indented JSON, when it is JSON whose data
    indenting keeps: whole, nothing escaped by the service, no name given twice and every
    number with a fraction or an exponent written as Python writes it back (an integer, a
    string's escapes and white space are written Python's way); else None, and the text is
    shown as it came.
    ``{"id": "a", "id": "b"}`` was shown as ``{"id": "b"}``, and 12345678901234567890.10 as
    1.2345678901234567e+19 (an attack trial)."""
    if view is None or view["text"] is None or view["base64"] is not None or view["truncated"]:
        return None
    try:
        body = json.loads(view["text"], object_pairs_hook=once_each, parse_float=_float_as_written)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than we indent
        return None
    return json.dumps(body, indent=2)


def _float_as_written(written: str) -> float:
    """``parse_float`` of ``_pretty_json``: a number Python writes back as it was written,
    else ``ValueError``."""
    number = float(written)
    if json.dumps(number) != written:
        raise ValueError(f"{written} would be shown otherwise")
    return number


#: What ``_bytes_cell`` shows for what is not text: a null, bytes that are not UTF-8, and
#: (``NOT_READ``) what was not read.
_NOT_TEXT = ("(null)", "base64:", NOT_READ.partition(":")[0])


def _bytes_cell(view: dict[str, Any] | None, after: str = "") -> Text:
    """A BytesView of the dead-letter API in a cell of its own (``_value``), ``after``
    appended: the text itself, so an escape is never the text of one; and a text that
    begins as a null or bytes not UTF-8 are shown (``(null)``, ``base64:``) has its first
    character escaped (a header of the text ``(null)`` and a null header looked alike: an
    attack trial)."""
    cell = _value(_shown(view) + after)
    if view is not None and view["text"] is not None and cell.plain.startswith(_NOT_TEXT):
        cell.plain = f"\\x{ord(cell.plain[0]):02x}{cell.plain[1:]}"
    return cell


def _shown(view: dict[str, Any] | None) -> str:
    """A BytesView of the dead-letter API as one line: the text itself (from its ``base64``,
    given when the service escaped something), for ``_value`` to escape so that an escape
    is never the text of one (an ESC and the text ``\\x1b`` looked alike: an attack trial)."""
    if view is None:
        return "(null)"
    if view["text"] is None:
        shown = f"base64:{view['base64']}"
    elif view["base64"] is not None:
        shown = _utf8(view["base64"])
    else:
        shown = view["text"]
    return shown + (f" … ({view['size']} bytes)" if view["truncated"] else "")


def _utf8(encoded: str) -> str:
    """The text of UTF-8 bytes given in base64 (lone surrogates kept, as Kafka's header
    names may hold them)."""
    return base64.b64decode(encoded).decode("utf-8", "surrogatepass")


@dlq.command("replay")
def dlq_replay(
    ctx: typer.Context, service: ServiceArg, letter_id: LetterIdArg, output: OutputOpt = Output.text
) -> None:
    """Process a dead letter again (after fixing its cause). Its effect still happens once."""
    r = _call(
        ctx,
        service,
        "POST",
        f"/dead-letters/{letter_id}/replay",
        f"; see whether it was: sagactl dlq show {service} {letter_id}",
    )
    _emit(output, r, lambda: f"{service}'s dead letter {letter_id}: {r['status']} ({r['outcome']})")


@dlq.command("discard")
def dlq_discard(
    ctx: typer.Context, service: ServiceArg, letter_id: LetterIdArg, output: OutputOpt = Output.text
) -> None:
    """Decide a dead letter never needs processing; it is kept, marked DISCARDED."""
    r = _call(
        ctx,
        service,
        "POST",
        f"/dead-letters/{letter_id}/discard",
        f"; see whether it was: sagactl dlq show {service} {letter_id}",
    )
    _emit(output, r, lambda: f"{service}'s dead letter {letter_id}: {r['status']}")


# -- orders ------------------------------------------------------------------------------


def _check_via(via: str) -> str:
    """http or kafka, in any case (as every other choice sagactl takes: ``--via KAFKA``
    was a usage error, an attack trial)."""
    if via.lower() not in ("http", "kafka"):
        raise typer.BadParameter("http or kafka")
    return via.lower()


Via = Annotated[
    str,
    typer.Option(
        "--via",
        metavar="<http|kafka>",
        help="http (the API) or kafka (a command on orders.commands)",
        callback=_check_via,
    ),
]
#: The broker ``--via kafka`` sends to unless told: ``make run``'s.
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"

KafkaBootstrap = Annotated[
    str, typer.Option("--bootstrap", envvar="SAGACTL_KAFKA_BOOTSTRAP", help="the broker, for --via kafka")
]


def _kafka_only(ctx: typer.Context, via: str, **options: str) -> None:
    """A usage error (exit 2) when an option of ``--via kafka`` (parameter name → as
    typed) was given on the command line of an HTTP call: it was ignored, so ``cancel
    --no-wait`` or ``place --bootstrap host:port`` without ``--via kafka`` went through the
    API as if it had not been said (a trial). From the environment
    (``SAGACTL_KAFKA_BOOTSTRAP``) it stays quiet: that is for whichever command wants it."""
    if via == "kafka":
        return
    # by its name: typer's context is its own copy of click's, whose enum is not click's
    sources = {name: ctx.get_parameter_source(key) for key, name in options.items()}
    given = [name for name, source in sources.items() if source is not None and source.name == "COMMANDLINE"]
    if given:
        _fail(f"{' and '.join(given)} is for --via kafka: this goes through the API (--via http)", USAGE)


#: publish's: it always goes to the broker (it has no --via).
PublishBootstrap = Annotated[
    str, typer.Option("--bootstrap", envvar="SAGACTL_KAFKA_BOOTSTRAP", help="the broker to send it to")
]


def _check_order_id(given: str) -> str:
    """An order id or its first ``SHORT_ID`` or more characters (as tables show it),
    without the blanks around it. Anything shorter is a usage error: ``cancel 2f07`` took
    the one of the 1,000 most recent orders that started so, while an older one did too,
    and cancelled it — a refund and a restock nobody can take back (an attack trial)."""
    given = given.strip()
    if not given:
        raise typer.BadParameter("an order id, or its first characters, is needed")
    if not re.fullmatch(ORDER_ID_PREFIX, given):
        raise typer.BadParameter(
            f"{given!r} is not an order id or the first {SHORT_ID} or more characters of one"
            f" (tables show {SHORT_ID}; --output wide shows them whole)"
        )
    return given


OrderIdArg = Annotated[
    str,
    typer.Argument(
        help=f"an order id, or its first {SHORT_ID} or more characters (as tables show it)",
        callback=_check_order_id,
    ),
]


def _order_id(ctx: typer.Context, given: str) -> str:
    """The full id of the order ``given`` names: a full id, or the start of exactly one
    order's id among every order the caller may see (``GET /orders?order_id_prefix=``)."""
    try:
        return str(uuid.UUID(given))
    except ValueError:
        pass
    found = _call(ctx, "order", "GET", "/orders", params={"order_id_prefix": given, "limit": 2})
    if len(found) == 1:
        return str(found[0]["order_id"])
    if found:
        _fail(f"{given!r} is ambiguous: more than one order id starts with it; give more of the id")
    # a customer's token sees her own orders alone: another's was "no order id starts
    # with" it, though it is there (a newcomer trial); which, is not said
    _fail(f"no order id starts with {given!r} among the orders this token may see")


def _check_idempotency_key(given: str | None) -> str | None:
    """An Idempotency-Key without the blanks around it (HTTP drops them from a header's
    value), checked before anything is sent (usage errors, exit 2): an empty one was taken
    as none, and a retry with it placed the order again; a line break was "sent, and no
    answer came" (exit 4) of a header httpx refused to send (trials). A control character
    is refused, and what else the API refuses (``events.values.storable``); its length
    (at most 200 characters) is the API's to check."""
    if given is None:
        return None
    given = given.strip()
    if not given:
        raise typer.BadParameter("an empty key is no key: leave the option out for a new one")
    control = next((c for c in given if unicodedata.category(c) == "Cc"), None)
    if control is not None:  # a line break or a tab too, which stored text may have and a key not
        raise typer.BadParameter(f"a key must not contain the control character U+{ord(control):04X}")
    try:
        storable(given)
    except ValueError as exc:
        raise typer.BadParameter(str(exc).replace("text", "a key", 1)) from None
    return given


def _finite(given: float | None) -> float | None:
    """A number of seconds: ``nan`` and ``inf`` have no JSON (they were a traceback)."""
    if given is not None and not math.isfinite(given):
        raise typer.BadParameter(f"{given} is not a number of seconds")
    return given


def _deadline(given: float | None) -> float | None:
    """``--deadline``: a number of seconds the API takes (``events.values.DeadlineSeconds``),
    checked before anything is sent (0.5 was sent, and refused by the service in the API's
    words, exit 1: a newcomer trial)."""
    given = _finite(given)
    if given is not None and not MIN_DEADLINE_SECONDS <= given <= MAX_DEADLINE_SECONDS:
        raise typer.BadParameter(
            f"{given:g} is not {MIN_DEADLINE_SECONDS:g} to {MAX_DEADLINE_SECONDS:,g} seconds"
        )
    return given


@app.command("place")
def place(
    ctx: typer.Context,
    customer_id: Annotated[str, typer.Argument(help="the customer who orders", callback=_check_external_id)],
    items: Annotated[list[str], typer.Argument(help="product=quantity, e.g. widget=2")],
    deadline_seconds: Annotated[
        float | None,
        typer.Option(
            "--deadline",
            help="seconds the saga may take before it is cancelled (default: the service's, 30)",
            callback=_deadline,
        ),
    ] = None,
    via: Via = "http",
    bootstrap: KafkaBootstrap = DEFAULT_BOOTSTRAP,
    wait: Annotated[
        bool | None,
        typer.Option(
            "--wait/--no-wait",
            help="wait until the saga has finished (default: --via kafka waits, as a command has no"
            " answer of its own; --via http does not: the API's answer is the order, PENDING)",
            show_default=False,
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            help="--via http: the order's Idempotency-Key (default: a new one); the same key and"
            " order again answer the order it placed, never a second one",
            callback=_check_idempotency_key,
        ),
    ] = None,
    output: OutputOpt = Output.text,
) -> None:
    """Place an order: through the API (with an Idempotency-Key, so that the same command
    with the key again places it once at most), or as a PlaceOrder command on Kafka.
    Through the API it answers PENDING, the saga under way (--wait: its outcome); on
    Kafka it waits for the outcome (--no-wait: only that the command was sent). An outcome,
    APPROVED, REJECTED or CANCELLED, is exit 0: the order was placed and its end is known."""
    lines: list[dict[str, Any]] = []
    for item in items:
        product, sep, quantity = item.partition("=")
        if not sep or not (quantity.isascii() and quantity.isdigit()) or int(quantity) < 1:
            _fail(f"{item!r}: expected product=quantity, a whole number of 1 or more, e.g. widget=2", USAGE)
        if int(quantity) > MAX_LINE_QUANTITY:  # the API's bound, said before anything is sent
            _fail(f"{item!r}: a line's quantity is at most {MAX_LINE_QUANTITY:,}", USAGE)
        try:  # as balances and forget check theirs (a newcomer trial: 'a/b' was sent, and refused)
            _check_external_id(product)
        except typer.BadParameter as bad:
            _fail(f"{item!r}: {bad.message}", USAGE)
        if any(line["product_id"] == product for line in lines):
            _fail(f"{product!r} is named twice: name it once, with the quantity of both", USAGE)
        lines.append({"product_id": product, "quantity": int(quantity)})
    _kafka_only(ctx, via, bootstrap="--bootstrap")
    body: dict[str, Any] = {"customer_id": customer_id, "items": lines}
    if deadline_seconds is not None:
        body["deadline_seconds"] = deadline_seconds
    if via == "http":
        key = idempotency_key or uuid.uuid4().hex
        # quoted for a shell: the line is there to be pasted (a trial's key was "my key; rm x")
        again = f"; the same command with --idempotency-key {shlex.quote(key)} tells, placing it once at most"
        headers = {"Idempotency-Key": key.encode()}  # UTF-8, as the API reads it (httpx: ASCII only)
        response = _request(ctx, "order", "POST", "/orders", again, json=body, headers=headers)
        r = _answer(ctx, "order", "POST", "/orders", response)
        # saga_kit.http.IDEMPOTENT_REPLAYED, by its value: importing saga_kit.http (FastAPI)
        # would add ~0.7 s to every sagactl command
        replayed = response.headers.get("Idempotent-Replayed") == "true"
        if replayed and output is not Output.json:
            errors.print(
                f"placed before with Idempotency-Key {key}: this is that order, as it stands", style="dim"
            )
        if wait or (replayed and r["status"] != "PENDING"):  # the order itself: its reason too
            r = _await_outcome(ctx, r)
        why = f" ({r['reason']})" if r.get("reason") else ""
        _emit(output, r, lambda: f"order {r['order_id']}: {r['status']}{why}")
        if not wait and output is not Output.json:  # accepted, not finished: where its outcome will be
            errors.print(f"follow it: sagactl saga {r['order_id'][:8]}", style="dim")
        elif wait and output is not Output.json and r["status"] != "PENDING":
            _say_if_unsettled(ctx, r["order_id"])
        return
    if idempotency_key is not None:
        _fail(
            "--idempotency-key is the API's (--via http): on Kafka a command's own id is its"
            " idempotency key, and each command sagactl sends has a new one",
            USAGE,
        )
    from pydantic import ValidationError

    from events.codec import own_errors
    from events.commands import PlaceOrder, order_id_for
    from events.values import error_words

    try:
        command = PlaceOrder(command_id=uuid.uuid4(), **body)
    except ValidationError as exc:
        found = [{**e, "msg": error_words(e)} for e in own_errors(exc.errors())]
        _fail(f"not a valid order: {_problems(found)}", USAGE)
    _may_act_for(_urls(ctx), customer_id)
    # waited for or not, it is followed through the API, whose verifier the command's is
    # (--no-wait sent a command while the order URL was another's: a trial)
    _try_token(ctx, f"/commands/{command.command_id}")
    sent = {"command_id": str(command.command_id), "order_id": str(order_id_for(command.command_id))}
    _send_command(bootstrap, command, ctx.obj.token, sent["order_id"])
    said = f"sent PlaceOrder (order {sent['order_id']}), command {sent['command_id']}"
    _settle(ctx, output, sent, said, wait is not False, placing=True)


def _await_outcome(ctx: typer.Context, order: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """The order ``POST /orders`` accepted (its ``order_id`` and ``status``) once its saga
    has finished, as ``GET /orders/{id}`` gives it (its ``reason`` too: a key given again
    for a finished order answered its status alone, a newcomer trial): asked every 0.2 s
    until it is no longer PENDING, again while the order service is away
    (``_follow_order``). After timeout seconds the command ends naming the order, which is
    placed, and how to follow it: exit 1 if it was still PENDING, 3 if the service could
    not say (``_fail_waiting``)."""
    order_id = order["order_id"]
    end = time.monotonic() + timeout
    waits = _Waiting(ctx, order_id)

    def ended_yet(o: dict[str, Any]) -> bool:
        if o["status"] != "PENDING":
            return True
        waits.say()
        return False

    ended = _follow_order(ctx, order_id, ended_yet, end, f"order {order_id} is placed")
    if ended is None:
        _fail(
            f"order {order_id} is still PENDING after {timeout:.0f}s: it is placed;"
            f" follow it: sagactl saga {order_id[:8]}"
        )
    return ended


def _say_if_unsettled(ctx: typer.Context, order_id: str, within: float = 2.0) -> None:
    """After a wait for an order's outcome: if its saga is still not settled ``within``
    seconds (its explanation's ``settled`` false: a refund waiting on the provider, say),
    say on stderr what is still owed, by whom. An order that ended is not a saga that
    settled, and ``place --wait`` printed "CANCELLED (timeout)" alone while a refund was
    owed for 23 s more (a newcomer trial). Compensations usually follow in milliseconds:
    nothing is said of those."""
    end = time.monotonic() + within
    while True:
        response, _ = _poll(ctx, f"/orders/{order_id}/saga")
        if response is None:
            return  # only a help
        try:
            told = response.json()["explanation"]
            settled, owed = told["settled"], told["owed"]
        except (ValueError, KeyError, TypeError):
            return
        if settled is not False:
            return
        if time.monotonic() > end:
            break
        time.sleep(0.2)
    still = "; ".join(f"{o.get('owed_by')} to {o.get('action')}" for o in owed if not o.get("done_by"))
    errors.print(
        f"order {order_id[:8]} ended, not settled yet: still owed: {printable(still, 500)};"
        f" follow it: sagactl saga {order_id[:8]}"
    )


class _Waiting:
    """While a command waits for an order's outcome: every ``EVERY`` s, the saga's
    explanation, said on stderr once each time it waits on something new (the payment
    provider: "waiting on the payment provider since …"). In an outage ``place --wait``
    printed nothing for the whole of the order's deadline, then "CANCELLED (timeout)" (a
    newcomer trial)."""

    EVERY = 2.0

    def __init__(self, ctx: typer.Context, order_id: str) -> None:
        self.ctx, self.order_id = ctx, order_id
        self.next_at, self.said = time.monotonic() + self.EVERY, ""

    def say(self) -> None:
        if time.monotonic() < self.next_at:
            return
        self.next_at = time.monotonic() + self.EVERY
        response, _ = _poll(self.ctx, f"/orders/{self.order_id}/saga")
        try:
            verdict = str(response.json()["explanation"]["verdict"]) if response is not None else ""
        except (ValueError, KeyError, TypeError):
            return  # only a help: the wait goes on as before
        if verdict.startswith("in flight: waiting on") and verdict != self.said:
            self.said = verdict
            errors.print(f"order {self.order_id[:8]} {printable(verdict.removeprefix('in flight: '), 500)}")


def _follow_order(
    ctx: typer.Context, order_id: str, done: Callable[[dict[str, Any]], bool], end: float, what: str
) -> dict[str, Any] | None:
    """'GET /orders/{order_id}' every 0.2 s until ``done(order)`` (the order is returned)
    or the monotonic time ``end`` (None). A 404 (a command's order not placed yet) and
    the order service away (``_poll``) are asked again; away at the last try ends the
    command (``_fail_waiting``, ``what`` saying what was done)."""
    path = f"/orders/{order_id}"
    while True:
        response, away = _poll(ctx, path)
        if response is not None and response.status_code != 404:
            order: dict[str, Any] = _answer(ctx, "order", "GET", path, response)
            if done(order):
                return order
        if time.monotonic() > end:
            _fail_waiting(what, order_id, away)
            return None
        time.sleep(0.2)


def _poll(ctx: typer.Context, path: str) -> tuple[httpx.Response | None, _Missing | None]:
    """One ``GET path`` of the order service while a command waits for an outcome: its
    answer (None for a 5xx), or why there was none. A restart or an outage of the order
    service while it waits does not end the wait (an attack trial killed it during a
    ``place --wait``, and sagactl said "cannot reach" of an order it had placed); the
    caller ends it at its deadline with ``_fail_waiting``."""
    try:
        response = _send(ctx, "order", "GET", path)
    except _Missing as missing:
        return None, missing
    if response.is_server_error:
        return None, _Missing("unavailable", _refusal("order", response))
    return response, None


def _fail_waiting(done: str, order_id: str, away: _Missing | None) -> None:
    """End a wait for an order's outcome, at its deadline, if the order service could not
    be asked at the last try (away): what was done (``done``: "order … is placed"), why
    its outcome is not known, and how to follow it (exit 3, UNREACHABLE). Returns if it
    could be asked."""
    if away is not None:
        _fail(
            f"{done}, its outcome not known: {away.said}; once it answers, follow it:"
            f" sagactl saga {order_id[:8]}",
            UNREACHABLE,
        )


@app.command("forget")
def forget(
    ctx: typer.Context,
    customer_id: Annotated[
        str,
        typer.Argument(
            help="the customer whose personal data is to be forgotten", callback=_check_external_id
        ),
    ],
    output: OutputOpt = Output.text,
) -> None:
    """Forget a customer (operator): destroy its data keys, so its e-mail and shipping
    addresses are unreadable everywhere — databases, the Kafka log, backups. Its orders,
    totals, stock and payments stay."""
    r = _call(
        ctx,
        "order",
        "POST",
        f"/customers/{quote(customer_id, safe='')}/forget",
        f"; forgetting again is safe: sagactl forget {customer_id}",
    )
    _emit(
        output,
        r,
        lambda: (
            f"forgot {r['customer_id']}: {r['keys_destroyed']} data key(s) destroyed"
            # the service cannot tell "never gave personal data" from "forgotten before"
            # (a typo's "none was left" read as an earlier forget: an attack trial)
            + (
                ""
                if r["keys_destroyed"]
                else " (none live: no personal data of this customer here, or forgotten before)"
            )
        ),
    )


def _check_command_id(given: str) -> str:
    """A command's id: a UUID, as the client that sent it chose it (``--via kafka``
    prints it)."""
    try:
        return str(uuid.UUID(given.strip()))
    except ValueError:
        # whole: an order's id may be shortened (saga, cancel), a command's may not, and
        # "not a command id" alone read as a bug (a newcomer trial with its first 8 characters)
        raise typer.BadParameter(
            f"{given!r} is not a command id: give the whole UUID, as 'place --via kafka' or"
            " 'cancel --via kafka' printed it (only an order's id may be shortened)"
        ) from None


@app.command("command")
def command_outcome(
    ctx: typer.Context,
    command_id: Annotated[
        str,
        typer.Argument(
            help="the command's id, as 'place --via kafka' or 'cancel --via kafka' printed it",
            callback=_check_command_id,
        ),
    ],
    output: OutputOpt = Output.text,
) -> None:
    """What became of a command sent on Kafka (a customer's own, any for an operator):
    applied, and its order's status now; refused, and why; dead-lettered (held, or
    discarded: an operator's to read); or not taken yet, or never sent. Exit 0 when its
    outcome is known, whatever it is (the outcome says whether it took effect); 1 when it
    is not (not taken yet, or never sent), or a service refused."""
    path = f"/commands/{command_id}"
    response = _request(ctx, "order", "GET", path)
    if response.status_code == 404:  # a customer's: not its command, or not taken yet
        _fail(
            f"{_refusal('order', response)}: not taken yet (ask again in a moment), or not a command"
            " about your orders, or one refused for its token (an operator reads why); an order's"
            " id is followed with sagactl saga"
        )
    r = _answer(ctx, "order", "GET", path, response)

    def said() -> str:
        outcome, order = r["outcome"], r["order_id"]
        if outcome in ("placed", "cancelled"):
            why = f" ({r['order_reason']})" if r.get("order_reason") else ""
            # "a copy refused: command_id_reused: a copy sent under this id was refused: …" (a trial)
            copy = f"; {r['detail']} ({r['reason']})" if r.get("reason") else ""
            return f"command {command_id}: {outcome}; order {order}: {r['status']}{why}{copy}"
        if outcome == "rejected":
            return f"command {command_id}: rejected: {r['reason']}: {r['detail']}"
        if outcome == "dead_lettered":
            return f"command {command_id}: dead-lettered: {r['detail']}"  # held, or discarded
        return f"command {command_id}: not taken yet, or never sent"

    _emit(output, r, lambda: printable(said(), 10_000))  # what the service said, made visible
    if r["outcome"] == "unknown":  # as a customer's 404, and 'sagactl saga' of no order: an
        raise typer.Exit(REFUSED)  # operator's typo'd id exited 0 (a newcomer trial)


@app.command("cancel")
def cancel(
    ctx: typer.Context,
    order_id: OrderIdArg,
    via: Via = "http",
    bootstrap: KafkaBootstrap = DEFAULT_BOOTSTRAP,
    wait: Annotated[
        bool | None,
        typer.Option(
            "--wait/--no-wait",
            help="--via kafka only: wait for the command's outcome (the default there), or not"
            " (over HTTP the answer is the cancelled order)",
            show_default=False,
        ),
    ] = None,
    output: OutputOpt = Output.text,
) -> None:
    """Cancel a PENDING or APPROVED order; its stock is released and its charge refunded."""
    _kafka_only(ctx, via, bootstrap="--bootstrap", wait="--wait/--no-wait")
    order_id = _order_id(ctx, order_id)
    if via == "http":
        look = f"; see whether it was: sagactl saga {order_id}"
        r = _call(ctx, "order", "POST", f"/orders/{order_id}/cancel", look)
        _emit(output, r, lambda: f"order {r['order_id']}: {r['status']}, compensation under way")
        if output is not Output.json:  # as place says where its outcome will be
            errors.print(f"follow it: sagactl saga {r['order_id'][:8]}", style="dim")
        return
    # a command for an order that cannot be cancelled, or that the token may not see, is
    # refused: a customer's wait ended in the CANCELLED of an order cancelled before, as
    # if its own command had done it, or in a minute of polling a 404 (an attack trial).
    # The API says so before anything is sent
    _need_token(ctx.obj.token)
    status = _call(ctx, "order", "GET", f"/orders/{order_id}")["status"]
    if transition(OrderStatus(status), CANCEL_REQUESTED) is None:  # the order service's rule
        _fail(
            f"order {order_id} is {status}: only a PENDING or APPROVED order can be cancelled"
            " (order_not_cancellable; nothing was sent)"
        )
    from events.commands import CancelOrder

    command = CancelOrder(command_id=uuid.uuid4(), order_id=uuid.UUID(order_id))
    _send_command(bootstrap, command, ctx.obj.token, order_id)
    sent = {"command_id": str(command.command_id), "order_id": order_id}
    said = f"sent CancelOrder (order {order_id}), command {sent['command_id']}"
    _settle(ctx, output, sent, said, wait is not False, placing=False)


def _settle(
    ctx: typer.Context,
    output: Output,
    sent: dict[str, str],
    said: str,
    wait: bool,
    *,
    placing: bool,
) -> None:
    """After a command went to Kafka (placing: a PlaceOrder): say so, and with wait show
    what became of it ('--output json': only that, or sent when not waiting)."""
    if output is not Output.json:
        console.print(said, soft_wrap=True)
    if not wait:
        if output is Output.json:
            _json(sent)
        else:  # sent, not taken yet: where its outcome will be
            errors.print(
                f"follow it: {_followed(sent['command_id'], sent['order_id'], placing)}", style="dim"
            )
        return
    r = _await_command(ctx, sent)
    why = f" ({r['order_reason']})" if r.get("order_reason") else ""
    _emit(output, r, lambda: f"order {r['order_id']}: {r['status']}{why}")


def _may_act_for(urls: Urls, customer_id: str) -> None:
    """Fail at once when the token of urls plainly may not act for ``customer_id`` (a
    customer's token for another customer), by the order service's own rule
    (``Principal.may_act_for``): the service would refuse the command, and only an operator
    may read why, so sagactl waited a minute for an outcome that never came (a newcomer
    trial). The message names where the token came from (--token or SAGA_TOKEN). The token
    is read, not verified: the service verifies it; one sagactl cannot read is left to the
    service."""
    import jwt

    from saga_kit.auth import Principal, roles_named

    token = urls.token
    if not token:
        return
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
        roles = roles_named(claims.get("roles", ()))
        principal = Principal(str(claims["sub"]), roles)
    except (jwt.PyJWTError, KeyError, TypeError):
        return
    if roles and not principal.may_act_for(customer_id):
        _fail(
            f"the token ({urls.token_from}) names {principal.subject!r}, a customer, who may act for"
            " itself only:"
            f" the order service would refuse a command for {customer_id!r} (forbidden)"
        )


def _try_token(ctx: typer.Context, path: str) -> None:
    """Before a command is sent to be followed through the API: end the command if the
    order service refuses its token at ``GET path`` (401; the command would be refused
    with it, and only an operator may read why — a trial's expired token was sent, and
    its wait then said 401), or if the order service's URL is another's (421: a trial's
    command was placed, and its wait then said "nothing was done"). An order service out
    of reach now is for the wait to tell."""
    asked, _ = _poll(ctx, path)
    if asked is not None and asked.status_code == 401:
        _fail(f"{_refusal('order', asked)}; a command would be refused with it: nothing was sent")
    if asked is not None and asked.status_code == 421:  # the outcome could not be followed there
        _fail(f"{_refusal('order', asked)}; nothing was sent", USAGE)


def _followed(command_id: object, order_id: str, placing: bool) -> str:
    """How a command sent on Kafka is followed: its own outcome, or its order's (once the
    order service has taken it, for a command that places it)."""
    taken = " once the order service has taken it" if placing else ""
    return f"sagactl command {command_id}, or sagactl saga {order_id}{taken}"


def _need_token(token: str | None) -> None:
    """A command on Kafka without a token is a usage error, before anything is asked or sent."""
    if not token:
        _fail(
            "--via kafka needs a bearer token (--token or SAGA_TOKEN): the order service refuses a"
            " command without one (missing_token); export SAGA_TOKEN=$(sagactl token) mints an"
            " operator's with make run's key, and 'sagactl publish' sends any record as it is",
            USAGE,
        )


def _send_command(bootstrap: str, command: Any, token: str | None, order_id: str) -> None:
    """Produce command (about the order ``order_id``) to orders.commands, keyed by its
    command_id, with token in its authorization header (the order service authorizes it
    like an HTTP call). No token is a usage error before anything is sent: the command
    would be refused (``missing_token``), and its outcome only an operator may read (a
    newcomer trial)."""
    from events.commands import AUTHORIZATION, PlaceOrder, encode_command
    from events.topics import COMMANDS

    _need_token(token)
    headers = [(AUTHORIZATION, f"Bearer {token}".encode())]
    followed = _followed(command.command_id, order_id, isinstance(command, PlaceOrder))
    look = f"; see whether it was taken: {followed}"
    _produce(bootstrap, COMMANDS, encode_command(command), str(command.command_id).encode(), headers, look)


def _produce(
    bootstrap: str,
    topic: str,
    value: bytes | None,
    key: bytes | None,
    headers: list[tuple[str, bytes]],
    look: str,
) -> tuple[int, int]:
    """Produce one record and wait for the broker's acknowledgement (``acks=all``),
    connecting as the environment's Kafka security settings say; its (partition,
    offset). A broker away or refusing is one sentence and exit 3 (UNREACHABLE); a
    bootstrap list or security settings that cannot be used, exit 2 (USAGE): checked here,
    where they are used (``place --via http`` has no use for them). A record handed to the
    broker whose acknowledgement never came may have been written: exit 4 (IN_DOUBT),
    ``look`` saying how to learn whether (it was "cannot send", exit 3, which says nothing
    was sent, of a command the order service then carried out: an attack trial)."""
    import asyncio

    try:
        kafka_bootstrap(bootstrap)
    except ValueError as exc:
        _fail(f"--bootstrap (or SAGACTL_KAFKA_BOOTSTRAP): {exc}", USAGE)

    from aiokafka import AIOKafkaProducer

    from saga_kit.errors import described
    from saga_kit.kafka import ConnectionErrors
    from saga_kit.kafka_security import KafkaClientSettings, KafkaSecurityError

    try:
        # a TLS file that cannot be read too, by its variable and path (an attack trial: a
        # missing KAFKA_SSL_CAFILE was "FileNotFoundError … is the system running?", exit 3)
        security = KafkaClientSettings().usable_kafka_security()
    except KafkaSecurityError as exc:
        _fail(f"cannot connect to Kafka: {exc}", USAGE)

    from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError, TopicAuthorizationFailedError

    # whom the broker's ACLs judge: the SCRAM user, or the name in a client certificate
    authenticated = security.sasl or bool(security.ssl_certfile)
    user = f"Kafka user {security.sasl_username!r}" if security.sasl else "this client's certificate"

    handed = False  # the record is on its way to the broker: it may be written from here

    async def send() -> tuple[int, int]:
        nonlocal handed
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", request_timeout_ms=10_000, **security.client_kwargs()
        )
        try:  # stopped even when it could not start: else its warning follows the one line
            await producer.start()
            # a broker that makes a topic on first use (Tansu) took a misspelt one as new
            known = (await producer.client.fetch_all_metadata()).topics()
            if topic not in known and authenticated:  # a broker shows a user only what it may describe
                _fail(
                    f"the broker shows {user} no topic {topic!r}: there is"
                    " none, or its ACLs do not let it see that one; it may see:"
                    f" {', '.join(sorted(known)) or 'none'}"
                )
            if topic not in known:  # a usage error, nothing sent (it was exit 1: a newcomer trial)
                has = ", ".join(sorted(known)) or "none"
                _fail(f"the broker has no topic {topic!r}; it has: {has}", USAGE)
            handed = True
            sent = await producer.send_and_wait(topic, value, key=key, headers=headers or None)
            return int(sent.partition), int(sent.offset)
        finally:
            await producer.stop()

    # the client logs each failed connection on its own, and raises only "Unable to
    # bootstrap": the one line below says it, and why, from what it logged
    logging.getLogger("aiokafka").propagate = False
    try:
        with ConnectionErrors() as connecting:
            return asyncio.run(send())
    except typer.Exit:  # said already (no such topic)
        raise
    except TopicAuthorizationFailedError:  # the broker's ACLs: this user may see the topic, not write it
        _fail(
            f"the broker refused: {user} may not write to {topic!r}"
            " (its ACLs; a client that sends commands may write orders.commands only)"
        )
    except MessageSizeTooLargeError:  # the client's own limit, checked before sending
        _fail(
            f"the record ({len(value or b'')} bytes of body) is larger than the Kafka client sends (1 MB)",
            USAGE,  # checked before anything is sent
        )
    except Exception as exc:  # the broker is away or refuses: one sentence
        if handed:  # and may have written it
            _fail(
                f"the broker at {bootstrap} was sent the record for {topic} and did not acknowledge it"
                f" ({described(exc)}): it may have been written{look}",
                IN_DOUBT,
            )
        cause: BaseException = exc
        if isinstance(exc, KafkaConnectionError):
            refusal = connecting.refusal(security)
            if refusal is not None:
                _fail(f"cannot connect to Kafka at {bootstrap}: {refusal}")
            if connecting.errors:  # why it could not connect, not "Unable to bootstrap from [(…)]"
                cause = connecting.errors[-1]
        hint = (
            f"is the system running? 'make run' starts it, its broker at {DEFAULT_BOOTSTRAP};"
            " --bootstrap or SAGACTL_KAFKA_BOOTSTRAP names another"
            if bootstrap == DEFAULT_BOOTSTRAP
            # given: 9092 was beside the point (an operator trial's broker was restarting)
            else "is the system running, its broker there, as --bootstrap or SAGACTL_KAFKA_BOOTSTRAP"
            " says? a broker that restarts takes a few seconds: send it again"
        )
        _fail(f"cannot send to Kafka at {bootstrap}: {described(cause)} ({hint})", UNREACHABLE)


def _argument_bytes(given: str) -> bytes:
    """The bytes of a command-line argument as given: one that is not UTF-8 reaches Python
    as surrogate escapes (PEP 383), and goes back to its bytes (``encode()`` of it was a
    traceback: an attack trial's ``--value $'\\xff\\xfe{}'``)."""
    return given.encode("utf-8", "surrogateescape")


def _header(given: str) -> tuple[str, bytes]:
    name, equals, value = given.partition("=")
    if not equals or not name:
        raise typer.BadParameter(f"{given!r} is not NAME=VALUE", param_hint="-H/--header")
    try:
        name.encode("utf-8")  # a header's name is text on the wire (its value any bytes)
    except UnicodeEncodeError:
        # its bytes as given ('ev\xffent'), not Python's surrogate escapes of them
        said = f"the header name {printable(repr(_argument_bytes(name))[1:], 80)} is not UTF-8"
        raise typer.BadParameter(said, param_hint="-H/--header") from None
    return name, _argument_bytes(value)


@app.command("publish")
def publish(
    topic: Annotated[str, typer.Argument(help="the topic, e.g. orders.events")],
    key: Annotated[
        str | None, typer.Option("--key", help="the record's key (a saga's: its order id)")
    ] = None,
    header: Annotated[
        list[str] | None,
        typer.Option("--header", "-H", help="NAME=VALUE, a header of the record; again for more"),
    ] = None,
    value: Annotated[
        str | None,
        typer.Option("--value", help="the record's body; without it, the body is read from standard input"),
    ] = None,
    tombstone: Annotated[bool, typer.Option("--tombstone", help="no body at all (a null value)")] = False,
    bootstrap: PublishBootstrap = DEFAULT_BOOTSTRAP,
    output: OutputOpt = Output.text,
) -> None:
    """Publish one record as it is, unsigned and unchecked — to see what the services do
    with what anyone who can write to a topic may send (a dead letter, with its reason).
    Prints its partition and offset. Events the services believe are signed by their
    producer (README, signed events): for real work use the API, or place and cancel
    with --via kafka."""
    headers = [_header(h) for h in header or []]
    if tombstone and value is not None:
        _fail("--tombstone is a record with no body: give it no --value", USAGE)
    if tombstone and key is None:  # Kafka's producer refuses a record with neither
        _fail("a tombstone deletes a key: give it one with --key", USAGE)
    if value is None and not tombstone and sys.stdin.isatty():
        _fail(
            "give the record's body with --value, or on standard input (a pipe); --tombstone for none", USAGE
        )
    given = None if value is None else _argument_bytes(value)
    body = None if tombstone else (given if given is not None else sys.stdin.buffer.read())
    look = "; sent again, it may be there twice"
    partition, offset = _produce(
        bootstrap, topic, body, None if key is None else _argument_bytes(key), headers, look
    )
    if output is Output.json:
        _json({"topic": topic, "partition": partition, "offset": offset})
    else:
        print(f"sent to {topic} partition {partition} offset {offset}")


def _await_command(ctx: typer.Context, sent: Mapping[str, str], timeout: float = 60.0) -> dict[str, Any]:
    """Poll 'GET /commands/{id}' until the command was refused (the command fails), or
    applied and its order is no longer PENDING (its CommandView is returned). A customer
    reads its own commands there (an operator any): until the order service has taken
    one, it is a 404 to a customer, ``unknown`` to an operator. It followed a customer's
    command through its order once, and took another's cancel of it for its own (of two
    cancels at once, both said CANCELLED: an attack trial), or learnt nothing of a
    refusal (an overloaded order service) for a minute."""
    command_id = sent["command_id"]
    end = time.monotonic() + timeout
    taken = False  # applied, its order's saga under way
    waits = _Waiting(ctx, sent["order_id"])
    while True:
        path = f"/commands/{command_id}"
        response, away = _poll(ctx, path)
        if response is not None and response.status_code != 404:
            r: dict[str, Any] = _answer(ctx, "order", "GET", path, response)
            taken = r["outcome"] in ("placed", "cancelled")
            if taken and r["status"] != "PENDING":
                return r
            if taken:
                waits.say()
            if r["outcome"] == "rejected":
                _fail(f"command {command_id} was rejected: {r['reason']}: {r['detail']}")
            if r["outcome"] == "dead_lettered":  # held, not refused: waiting would wait for ever
                _fail(f"command {command_id} was dead-lettered: {r['detail']}")
        if time.monotonic() > end:
            _fail_waiting(f"command {command_id} was sent", sent["order_id"], away)
            if taken:  # answered, and its saga goes on (an attack trial: "no answer" was said)
                _fail(
                    f"order {sent['order_id']} is still PENDING after {timeout:.0f}s: command"
                    f" {command_id} was taken; follow it: sagactl saga {sent['order_id'][:8]}"
                )
            if response is not None and response.status_code == 404:  # a customer's
                _fail(
                    f"no outcome of command {command_id} after {timeout:.0f}s: not taken yet, or refused"
                    " for its token, which only an operator can read (with an operator's token:"
                    f" sagactl command {command_id})"
                )
            _fail(f"no answer to command {command_id} after {timeout:.0f}s")
        time.sleep(0.2)


@app.command("orders")
def orders(
    ctx: typer.Context,
    status: Annotated[
        OrderStatus | None,
        typer.Option(case_sensitive=False, help="only orders in this status"),
    ] = None,
    customer: Annotated[str | None, typer.Option(help="only this customer's orders")] = None,
    limit: Annotated[
        int, typer.Option(parser=_count(1, 1000), metavar="1-1000", help="the most to list")
    ] = 30,
    offset: Annotated[
        int,
        typer.Option(
            parser=_count(0, 1_000_000),
            metavar="0-1000000",
            help="skip that many of the newest (the next page)",
        ),
    ] = 0,
    output: OutputOpt = Output.text,
) -> None:
    """Most recent orders, optionally only those in one status, or of one customer; a
    full page says on stderr how to read the next."""
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    if status:
        params["status"] = status.value
    if customer is not None:
        params["customer_id"] = customer
    rows = _call(ctx, "order", "GET", "/orders", params=params)
    after = f" after the newest {offset}" if offset else ""
    if len(rows) >= limit:  # as dlq list says (a newcomer trial: no word); on stderr, json or not
        # "orders 5 to 6 shown (newest first)", not "2 more after the newest 4" (read awkwardly)
        shown = (
            f"orders {offset + 1} to {offset + limit} shown (newest first)"
            if offset
            else f"the newest {limit} shown"
        )
        errors.print(
            f"{shown}, there may be more (the next: --offset {offset + limit}; or --limit, up to 1000)",
            style="dim",
        )
    _emit(output, rows, lambda: _orders_table(rows, output) if rows else f"no orders{after}")


def _orders_table(rows: list[dict[str, Any]], output: Output) -> RenderableType:
    """text: short order id, customer, status (and why, below it), total, one line per
    item, age; wide: full ids, the reason in its own column, the time placed."""
    if not rows:
        return "no orders"
    wide = output is Output.wide
    now = datetime.now(UTC)
    # text: the reason goes under the status, in words, in a column as wide as the longest
    # reason, up to 30% of the terminal, at least 12 (it wrapped at any width, and at 80
    # columns with room to spare: newcomer trials; "cancelled by customer" folded in a table
    # 74 wide at a quarter: a later one)
    status = _fixed("status") if wide else Column("status", width=12, overflow="fold")
    if not wide:  # at 80 columns 24: the longest reason the order service gives is 21
        longest = max(len(printable(o["reason"] or "", 40)) for o in rows)
        status.width = max(12, min(longest, console.width * 3 // 10))
    columns = [_fixed("order"), _free("customer"), status]
    if wide:
        columns.append(_fixed("reason"))
    columns += [
        _fixed("total", "right"),
        _free("items"),
        _fixed("placed", "left") if wide else _fixed("age", "right"),
    ]
    table = Table(*columns)
    for o in rows:
        state = _status(o["status"])
        reason = o["reason"] or ""
        if reason and not wide:
            state.append_text(_text("\n" + reason.replace("_", " "), "dim"))
        row: list[RenderableType] = [_short(o["order_id"], output), _value(o["customer_id"]), state]
        if wide:
            row.append(_text(reason))
        items = "\n".join(f"{i['quantity']} x {i['product_id']}" for i in o["items"])
        # an order rejected before it was priced (no stock) has no total: "—", as every
        # table shows nothing known (a blank read as a cell not filled in: a newcomer trial)
        row += [o["total"] or "—", _text(items), _when(o["created_at"], output, now)]
        table.add_row(*row)
    return table


def _ms(a: str, b: str) -> float:
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds() * 1000


def _took(a: str, b: str) -> str:
    """The time from a to b (ISO 8601 timestamps) as a timeline shows it, to three or four
    figures: milliseconds under 10 s, seconds with a tenth under 10 minutes, minutes with a
    tenth under 10 hours, then hours (a timeout's "+62345 ms" was counted by eye: a
    newcomer trial; a day's deadline read "86400.0 s")."""
    ms = round(_ms(a, b))  # 9999.6 ms is 10.0 s, not "10000 ms"
    if abs(ms) < 10_000:
        return f"{ms} ms"
    if abs(ms) < 600_000:
        return f"{ms / 1_000:.1f} s"
    if abs(ms) < 36_000_000:
        return f"{ms / 60_000:.1f} min"
    return f"{ms / 3_600_000:.1f} h"


#: What of an event's payload the timeline shows beside it.
TIMELINE_FIELDS = ("reason", "total", "amount", "product_ids")


def _brief(payload: Mapping[str, Any]) -> str:
    """The fields of payload worth a glance, as key=value (lists and objects as
    compact JSON), never a Python repr."""
    # in TIMELINE_FIELDS' order, not the payload's: a line cut to the terminal's width kept
    # a PaymentFailed's amount and lost its reason (a trial)
    return " ".join(f"{k}={_compact(payload[k])}" for k in TIMELINE_FIELDS if k in payload)


def _compact(value: Any) -> str:
    """A JSON value as a line shows it: a string as it is, anything else as compact JSON
    (never a Python repr)."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


@app.command("saga")
def saga(ctx: typer.Context, order_id: OrderIdArg, output: OutputOpt = Output.text) -> None:
    """One saga: why it ended so and whether everything it owed was done, then its timeline as a
    causation tree (which event caused which) with the time of each step."""
    s = _call(ctx, "order", "GET", f"/orders/{_order_id(ctx, order_id)}/saga")
    if output is Output.json:
        _json(s)
        return
    from rich.tree import Tree

    why = s["explanation"]
    summary = Table.grid(Column(no_wrap=True), Column(overflow="fold"), padding=(0, 2))
    status = _status(s["status"])
    if s["reason"]:
        status.append_text(_text(f" ({s['reason']})"))
    summary.add_row("status", status)
    summary.add_row("why", _text(why["verdict"]))
    for c in why["owed"]:
        line = Text.assemble(
            ("✓", "green") if c["done_by"] else ("✗ still owed", "red"),
            # "(for PaymentCompleted: —)" left a newcomer guessing what the dash meant (a trial)
            _text(f" {c['owed_by']}: {c['action']} (for {c['because_of']}: {c['done_by'] or 'not yet'})"),
        )
        summary.add_row("owed", line)
    for r in why.get("refused", []):
        summary.add_row("refused", _text(f"{r['event_type'] or '?'}: {r['reason']}"))
    verdict = {True: ("yes", "green"), False: ("NO", "red"), None: ("saga in flight", "yellow")}
    summary.add_row("settled", Text(*verdict[why["settled"]]))
    summary.add_row("trace", s["trace_id"] or "—")
    # as wide as what it holds, not the terminal (at 200 columns, half of it was empty)
    console.print(Panel(summary, title=_text(f"saga {s['order_id']}"), expand=False))

    events = s["events"]
    if not events:
        return
    start = events[0]["occurred_at"]
    by_id = {e["event_id"]: e for e in events}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for e in events:
        parent = e["causation_id"] if e["causation_id"] in by_id else None
        children.setdefault(parent, []).append(e)
    # the tree follows causes, not time, and a compensation was marked by its colour alone,
    # lost in a pipe (a newcomer trial): the title says so, and ↩ marks one
    tree = Tree(
        f"timeline ({len(events)} events, each under its cause; + since the saga started,"
        " Δ since its cause; ↩ a compensation)"
    )

    def label(e: dict[str, Any]) -> Text:
        cause = by_id.get(e["causation_id"] or "")
        delta = f"  Δ {_took(cause['occurred_at'], e['occurred_at'])}" if cause else ""
        brief = _brief(e["payload"])
        kind = (f"↩ {e['event_type']}", "red") if e["compensating"] else (e["event_type"], "cyan")
        return Text.assemble(
            _text(*kind),
            " ",
            _text(e["producer"], "dim"),
            f"  +{_took(start, e['occurred_at'])}{delta}",
            _text(f"  {brief}" if brief else ""),
        )

    def grow(node: Tree, parent: str | None) -> None:
        for e in children.get(parent, []):
            grow(node.add(label(e)), e["event_id"])

    grow(tree, None)
    console.print(tree)


@app.command("tail")
def tail(
    ctx: typer.Context,
    from_start: Annotated[
        bool, typer.Option("--from-start", help="replay all recorded events first")
    ] = False,
    count: Annotated[
        int | None,
        typer.Option(parser=_count(1), metavar="N", help="stop after this many events (1 or more)"),
    ] = None,
    output: OutputOpt = Output.text,
) -> None:
    """Follow every saga's events live, as the order service records them (Ctrl-C stops).
    '--output json' prints one JSON object per line. A stream the service ends (it
    restarted, or this terminal fell behind) is resumed after the last event shown; each
    event is shown once, and without --from-start none from before tail began."""
    url = f"{_urls(ctx).order}/saga-events/stream"
    last_id: str | None = None  # of the last event shown: where a new stream resumes
    shown, connected = 0, False
    # a resumed stream sends again the events of the last LATE_COMMIT_WINDOW (30 s) before
    # its Last-Event-ID, so that one committed late is not skipped: each is shown once
    seen: dict[str, None] = {}
    # why the stream went away, said once until it is back (a restart of the order service
    # was six lines: a trial; then two, a broken stream and refused connections), then "resumed"
    away: str | None = None
    # without --from-start, new events only: the window a resumed stream sends again held
    # events from before tail began, shown as if new (a trial); the first one shown is
    # where tail began, and what comes later below it is shown only if it occurred after
    began, first_seq = datetime.now(UTC), None
    try:
        while True:
            resume = ({"Last-Event-ID": last_id} if last_id else {}) | _meant_for("order")
            params = {"after": 0} if from_start and not last_id else {}
            try:
                with (
                    httpx.Client(headers=_urls(ctx).headers, timeout=HTTP_TIMEOUT) as http,
                    connect_sse(http, "GET", url, params=params, headers=resume) as source,
                ):
                    if source.response.is_error:
                        source.response.read()
                        if not (connected and source.response.status_code == 503):
                            misdirected = source.response.status_code == 421  # as every command's
                            _fail(_refusal("order", source.response), USAGE if misdirected else REFUSED)
                        # followed before: the service is back but busy (every stream
                        # taken, its database away); it says when to try again
                        wait = source.response.headers.get("retry-after", "")
                        errors.print(f"{_refusal('order', source.response)}; trying again", style="dim")
                        time.sleep(int(wait) if wait.isdigit() and int(wait) <= 60 else 1)
                        continue
                    if not connected and not from_start and output is not Output.json:
                        errors.print(  # else it looks hung while idle
                            "following new events (--from-start shows the earlier ones); Ctrl-C stops",
                            style="dim",
                        )
                    connected = True
                    if away is not None:
                        errors.print("resumed", style="dim")
                        away = None
                    _wait_for_ever(source.response)
                    for sse in source.iter_sse():
                        if sse.event != "saga-event" or sse.id in seen:
                            continue
                        if not from_start and _before(sse, first_seq, began):
                            continue
                        if first_seq is None and sse.id.isdigit():
                            first_seq = int(sse.id)
                        seen[sse.id] = None
                        if len(seen) > TAIL_SEEN_IDS:
                            del seen[next(iter(seen))]  # the oldest: long out of any window
                        _show_saga_event(sse.data, output)
                        last_id, shown = sse.id, shown + 1
                        if count is not None and shown >= count:
                            return
            except httpx.HTTPError as exc:
                if not connected:  # never reached it: nothing to resume
                    asked = "GET /saga-events/stream"
                    _fail(_unreachable("order", _urls(ctx).order, exc, asked), UNREACHABLE)
                said = f"the event stream broke ({exc or type(exc).__name__}); resuming"
            else:
                said = "the order service ended the event stream; resuming"
            if away is None:  # the first reason alone: a restart breaks it, then refuses it
                errors.print(said, style="dim")
                away = said
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass


def _before(sse: Any, first_seq: int | None, began: datetime) -> bool:
    """Is ``sse`` (a saga event of a resumed stream) one from before ``tail`` began: below
    the first it showed (``first_seq``), and occurred before ``began``?"""
    if first_seq is None or not sse.id.isdigit() or int(sse.id) >= first_seq:
        return False
    try:
        return bool(datetime.fromisoformat(json.loads(sse.data)["occurred_at"]) < began)
    except (ValueError, KeyError, TypeError, RecursionError):  # a naive time compared, too
        return False  # not a feed entry: shown as it is


#: Event ids ``tail`` remembers to show each event once: more than a resumed stream sends
#: again (the events of 30 s) at hundreds of sagas a second.
TAIL_SEEN_IDS = 100_000


def _wait_for_ever(response: httpx.Response) -> None:
    """Read the rest of ``response`` with no read timeout: a stream's first answer (status
    and headers) has HTTP_TIMEOUT, as every call has, but a stream that has begun may be
    quiet as long as nothing happens. httpx has one read timeout for the whole exchange;
    httpcore reads it from the request's ``timeout`` extension (a dict, shared with httpx's
    request) when the body is first read, so lifting it there lifts it for the body only.
    ``tail`` had read=None from the start: a service that took the connection and never
    answered held it forever."""
    timeouts = response.request.extensions.get("timeout")
    if isinstance(timeouts, dict):
        timeouts["read"] = None


#: The narrowest terminal ``tail`` shows each event's producer on (columns): below it, the
#: room is the brief's.
TAIL_PRODUCER_WIDTH = 100


def _show_saga_event(data: str, output: Output) -> None:
    """One line of ``sagactl tail``: a feed entry (``data``, JSON) as one line of JSON, or
    in words. What is not a feed entry is shown as text, its control characters escaped
    (an attack trial: json printed the stream's data as it came, control characters and
    all, and an entry of another shape was a traceback)."""
    try:
        e = json.loads(data)
    except (ValueError, RecursionError):
        e = None
    if output is Output.json:
        print(json.dumps(e) if e is not None else json.dumps({"not_json": printable(data)}), flush=True)
        return
    try:
        # cut to the terminal's width (-o wide, or written to a file or a pipe: whole; a
        # trial's file had its lines cut to 80 columns), where the producer, which the
        # event type implies, gives its room to the brief (at 80 columns a newcomer trial
        # read "reason=insuf…")
        whole = output is not Output.text or not console.is_terminal
        line = Text.assemble(
            _text(f"{str(e['occurred_at'])[11:23]}  {_short(str(e['order_id']), output)}  "),
            _text(f"{e['event_type']!s:<27}", "red" if e["compensating"] else "cyan"),
            *((" ", _text(e["producer"], "dim")) if whole or console.width >= TAIL_PRODUCER_WIDTH else ()),
        )
        # what the saga's timeline shows beside it: a cancellation for a timeout read as
        # one by the customer, and no amount was shown (a newcomer trial)
        brief = _brief(e["payload"]) if isinstance(e.get("payload"), Mapping) else ""
        room = console.width - line.cell_len - 2
        if brief and whole:
            line.append_text(_text(f"  {brief}"))
        elif brief and room >= 10:
            line.append_text(_text(f"  {brief if len(brief) <= room else brief[: room - 1] + '…'}"))
    except (KeyError, TypeError):
        line = _text(f"(not a saga event) {data}")
    console.print(line, soft_wrap=True)


@app.command("stock")
def stock(ctx: typer.Context, output: OutputOpt = Output.text) -> None:
    """Every product: available, reserved and sold units."""
    rows = _call(ctx, "inventory", "GET", "/products")
    _emit(output, rows, lambda: _products(rows))


@app.command("set-product")
def set_product(
    ctx: typer.Context,
    product_id: Annotated[
        str, typer.Argument(help="the product's id (a new one creates it)", callback=_check_external_id)
    ],
    units: Annotated[
        int,
        typer.Option(
            "--stock",
            min=0,
            help="the units available for sale (units reserved by sagas in flight and sold are kept)",
            show_default=False,
        ),
    ],
    price: Annotated[
        str | None,
        typer.Option(help="the unit price, e.g. 12.50 (default: the product's; a new one needs it)"),
    ] = None,
    name: Annotated[str | None, typer.Option(help="default: the product's, or its id for a new one")] = None,
    output: OutputOpt = Output.text,
) -> None:
    """Create a product or set its stock (an operator's): PUT /products/{id}. A price or
    name not given is the product's as it is now. --stock is required: it sets the units
    available, not adds to them, and a count read from the product as it is would undo
    what orders reserved meanwhile."""
    path = f"/products/{quote(product_id, safe='')}"
    if price is None or name is None:
        response = _request(ctx, "inventory", "GET", path)
        if response.status_code != 404:
            now = _answer(ctx, "inventory", "GET", path, response)
            price = now["price"] if price is None else price
            name = now["name"] if name is None else name
        elif price is None:
            _fail(f"there is no product {product_id}: a new one needs --price (nothing was changed)", USAGE)
    body = {"name": product_id if name is None else name, "price": price, "stock": units}
    row = _call(ctx, "inventory", "PUT", path, "; see whether it was: sagactl stock", json=body)
    _emit(output, row, lambda: _products([row]))


@app.command("set-balance")
def set_balance(
    ctx: typer.Context,
    customer_id: Annotated[
        str, typer.Argument(help="the customer's id (new: an account opened)", callback=_check_external_id)
    ],
    balance: Annotated[str, typer.Argument(help="the balance, e.g. 100.00", show_default=False)],
    output: OutputOpt = Output.text,
) -> None:
    """Open a customer's account or set its balance at the payment provider (an
    operator's): PUT /accounts/{id}. Charges and refunds move it from then on."""
    path = f"/accounts/{quote(customer_id, safe='')}"
    look = f"; see whether it was: sagactl balances {customer_id}"
    row = _call(ctx, "payment", "PUT", path, look, json={"balance": balance})
    _emit(output, row, lambda: _accounts([row]))


def _products(rows: list[dict[str, Any]]) -> RenderableType:
    """Products as ``stock`` shows them."""
    if not rows:
        return "no products"
    t = Table(
        _free("product"),
        _free("name"),
        _fixed("price", "right"),
        _fixed("available", "right"),
        _fixed("reserved", "right"),
        _fixed("sold", "right"),
    )
    for p in rows:
        t.add_row(
            _value(p["product_id"]),
            _value(p["name"]),
            p["price"],
            str(p["available"]),
            str(p["reserved"]),
            str(p["sold"]),
        )
    return t


def _check_external_ids(given: list[str] | None) -> list[str]:
    """Customer or product ids, each as ``_check_external_id`` checks one."""
    return [_check_external_id(one) for one in given or ()]


@app.command("balances")
def balances(
    ctx: typer.Context,
    customer_ids: Annotated[
        list[str] | None,
        typer.Argument(
            help="these customers' accounts only (a customer's token reads its own)",
            callback=_check_external_ids,
            show_default=False,
        ),
    ] = None,
    output: OutputOpt = Output.text,
) -> None:
    """Every customer account and its balance (an operator's), or those of the customers
    named: a customer's token reads its own ('sagactl balances alice')."""
    # a customer read 403 here, and no command showed her own balance (a newcomer trial)
    if customer_ids:
        named = dict.fromkeys(customer_ids)  # each once ('balances alice alice' showed her twice: a trial)
        rows = [_call(ctx, "payment", "GET", f"/accounts/{quote(c, safe='')}") for c in named]
    else:
        response = _request(ctx, "payment", "GET", "/accounts")
        if response.status_code == 403:
            _fail(f"{_refusal('payment', response)}; a customer reads its own: sagactl balances <its id>")
        rows = _answer(ctx, "payment", "GET", "/accounts", response)

    _emit(output, rows, lambda: _accounts(rows))


def _accounts(rows: list[dict[str, Any]]) -> RenderableType:
    """Accounts as ``balances`` shows them."""
    if not rows:
        return "no accounts"
    t = Table(_free("customer"), _fixed("balance", "right"))
    for a in rows:
        t.add_row(_value(a["customer_id"]), a["balance"])
    return t


@app.command("health")
def health(ctx: typer.Context, output: OutputOpt = Output.text) -> None:
    """Each service's readiness and every check behind it: ready, degraded (working around
    a failure, e.g. payment's provider circuit breaker open: payments wait) or not ready,
    with the reason (the services give the reasons to an operator's token only: without
    one each reads "reason shown to an operator only"; a token a service refuses is said,
    and its readiness shown as without one). A service that cannot be reached is status
    "unreachable"; one that took the request and did not answer, "not_answering" (json:
    each service's status, checks and error); one whose URL is another's answered 421,
    "misdirected". Exits 2 if one is misdirected, else 3 if a service cannot be reached or
    did not answer (as every command does), else 1 if one is not ready, refused the token
    or answered something that is not a readiness (its status and words shown)."""
    urls = _urls(ctx)
    # at once: one after another, a paused broker's 2 s check of each readiness took
    # 6.5 s in all (an operator trial); _readiness_of says a missing one in its row
    found = _EachService.read(("order", "inventory", "payment"), lambda s: _readiness_of(urls, s)).found

    def table() -> RenderableType:
        t = Table(_fixed("service"), _fixed("status"), _fixed("check"), _free("detail"))
        for service, body in found.items():
            t.add_row(service, _status(str(body.get("status"))), "", _text(body.get("error", "")))
            for name, check in body.get("checks", {}).items():
                # the check's own status in the status column, under its service's: "name:
                # mark" in one column left the detail too little room at 80 columns, and a
                # timestamp in it was cut in two (a newcomer trial)
                mark = "degraded" if check.get("degraded") else ("ok" if check.get("ok") else "FAILED")
                detail = check.get("degraded") or check.get("error") or ""
                t.add_row("", _text(mark, CHECK_STYLE[mark]), _value(name), _text(detail))
        return t

    _emit(output, found, table)
    checks = [c for body in found.values() for c in body.get("checks", {}).values()]
    refused = any("token_refused" in body for body in found.values())
    if refused:
        # not "pass --token": one was given (a trial)
        errors.print(f"the token of {urls.token_from} was refused (readiness shown without it): {MINT_HINT}")
    elif any(WITHHELD in c.values() for c in checks):
        yours = f"the token of {urls.token_from} is not an operator's; " if urls.token else ""
        get = "export SAGA_TOKEN=$(sagactl token)"
        errors.print(f"the reasons are given to an operator's token: {yours}{get}")
    if any(body.get("status") == "misdirected" for body in found.values()):
        raise typer.Exit(USAGE)  # a URL given for one service is another's, as every command says
    if any(body.get("status") in ("unreachable", "not_answering") for body in found.values()):
        raise typer.Exit(UNREACHABLE)
    if refused or any(body.get("status") not in ("ready", "degraded") for body in found.values()):
        raise typer.Exit(REFUSED)


def _readiness_of(urls: Urls, service: str) -> dict[str, Any]:
    """``GET /health/ready`` of service as ``health`` shows it: the readiness it answered
    (200 or 503: ``status`` and ``checks``); with a token it refused (401), the public
    readiness asked again without it, and ``error``/``token_refused`` saying why; status
    ``error`` with what it answered for anything else (an attack trial: a body of another
    shape was a traceback, a 500 "cannot reach"), ``misdirected`` if its URL is another's
    (421); ``unreachable`` if it could not be
    reached, ``not_answering`` if it took the request and did not answer (in time, or at
    all), each with ``error`` saying so as the text does."""
    base = urls.of(service)
    refused: str | None = None
    try:
        answer = urls.client.get(f"{base}/health/ready", headers=_meant_for(service))
        if answer.status_code == 401 and "Authorization" in answer.request.headers:
            refused = _detail_of(answer)
            # the probe is public: asked again without the token, it still says how the
            # service is (its reasons withheld), beside why the token was refused
            public = urls.client.build_request("GET", f"{base}/health/ready", headers=_meant_for(service))
            del public.headers["Authorization"]
            answer = urls.client.send(public)
    except httpx.HTTPError as exc:
        return {"status": unanswered(exc), "checks": {}, "error": _unreachable(service, base, exc)}
    body = _readiness_body(answer)
    if refused is not None:
        without = "" if body is not None else f"; without it, {_refusal(service, answer)}"
        body = (body or {"status": "error", "checks": {}}) | {
            "error": f"token refused: {refused}{without}",
            "token_refused": refused,
        }
    elif body is None:
        status = "misdirected" if answer.status_code == 421 else "error"  # its URL is another's
        body = {"status": status, "checks": {}, "error": _refusal(service, answer)}
    return body


def _detail_of(response: httpx.Response) -> str:
    """What an error answer said: its JSON ``detail`` (a 422's list of problems as one
    clause) or ``message`` (the payment provider's shape: its port mistaken for the payment
    service's printed its raw JSON), else its first line or its reason phrase; 300
    characters at most, control characters made visible (``events.values.printable``)."""
    try:
        body = _json_of(response)
    except ValueError:
        body = None
    detail = (body.get("detail") or body.get("message")) if isinstance(body, dict) else None
    if isinstance(detail, list) and detail and all(isinstance(d, dict) for d in detail):
        said = f"invalid request: {_problems(detail)}"
    elif detail:
        said = _compact(detail)
    else:
        said = next(iter(response.text.strip().splitlines()), "") or response.reason_phrase
    return printable(said, 300)


def _readiness_body(response: httpx.Response) -> dict[str, Any] | None:
    """A readiness answer's body (``saga_kit.http.Readiness``: 200 or 503, a ``status``
    and ``checks`` of objects, each's ``ok`` a boolean), or None for anything else (an
    attack trial: ``"ok": "maybe"`` read as ok)."""
    if response.status_code not in (200, 503):
        return None
    try:
        body = _json_of(response)
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("status"), str):
        return None
    checks = body.get("checks")
    if not isinstance(checks, dict) or not all(
        isinstance(c, dict) and isinstance(c.get("ok"), bool) for c in checks.values()
    ):
        return None
    return body


#: The longest life ``sagactl token`` gives a development token, in seconds: a year.
MAX_TOKEN_TTL = 366 * 86_400


@app.command("kafka-acls")
def kafka_acls_command(
    commands: Annotated[
        bool,
        typer.Option(
            "--commands",
            help="print them as kafka-acls.sh commands (set KAFKA_BOOTSTRAP and KAFKA_ADMIN_CONFIG first)",
        ),
    ] = False,
    output: OutputOpt = Output.text,
) -> None:
    """The Kafka ACLs each user of the system needs, and no more: each service its own
    topics to write, its subscriptions to read and its consumer group; a command sender
    orders.commands. Derived from the code (saga_kit.kafka_acls); with --commands, as
    Kafka's own tool applies them, connected as an administrator."""
    import shlex

    from saga_kit import kafka_acls

    acls = kafka_acls.plan()
    if commands and output is not Output.text:  # shell lines are text: -o json printed them too
        _fail("--commands prints shell commands (text): give it without --output", USAGE)
    if commands:
        for args in kafka_acls.acl_command_args(acls):
            given = shlex.join(args)
            connect = '--bootstrap-server "$KAFKA_BOOTSTRAP" --command-config "$KAFKA_ADMIN_CONFIG"'
            print(f"kafka-acls.sh {connect} {given}")
        return

    def table() -> RenderableType:
        t = Table(_fixed("principal"), _fixed("resource"), _fixed("name"), _free("operations"))
        for (principal, resource_type, name), operations in kafka_acls.operations_by_resource(acls).items():
            t.add_row(principal, resource_type, name, ", ".join(operations))
        return t

    _emit(output, [dataclasses.asdict(acl) for acl in acls], table)


@app.command("token")
def token(
    ctx: typer.Context,
    subject: Annotated[
        str,
        typer.Option(
            "--subject", help="whom it names: a customer id, or an operator's name", callback=_check_subject
        ),
    ] = "operator",
    role: Annotated[
        Role, typer.Option("--role", case_sensitive=False, help="customer or operator")
    ] = Role.OPERATOR,
    ttl: Annotated[
        float,
        typer.Option("--ttl", min=1, max=MAX_TOKEN_TTL, help="seconds until it expires (at most a year)"),
    ] = 12 * 3600,
    issuer_dir: Annotated[
        Path,
        typer.Option(
            "--issuer-dir",
            envvar="SAGA_ISSUER_DIR",
            help=(
                "the development issuer's key directory: make run's (the default)"
                " or make demo's, .run/demo/keys/issuer"
            ),
        ),
    ] = Path(".run/stack/keys/issuer"),
    output: OutputOpt = Output.text,
) -> None:
    """Mint a development bearer token (EdDSA JWT) with the key 'make run' or 'make
    demo' made; prints the token alone, e.g. 'export SAGA_TOKEN=$(sagactl token)'.
    Production tokens come from your identity provider, never from here."""
    if not (issuer_dir / "issuer.pem").exists():
        said = f"no development issuer key in {issuer_dir}"
        if not issuer_dir.is_absolute():
            said += (
                f" (relative to {Path.cwd()}: run sagactl from the repository's root, or name"
                " the key's directory with --issuer-dir or SAGA_ISSUER_DIR)"
            )
        said += "; start the system with make run or make demo first, if it is not running"
        # runs going now, in run directories of their own: a running stack keeps its
        # manifest there (sagastack's System.write_manifest), gone once it stops
        running = sorted(
            key.parent
            for key in Path(".run").glob("*/keys/issuer/issuer.pem")
            if (key.parents[2] / "stack.json").exists() and key.parent != issuer_dir
        )
        demo = Path(".run/demo/keys/issuer")
        if running:
            said += "; a stack runs with its key in " + ", ".join(f"{d} (--issuer-dir {d})" for d in running)
        elif issuer_dir != demo and (demo / "issuer.pem").exists():
            said += f"; make demo's key is in {demo}: --issuer-dir {demo} (for a demo still running: KEEP=1)"
        _fail(said)
    issued = DevIssuer(issuer_dir)
    minted = issued.mint(subject, [role], ttl_seconds=ttl)
    given = {name: getattr(ctx.get_parameter_source(name), "name", None) for name in ("subject", "role")}
    if given == {"subject": "COMMANDLINE", "role": "DEFAULT"}:
        # a newcomer took '--subject alice' for alice's token, and listed every order with it
        errors.print(
            f"note: an operator's token, named {subject!r}; a customer's: --subject {subject} --role customer"
        )
    elif given["subject"] == "DEFAULT" and role is Role.CUSTOMER:  # the customer named 'operator'
        errors.print(f"note: a customer's token, named {subject!r} (the default); hers: --subject <her id>")
    if output is Output.json:
        print(json.dumps({"token": minted, "subject": subject, "roles": [str(role)], "ttl_seconds": ttl}))
    else:
        print(minted)


def _kept_heads(given: list[str] | None) -> dict[str, list[bytes]]:
    """``--kept SERVICE=HASH`` options as each service's kept head hashes (32 bytes); a
    usage error names one that is not so."""
    kept: dict[str, list[bytes]] = {}
    for option in given or ():
        name, _, digest = option.partition("=")
        try:
            head = bytes.fromhex(digest)
        except ValueError:
            head = b""
        if len(head) != 32:
            raise typer.BadParameter(f"{option!r}: SERVICE=HASH, the hash 64 hex digits", param_hint="--kept")
        try:
            service = _check_service(name)
        except typer.BadParameter as exc:  # named with the option and the value (a trial)
            raise typer.BadParameter(f"{option!r}: {exc.message}", param_hint="--kept") from None
        kept.setdefault(service, []).append(head)
    return kept


def _audit_links(page: Any) -> list[auditchain.Link]:
    """A page of ``GET /audit`` as the chain sees it; ``ValueError`` for one that is not."""
    try:
        if not isinstance(page, list):
            raise TypeError(type(page).__name__)
        return [
            auditchain.Link(
                int(e["seq"]), str(e["entry"]), bytes.fromhex(e["prev_hash"]), bytes.fromhex(e["hash"])
            )
            for e in page
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"its answer is not audit entries ({type(exc).__name__})") from None


@audit_app.command("verify")
def audit_verify(
    ctx: typer.Context,
    service: ServicesOpt = None,
    kept: Annotated[
        list[str] | None,
        typer.Option(
            "--kept",
            help="SERVICE=HASH: a head hash this printed before (repeatable); it must still be in the chain",
        ),
    ] = None,
    output: OutputOpt = Output.text,
) -> None:
    """Recompute every hash of each service's audit trail ('GET /audit') here, trusting
    nothing the service says about it; print each chain's length and head hash (keep it:
    given back with --kept, a trail emptied, a tail rewritten or an entry made up shows
    against it) or where it breaks. Exits 1 if a chain is broken.
    The chain of a service that cannot be reached, does not answer or answers 5xx is not
    verified: a line on stderr names it (json: "unreachable", "not_answering" and
    "unavailable", each such service and why), and (no chain broken) the exit code is 3
    if one could not be reached or did not answer, 1 if one answered 5xx, and 0 when
    every chain was verified."""
    heads = _kept_heads(kept)

    def chain(name: str) -> dict[str, Any]:
        links: list[auditchain.Link] = []
        while True:
            params = {"after": links[-1].seq if links else 0, "limit": 5000}
            page = _get_or_missing(ctx, name, "/audit", params)
            try:
                links += _audit_links(page)
            except ValueError as exc:  # a broken chain as far as anyone can tell: exit 1
                return {"entries": len(links), "head": None, "problems": [str(exc)], "kept_heads": 0}
            if len(page) < 5000:
                break
        return {
            "entries": len(links),
            "head": links[-1].hash.hex() if links else None,
            "problems": auditchain.verify(links, kept=heads.get(name, ())),
            "kept_heads": len(heads.get(name, ())),
        }

    each = _EachService.read(service or SERVICES, chain)
    found = each.found

    def table() -> RenderableType:
        broken = any(result["problems"] for result in found.values())
        t = Table(_fixed("service"), _fixed("entries", "right"), _fixed("chain"))
        if broken:
            t.add_column("problem", overflow="fold", min_width=len("problem"))
        for name, result in found.items():
            problems = result["problems"]
            said = Text("BROKEN", style="red") if problems else Text("intact", style="green")
            if result["kept_heads"] and not problems:  # "intact" alone read as if --kept went unchecked
                kept = result["kept_heads"]
                said.append(f"\n{'the kept head is' if kept == 1 else f'all {kept} kept heads are'} in it")
            t.add_row(name, str(result["entries"]), said, *([Text("\n".join(problems))] if broken else []))
        # the heads, to keep, even of a broken chain (it is what the trail says now): each
        # on a line of its own, whole, below the table (in its column, 80 columns folded
        # each across two lines, to be copied: a newcomer trial)
        heads = [f"  {name:<9}  {result['head'] or '(empty)'}" for name, result in found.items()]
        return Group(t, Text("head hashes, to keep (--kept SERVICE=HASH):\n" + "\n".join(heads)))

    if found or output is Output.json:
        _emit(
            output,
            {
                "chains": found,
                "unreachable": each.unreachable,
                "not_answering": each.not_answering,
                "unavailable": each.unavailable,
            },
            table,
        )
    each.end("its audit trail is not verified", failed=any(result["problems"] for result in found.values()))


#: ``GET /audit?before=`` of the newest entries: past any entry's seq.
_PAST_THE_NEWEST = 2**63 - 1


@audit_app.command("list")
def audit_list(
    ctx: typer.Context,
    service: ServicesOpt = None,
    limit: PerServiceLimit = 30,
    before: Annotated[
        int | None,
        typer.Option(
            parser=lambda given: _digits_id(given, "an entry's seq", "audit list"),
            metavar="SEQ",
            help="only entries with a lower seq (the next page)",
        ),
    ] = None,
    output: OutputOpt = Output.text,
) -> None:
    """Audit entries of every service, newest first: when, who (the token's subject and
    its role), what, on which resource, and how it ended. A service whose trail
    could not be read is missing, and said on stderr, and the exit code is as 'dlq
    list's. A service that had more than --limit says so, with the --before that shows
    its next page. 'audit verify' checks the trails' hashes."""
    params = {"before": _PAST_THE_NEWEST if before is None else before, "limit": limit}

    def read(name: str) -> list[auditchain.Link]:
        try:
            return _audit_links(_get_or_missing(ctx, name, "/audit", params))
        except ValueError as exc:
            _fail(f"the {name} service answered GET /audit with something else: {exc}")

    each = _EachService.read(service or SERVICES, read)
    entries = []
    for name, links in each.found.items():
        for link in links:
            try:
                fields = json.loads(link.entry)
            except ValueError:
                fields = None
            # an entry that is no JSON object is shown as it is ('audit verify' tells more)
            shown = fields if isinstance(fields, dict) else {"action": link.entry}
            entries.append({**shown, "service": name, "seq": link.seq})
    entries.sort(key=lambda e: (str(e.get("at", "")), e["seq"]), reverse=True)
    oldest = {name: links[0].seq for name, links in each.found.items() if len(links) >= limit}
    full = _there_may_be_more(oldest, limit, before, "seq", output)
    if each.found or output is Output.json:
        _emit(
            output,
            {
                "entries": entries,
                "unreachable": each.unreachable,
                "not_answering": each.not_answering,
                "unavailable": each.unavailable,
                "limit_reached": full,
            },
            lambda: _audit_table(entries, output, list(each.found) if each.missing else None),
        )
    each.end("its audit entries are not listed")


#: The most characters of an entry's field ``audit list`` shows in text (``-o wide``: all).
AUDIT_CELL_CHARACTERS = 80
#: An order's (or any UUID's) id in an entry's resource.
_AN_ID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")


#: An audit entry's action that is a route: its method and its path's template.
_A_ROUTE = re.compile(r"([A-Z]+) (/.*)", re.DOTALL)
#: A parameter of a route's template (``{order_id}``, ``{key:path}``).
_A_PARAMETER = re.compile(r"\{[^{}]*\}")


def _what(action: str, resource: str) -> str:
    """An audit entry's action and resource in one: a route's method and the path itself,
    when the resource fills the route's template (``PUT /accounts/alice``, not also ``PUT
    /accounts/{customer_id}``; ``POST /orders/99909082/cancel`` for the cancel of order
    ``/orders/99909082``), anything else with the resource after ``on`` (``POST /orders on
    /orders/99909082``, ``compensate InventoryReleased on /orders/…``); an order's id
    shortened, as every table shows it; a space in a path escaped."""

    def shown(path: str) -> str:
        # a space escaped: no resource has one, and "POST /orders on /orders/…", a 404 of
        # that path, looked like the order placed (a re-check trial)
        return _AN_ID.sub(lambda found: found.group()[:SHORT_ID], path).replace(" ", "\\x20")

    route = _A_ROUTE.fullmatch(action)
    filled = None if route is None else _filled(route[2], resource)
    if route is not None and filled is not None:
        return f"{route[1]} {shown(filled)}"
    return f"{action} on {shown(resource)}" if resource else action


def _filled(template: str, resource: str) -> str | None:
    """``template`` (a route's path, ``/orders/{order_id}/cancel``) with its parameters
    taken from ``resource``, the same path or the start of it (``/orders/X``): each of its
    parts the template's literal one, or a parameter's value; None when it is not."""
    parts, given = template.split("/"), resource.split("/")
    if len(given) > len(parts):
        return None
    path = []
    for at, part in enumerate(parts):
        parameter = _A_PARAMETER.fullmatch(part) is not None
        if at >= len(given):
            if parameter:  # a parameter the resource does not give
                return None
            path.append(part)
        elif (parameter and given[at]) or part == given[at]:
            path.append(given[at])
        else:
            return None
    return "/".join(path)


def _audit_table(entries: list[dict[str, Any]], output: Output, only: Sequence[str] | None) -> RenderableType:
    """text: service, seq, who, role, what (the action and its resource in one, ``_what``),
    outcome, age, each field cut to ``AUDIT_CELL_CHARACTERS``; wide: the action and the
    resource apart, the request (its id) and a compensation's cause, every field whole and
    the time itself."""
    if not entries:
        return "no audit entries" + (f" in {', '.join(only)}" if only else "")
    wide = output is Output.wide
    now = datetime.now(UTC)
    # the role always: a token's subject may be anything, "operator", "anonymous" or
    # "service:inventory_svc" (an attack trial's customer tokens), and only it tells; below
    # 120 columns above the subject, in parentheses, which leaves "what" room for an order's
    # id and a route's words (at 80 columns they folded mid-word: a newcomer trial). Above
    # it, the first line: under it, a subject "mallory (operator)" folded into a line that
    # read as the role (a re-check trial)
    narrow = not wide and console.width < 120
    columns = [_fixed("service"), _fixed("seq", "right"), _free("who")]
    columns += [_free("what")] if narrow else [_fixed("role"), _free("what")]
    columns += [_free("resource"), _free("outcome")] if wide else [_free("outcome")]
    if wide:
        columns += [_fixed("request"), _fixed("cause")]
    columns.append(_fixed("at", "left") if wide else _fixed("age", "right"))
    if narrow:  # who folds first, for "what" to keep its words; whole from 100 columns
        # ("service:inventory_svc", the longest a service's is, folded with 17 to spare at
        # 119: a newcomer trial)
        columns[2].max_width = 13 if console.width < 100 else 21
        # and the outcome wraps at its space ("refused: missing_token"): given its share,
        # it took 19 columns for "200" while "what" folded 'InventoryRelease|d' (a newcomer trial)
        columns[-2].max_width = 13
    table = Table(*columns)
    for e in entries:
        # text cuts what anyone may send (a path: up to 1,024 characters, 85 lines at 80
        # columns, an attack trial); wide shows it whole
        cut = 10_000 if wide else AUDIT_CELL_CHARACTERS
        who, role = _value(e.get("actor", "?"), limit=cut), _text(e.get("role", ""))
        if narrow:
            who = Text("(", style="dim") + role + Text(")\n", style="dim") + who
        row: list[RenderableType] = [e["service"], str(e["seq"]), who]
        if not narrow:
            row.append(role)
        action, resource = str(e.get("action", "?")), str(e.get("resource", ""))
        # the path's backslashes are doubled by the service (saga_kit.audit)
        if wide:
            row += [_value(action, limit=cut, escaped=True), _value(resource, limit=cut, escaped=True)]
        else:  # one cell: the route's template beside its path said one thing twice (a trial)
            row.append(_value(_what(action, resource), limit=cut, escaped=True))
        row.append(_value(e.get("outcome", ""), limit=cut))
        if wide:
            row += [_text(e.get("request_id") or ""), _text(e.get("cause") or "")]
        at = e.get("at")
        row.append(_when(at, output, now) if isinstance(at, str) else "?")
        table.add_row(*row)
    return table
