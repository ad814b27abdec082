"""``make run``/``make demo`` take the HTTP ports the README's settings table names."""

from __future__ import annotations

import socket
from pathlib import Path

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


class Scripted:
    """Stands for ``free_port``'s random source: answers ``randrange`` from a list."""

    def __init__(self, answers: list[int]) -> None:
        self.answers = iter(answers)
        self.asked: list[tuple[int, int]] = []

    def randrange(self, start: int, stop: int) -> int:
        self.asked.append((start, stop))
        return next(self.answers)


def test_a_free_port_is_never_handed_out_twice_nor_one_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """Callers take several ports before any is listened on: a candidate handed out
    before, or one a socket holds now, is passed over (real binds; the test only chooses
    the candidates)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = sorted(embedded._RANDOM.sample(range(11000, 12000), 3))
        picks = Scripted([ports[0], ports[0], busy, ports[1], ports[0], ports[2]])
        monkeypatch.setattr(embedded, "_RANDOM", picks)
        monkeypatch.setattr(embedded, "_HANDED_OUT", set())
        monkeypatch.setattr(embedded, "ephemeral_ports", lambda: (busy + 1, 60999))
        assert [embedded.free_port() for _ in range(3)] == ports
    assert set(picks.asked) == {(embedded.LOWEST_FREE_PORT, busy + 1)}


def test_a_free_port_is_below_the_kernels_ephemeral_range() -> None:
    """A port the kernel chose is one it may give, before the server listens, to any
    outgoing connection as its local port: CI saw a service's HTTP port taken so
    (``address already in use``). ``free_port`` hands out none of the kernel's range."""
    first, last = embedded.ephemeral_ports()
    assert first > embedded.LOWEST_FREE_PORT + 1000, "this machine has no room below its ephemeral range"
    ports = [embedded.free_port() for _ in range(40)]
    assert all(embedded.LOWEST_FREE_PORT <= port < first for port in ports), (first, last, ports)
    assert len(set(ports)) == len(ports)


def test_the_ephemeral_range_is_the_kernels_or_ianas(tmp_path: Path) -> None:
    said = tmp_path / "ip_local_port_range"
    said.write_text("20000\t40999\n")
    assert embedded.ephemeral_ports(said) == (20000, 40999)
    said.write_text("garbled")
    assert embedded.ephemeral_ports(said) == embedded.IANA_DYNAMIC_PORTS
    assert embedded.ephemeral_ports(tmp_path / "absent") == (49152, 65535)


def test_with_no_room_below_the_ephemeral_range_the_kernel_chooses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "ephemeral_ports", lambda: (embedded.LOWEST_FREE_PORT + 500, 65535))
    monkeypatch.setattr(embedded, "_RANDOM", Scripted([]))
    port = embedded.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
