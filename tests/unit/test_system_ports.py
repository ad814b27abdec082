"""``make run``/``make demo`` take the HTTP ports the README's settings table names."""

from __future__ import annotations

import pytest

from sagastack.system import PROVIDER_PORT, chosen_port


def test_a_port_from_the_environment_wins_over_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORDER_HTTP_PORT", raising=False)
    assert chosen_port("ORDER", 8001) == 8001
    monkeypatch.setenv("ORDER_HTTP_PORT", "18001")
    assert chosen_port("ORDER", 8001) == 18001
    monkeypatch.setenv("PROVIDER_HTTP_PORT", " 18004 ")
    assert chosen_port("PROVIDER", PROVIDER_PORT) == 18004


@pytest.mark.parametrize("value", ["0", "65536", "80a", "-1"])
def test_a_port_that_is_no_port_stops_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("PAYMENT_HTTP_PORT", value)
    with pytest.raises(SystemExit, match="PAYMENT_HTTP_PORT"):
        chosen_port("PAYMENT", 8003)
