"""The audit trail's hash chain on its own (``saga_kit.auditchain``); over the services'
databases: tests/e2e/test_audit.py."""

from __future__ import annotations

from saga_kit.auditchain import GENESIS, Link, canonical, chain_hash, verify


def _chain(*actions: str, previous: bytes = GENESIS, first: int = 1) -> list[Link]:
    links = []
    for seq, action in enumerate(actions, start=first):
        entry = canonical({"action": action})
        digest = chain_hash(previous, entry)
        links.append(Link(seq, entry, previous, digest))
        previous = digest
    return links


def test_an_altered_or_removed_entry_breaks_the_chain() -> None:
    a, b, c = _chain("a", "b", "c")
    assert verify([a, b, c]) == []
    assert verify([a, Link(b.seq, canonical({"action": "B"}), b.prev_hash, b.hash), c]) == [
        "entry 2 does not match its hash (it was altered)"
    ]
    assert verify([a, c]) == ["entry 3 does not follow the entry before it (one was removed or reordered)"]


def test_a_kept_head_shows_what_the_chain_alone_cannot() -> None:
    """An attack trial: the trail emptied (TRUNCATE) and begun again, or an entry made up
    and appended with its hash computed, verified as whole: the chain has no secret. A head
    hash kept before is gone from the chain then."""
    old = _chain("a", "b")
    kept = old[-1].hash
    assert verify([*old, *_chain("c", previous=kept, first=3)], kept=[kept]) == []  # appended: fine
    begun_again = _chain("c", first=9)
    assert verify(begun_again) == []  # the chain alone: whole
    (problem,) = verify(begun_again, kept=[kept])
    assert problem.startswith(f"the head hash kept before ({kept.hex()}) is not in the chain")
    rewritten = [old[0], *_chain("B", previous=old[0].hash, first=2)]
    assert verify(rewritten) == [] and len(verify(rewritten, kept=[kept])) == 1


def test_an_entrys_path_tells_apart_what_it_escapes_from_what_was_sent_so() -> None:
    """A second attack trial: ``/x%00y`` (a NUL) and ``/x%5Cx00y`` (a backslash, then
    ``x00``) were one entry, ``/x\\x00y``, and so were a newline and ``\\n``, U+202E and
    ``\\u202e``; a newline went in as it came."""
    from saga_kit.audit import request_path

    def entry(path: str) -> str:
        return request_path({"path": path})

    pairs = [
        ("/x\x00y", "/x\\x00y"),
        ("/a\r\nb", "/a\\r\\nb"),
        ("/\u202eexe", "/\\u202eexe"),
        ("/t\tb", "/t\\tb"),
    ]
    for escaped, literal in pairs:
        assert entry(escaped) != entry(literal), (escaped, literal)
        assert all(ch.isprintable() for ch in entry(escaped) + entry(literal))
    assert entry("/x\x00y") == "/x\\x00y" and entry("/x\\x00y") == "/x\\\\x00y"
    assert entry("/products/café") == "/products/café"


def test_an_entrys_path_keeps_bytes_that_are_not_utf8_apart_from_u_fffd() -> None:
    """A third attack trial: the server reads ``%ff`` as U+FFFD, so ``/orders/x%ff%fe/cancel``
    and ``/orders/x%EF%BF%BD%EF%BF%BD/cancel`` (two U+FFFD sent) were one entry."""
    from urllib.parse import unquote

    from saga_kit.audit import request_path

    def entry(raw: bytes) -> str:
        return request_path({"path": unquote(raw.decode("ascii"), errors="replace"), "raw_path": raw})

    sent = entry(b"/orders/x%ff%fe/cancel")
    assert sent == "/orders/x\\xff\\xfe/cancel"
    assert entry(b"/orders/x%EF%BF%BD%EF%BF%BD/cancel") == "/orders/x\ufffd\ufffd/cancel" != sent
    assert entry(b"/x%5Cxff%ff") == "/x\\\\xff\\xff"  # a backslash sent is still doubled
    assert entry(b"/caf%C3%A9%0A") == "/caf\u00e9\\n"
