"""URLs in settings and options: one rule for every service, tool and the CLI."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

import httpx
from pydantic import AnyHttpUrl, TypeAdapter, ValidationError

#: The request header that names the service a request is meant for (``order_svc``, or
#: ``order``; sagactl sends it): a service that is another answers 421 Misdirected Request
#: and does nothing (``saga_kit.http.ServiceIdentity``).
MEANT_FOR = "Saga-Service"

_HTTP_URL: TypeAdapter[AnyHttpUrl] = TypeAdapter(AnyHttpUrl)


def http_url(url: str) -> str:
    """``url`` as given if it is an absolute ``http``/``https`` URL with a host, kept as
    written (no ``/`` added). Two parsers must agree: pydantic's ``AnyHttpUrl`` (the
    WHATWG rules) and httpx's, which the services' and sagactl's clients use — pydantic
    alone mends ``http:/x`` into ``http://x/`` and takes a value with a space or a line
    break around it, which httpx then reads with no host, or refuses. Raises
    ``ValueError`` saying what is wrong: a service given ``notaurl`` as a URL it calls
    started and was ready, then failed every call (operator trials)."""
    try:
        _HTTP_URL.validate_python(url)
    except ValidationError as exc:
        raise ValueError(f"must be an http(s) URL ({exc.errors()[0]['msg']})") from None
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"must be an http(s) URL ({exc})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError("must be an http(s) URL: http(s)://host[:port][/path], nothing around it")
    return url


def base_url(url: str) -> str:
    """``url`` as given if it is a base URL to which paths are appended (a service's, the
    payment provider's): an ``http_url`` without ``user:password@`` (httpx sends it as
    Basic authentication, in place of the bearer token), a query or a fragment (a path
    appended lands after them: ``…?x=1/orders``), or a blank or control character in it.
    Raises ``ValueError`` saying which (an attack trial: each was taken, and every call
    then answered a 404 or a 401 that named neither the URL nor why)."""
    http_url(url)
    parsed = httpx.URL(url)
    if parsed.userinfo:
        raise ValueError("must be a base URL without user:password@ (calls carry a bearer token)")
    if "?" in url or "#" in url:
        raise ValueError(
            "must be a base URL without a query (?…) or a fragment (#…): paths are appended to it"
        )
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise ValueError("must be a base URL without a blank or a control character in it")
    return url


def kafka_bootstrap(servers: str) -> str:
    """``servers`` as given if it is a Kafka bootstrap list: comma separated, each entry
    ``host[:port]`` or ``[ipv6][:port]`` as aiokafka reads one (``aiokafka.conn.
    get_ip_port_afi``; 9092 when no port), its host an IP address or a DNS name (letters,
    digits, ``-`` and ``_`` between dots) and its port 1-65535. Raises ``ValueError``
    naming the entry that is not: ``127.0.0.1:99999`` was taken and every send failed with
    ``OverflowError`` as if the broker were away, and ``127.0.0.1:-1`` went to 9092,
    aiokafka's default, with no word (attack trials)."""
    from aiokafka.conn import get_ip_port_afi  # ~0.3 s to import: only where a list is checked

    for entry in servers.split(","):
        try:
            host, port, _ = get_ip_port_afi(entry)
        except ValueError:
            host, port = "", -1
        if not _is_host(host) or not 1 <= port <= 65535:
            raise ValueError(f"{entry.strip()!r} is not host:port (a port 1-65535) in a comma-separated list")
    return servers


#: A DNS name: labels of letters, digits, ``-`` and ``_`` (container names have them),
#: separated by dots.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?"
_DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return _DNS_NAME.fullmatch(host) is not None
    return True


#: httpx's errors raised before a request was sent (no connection, or none free in time):
#: the other side cannot have seen it. Any other ``httpx.HTTPError`` may come after it took
#: the request — frozen, or closed the connection — so a call that changes something is
#: in doubt. Shared by sagactl and the dashboard, which tell "unreachable" from "did not
#: answer" by it.
NOT_SENT: tuple[type[httpx.HTTPError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
)


def unanswered(exc: httpx.HTTPError) -> Literal["unreachable", "not_answering"]:
    """What a call that raised ``exc`` says of the service: ``unreachable`` if nothing was
    sent (``NOT_SENT``), else ``not_answering`` (it took the request and gave no answer)."""
    return "unreachable" if isinstance(exc, NOT_SENT) else "not_answering"
