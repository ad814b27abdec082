"""An upstream's 503 is passed on as a 503 that keeps the retry signal (saga_kit.http)."""

from __future__ import annotations

import pytest

from saga_kit.http import TRANSIENT_RETRY_AFTER_SECONDS, upstream_unavailable


@pytest.mark.parametrize(
    ("given", "passed_on"),
    [
        ("7", "7"),
        (" 30 ", "30"),
        (None, str(TRANSIENT_RETRY_AFTER_SECONDS)),
        ("", str(TRANSIENT_RETRY_AFTER_SECONDS)),
        ("²", str(TRANSIENT_RETRY_AFTER_SECONDS)),  # a digit to str.isdigit, not to HTTP
        ("Wed, 21 Oct 2026 07:28:00 GMT", str(TRANSIENT_RETRY_AFTER_SECONDS)),  # a date: not passed on
        ("-1", str(TRANSIENT_RETRY_AFTER_SECONDS)),
    ],
)
def test_the_upstreams_retry_after_is_passed_on_when_it_is_seconds(given: str | None, passed_on: str) -> None:
    refusal = upstream_unavailable("inventory_svc", given)
    assert refusal.status_code == 503
    assert refusal.headers == {"Retry-After": passed_on}
    assert "inventory_svc is briefly unavailable" in refusal.detail
