"""The audit trail's hash chain (``saga_kit.audit``), on its own: an entry's one text form,
its hash, and the check of a chain. Nothing here needs the server's libraries, so
``sagactl audit verify`` checks a chain read from ``GET /audit`` without importing them.

``hash = SHA-256(prev_hash ‖ UTF-8(entry))``; the first entry's ``prev_hash`` is
``GENESIS`` (32 zero bytes).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: The first entry's ``prev_hash``.
GENESIS = bytes(32)


def canonical(entry: Mapping[str, Any]) -> str:
    """An entry's one text form: JSON, keys sorted, no spaces."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def chain_hash(prev_hash: bytes, entry: str) -> bytes:
    """``SHA-256(prev_hash ‖ UTF-8(entry))``, as the database computes it."""
    return hashlib.sha256(prev_hash + entry.encode("utf-8")).digest()


@dataclass(frozen=True)
class Link:
    """One stored entry as the chain sees it."""

    seq: int
    entry: str
    prev_hash: bytes
    hash: bytes


def verify(links: Iterable[Link], previous: bytes = GENESIS, kept: Iterable[bytes] = ()) -> list[str]:
    """Every break in the chain, in words (empty: intact). ``previous``: the hash of the
    entry before the first one given (``GENESIS`` from the start). ``kept``: head hashes
    recorded before (``sagactl audit verify`` prints the head to keep): each must still be
    the hash of an entry of the chain. The chain alone cannot show a trail emptied and
    begun again, a tail rewritten or a made-up entry appended (its hash has no secret);
    a kept head can — it is gone from the chain then."""
    links = list(links)
    problems: list[str] = []
    hashes = {link.hash for link in links}
    for head in kept:
        if head not in hashes:
            problems.append(
                f"the head hash kept before ({head.hex()}) is not in the chain: entries up to it"
                " were removed or rewritten since"
            )
    for link in links:
        if link.prev_hash != previous:
            problems.append(
                f"entry {link.seq} does not follow the entry before it (one was removed or reordered)"
            )
        if chain_hash(link.prev_hash, link.entry) != link.hash:
            problems.append(f"entry {link.seq} does not match its hash (it was altered)")
        previous = link.hash
    return problems
