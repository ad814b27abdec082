"""URLs in settings and options: one rule for every service, tool and the CLI."""

from __future__ import annotations

from pydantic import AnyHttpUrl, TypeAdapter, ValidationError

_HTTP_URL: TypeAdapter[AnyHttpUrl] = TypeAdapter(AnyHttpUrl)


def http_url(url: str) -> str:
    """``url`` as given if it is an absolute ``http``/``https`` URL with a host (pydantic's
    ``AnyHttpUrl`` decides; the value is kept as written, no ``/`` added). Raises
    ``ValueError`` saying what is wrong: a service given ``notaurl`` as a URL it calls
    started and was ready, then failed every call (an operator trial)."""
    try:
        _HTTP_URL.validate_python(url)
    except ValidationError as exc:
        raise ValueError(f"must be an http(s) URL ({exc.errors()[0]['msg']})") from None
    return url
