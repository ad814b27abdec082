"""``make run``/``make demo`` take the HTTP ports the README's settings table names."""

from __future__ import annotations

import socket

import pytest

from sagastack import embedded
from sagastack.system import PROVIDER_PORT, BadSetting, chosen_port


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
    with pytest.raises(BadSetting, match="PAYMENT_HTTP_PORT"):
        chosen_port("PAYMENT", 8003)


def test_a_free_port_is_never_handed_out_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel may answer two binds in a row with the same free port; ``free_port``
    asks again rather than tell two services the same port (a real socket each time: the
    test only chooses what the kernel answers)."""
    answers = iter([47001, 47001, 47002, 47001, 47003])
    real_getsockname = socket.socket.getsockname

    class Kernel(socket.socket):
        def getsockname(self) -> tuple[str, int]:
            real_getsockname(self)
            return ("127.0.0.1", next(answers))

    monkeypatch.setattr(embedded.socket, "socket", Kernel)
    monkeypatch.setattr(embedded, "_HANDED_OUT", set())
    assert [embedded.free_port() for _ in range(3)] == [47001, 47002, 47003]
