"""``python -m sagastack check``: the invariants of docs/design.md §6 on a stack that runs.

A choreography has no coordinator that could say a saga went wrong: each service sees
its own database only. This command is the reconciliation an operator runs beside it. It
finds the running stack through its run directory's manifest (``System.write_manifest``),
waits until nothing is left to publish or settle (``invariants.wait_for_quiescence``),
then checks everything ``make demo`` checks but what needs the seed: every order
terminal, no reservation held or sold for an order that is not APPROVED, units sold
matching committed reservations, our payments against the provider simulator's ledger
(each APPROVED order charged once and not refunded, every other charge refunded once),
no saga step twice, and the dashboard's counts by status. Stock and money are not
checked against where they started (``PUT /products`` sets stock, so only a run that
seeded them knows: the demo and the chaos run check those).

Exit status: 0 every invariant checked holds; 1 a violation (each printed); 2 no stack
runs in the run directory; 3 not settled within ``--wait`` seconds (what is still in
flight printed, and the oldest PENDING orders); 4 a database or the provider could not
be read (a server down: its first line of error printed).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from sagastack import invariants
from sagastack.cli_types import count
from sagastack.embedded import MANIFEST

#: Violations printed in full; past them, a count.
SHOWN = 50
#: PENDING orders named when the stack has not settled (the oldest).
PENDING_SHOWN = 5


class NoStack(Exception):
    """No live run owns the run directory, or it has not finished starting."""


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The manifest of the run that owns ``run_dir`` now. Raises ``NoStack`` (saying why)
    when no run holds the directory's claim (``owner.lock``: a run that was killed left
    its manifest) or the run has not written one yet (still starting)."""
    lock = run_dir / "owner.lock"
    if not lock.exists():
        raise NoStack(f"no stack has run in {run_dir}")
    with open(lock) as held:
        try:
            fcntl.flock(held, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # a live run holds it: good
        else:
            raise NoStack(f"no stack runs in {run_dir} now")
    try:
        manifest: dict[str, Any] = json.loads((run_dir / MANIFEST).read_text())
    except FileNotFoundError:
        raise NoStack(f"the stack in {run_dir} is still starting (or stopping)") from None
    return manifest


def _in_flight(database_urls: dict[str, str]) -> str:
    unsent, pending, held, waiting = invariants.activity(database_urls)
    said = (
        f"{_n(pending, 'order')} PENDING, {_n(held, 'reservation')} held, {_n(waiting, 'payment')}"
        f" waiting on the provider, {_n(unsent, 'event')} not yet published"
    )
    oldest = invariants.pending_orders(database_urls, PENDING_SHOWN)
    if oldest:
        said += "; the oldest PENDING: " + ", ".join(f"{oid} (placed {age:.0f} s ago)" for oid, age in oldest)
    return said


def _n(n: int, thing: str) -> str:
    return f"{n} {thing}" + ("" if n == 1 else "s")


Sizes = tuple[int, int, int]


def settled_check(urls: dict[str, str], provider: str | None, wait: float) -> tuple[list[str], Sizes] | None:
    """Every invariant (``invariants.check`` without the seed) and what it looked at
    (orders, products, payments), read while nothing moved: the stack quiet before and
    after, and no outbox written in between (``invariants.marks``). Three databases have
    no common snapshot, so an order that lands mid-check would show as a violation (an
    operator trial: 12 false alarms in 25 checks under a trickle of orders): such a check
    is thrown away and taken again. None: the stack did not stay still for one check
    within ``wait`` seconds."""
    end = time.monotonic() + wait
    while invariants.wait_for_quiescence(urls, timeout=max(0.0, end - time.monotonic())):
        before = invariants.marks(urls)
        violations = invariants.check(urls, {}, {}, provider)
        sizes = invariants.sizes(urls)
        if invariants.activity(urls) == (0, 0, 0, 0) and invariants.marks(urls) == before:
            return violations, sizes
        if time.monotonic() >= end:
            break
    return None


def main(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    try:
        manifest = read_manifest(run_dir)
    except NoStack as none:
        print(
            f"sagastack check: {none} (make run starts one; another run directory:"
            " --run-dir DIR, or RUN_DIR=DIR with make)"
        )
        return 2
    urls: dict[str, str] = manifest["database_urls"]
    if args.wait:
        print(f"waiting up to {args.wait} s for the stack in {run_dir} to settle …", flush=True)
    provider = manifest["provider_url"] if manifest["provider_simulated"] else None
    try:
        checked = settled_check(urls, provider, args.wait)
        if checked is None:
            print(
                f"not settled{f' after {args.wait} s' if args.wait else ''}: {_in_flight(urls)}."
                " The invariants are checked once nothing is in flight: check again when the load"
                " stops, or wait longer (--wait)."
            )
            return 3
    except (psycopg.Error, httpx.HTTPError) as unreadable:
        first = (
            str(unreadable).strip().splitlines()[0] if str(unreadable).strip() else type(unreadable).__name__
        )
        print(f"sagastack check: the stack in {run_dir} cannot be read: {first}")
        return 4
    violations, (orders, products, payments) = checked
    against = (
        "the provider simulator's ledger"
        if provider
        else "our orders (a real provider: its ledger is not read)"
    )
    looked = f"{_n(orders, 'order')}, {_n(products, 'product')} and {_n(payments, 'payment')}"
    print(f"checked {looked}, against {against}")
    print("not checked: stock and money against where they started (only the run that seeded them knows)")
    if not violations:
        print("every invariant checked holds")
        return 0
    for v in violations[:SHOWN]:
        print(f"invariant violated: {v}")
    if len(violations) > SHOWN:
        print(f"… and {len(violations) - SHOWN} more")
    return 1


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "check",
        help="check the invariants (docs/design.md §6) on a running stack, once it settles",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("--run-dir", default=".run/stack", help="the stack's run directory (a demo's: .run/demo)")
    p.add_argument(
        "--wait", type=count, default=60, help="seconds to wait for the stack to settle (0: look once)"
    )
    p.set_defaults(func=main)
