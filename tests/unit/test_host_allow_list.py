"""``saga_kit.http.HostAllowList``: an IPv6 literal in ``Host`` is matched as an address
(Starlette's check cuts a Host at its first colon, so ``::1`` on the list matched
nothing), a port there cannot be is refused, and the wildcard still lets every Host in."""

from __future__ import annotations

import pytest
from starlette.types import Message, Receive, Scope, Send

from saga_kit.http import HostAllowList


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def _status(allowed: list[str], host: str) -> int:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [(b"host", host.encode("latin-1"))]}
    await HostAllowList(_ok, allowed)(scope, receive, send)
    return int(sent[0]["status"])


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("[::1]:8001", 200),
        ("[::1]", 200),
        ("[0:0:0:0:0:0:0:1]:8001", 200),
        ("[::2]:8001", 400),
        ("[::1", 400),
        ("::1", 400),  # an IPv6 literal is always bracketed (RFC 3986 §3.2.2)
        ("[::1]:x", 400),
        ("[::1]8001", 400),
        ("[::ffff:127.0.0.1]:8001", 400),  # another address, though it maps to an allowed one
        ("127.0.0.1:8001", 200),
        ("localhost", 200),
        ("attacker.example", 400),
        # a port there cannot be was served (an attack trial): Starlette cuts at the colon
        ("127.0.0.1:99999", 400),
        ("127.0.0.1:65535", 200),
        ("127.0.0.1:80x", 400),
        ("127.0.0.1:80:80", 400),
        ("127.0.0.1:", 400),
        ("127.0.0.1:0065535", 200),
        ("127.0.0.1:" + "9" * 5000, 400),
        ("[::1]:65536", 400),
    ],
)
async def test_hosts_against_the_default_list(host: str, status: int) -> None:
    assert await _status(["127.0.0.1", "localhost", "::1"], host) == status


async def test_a_bracketed_entry_on_the_list_is_the_same_address() -> None:
    assert await _status(["[::1]"], "[::1]:8001") == 200


async def test_the_wildcard_lets_every_host_in_ipv6_literals_too() -> None:
    for host in ("[::2]:8001", "[::1]", "example.org"):
        assert await _status(["*"], host) == 200, host
