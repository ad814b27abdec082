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
