"""URLs in settings and options: one rule for every service, tool and the CLI."""

from __future__ import annotations

import httpx
from pydantic import AnyHttpUrl, TypeAdapter, ValidationError

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


def kafka_bootstrap(servers: str) -> str:
    """``servers`` as given if it is a Kafka bootstrap list as aiokafka reads it
    (``aiokafka.conn.collect_hosts``: ``host[:port]`` or ``[ipv6][:port]``, comma
    separated, 9092 when no port), each with a host and a port 1-65535. Raises
    ``ValueError`` saying which entry is wrong: ``127.0.0.1:99999`` was taken, and every
    send then failed with ``OverflowError`` as if the broker were away (an attack trial)."""
    from aiokafka.conn import collect_hosts  # ~0.3 s to import: only where a list is checked

    for entry in servers.split(","):
        try:
            ((host, port, _),) = collect_hosts(entry, randomize=False)
        except ValueError:
            host, port = "", -1
        if not host or not 1 <= port <= 65535:
            raise ValueError(f"{entry.strip()!r} is not host:port (a port 1-65535) in a comma-separated list")
    return servers
