"""``python -m sagastack check``: the invariants of docs/design.md §6 on a stack that runs.

A choreography has no coordinator that could say a saga went wrong: each service sees
its own database only. This command is the reconciliation an operator runs beside it. It
finds the running stack through its run directory's manifest (``System.write_manifest``),
waits until nothing is left to publish or settle (``invariants.wait_for_quiescence``),
then checks everything ``make demo`` checks but what needs the seed: every order
terminal, no reservation held or sold for an order that is not APPROVED, each APPROVED
order's items sold (every unit), units sold matching committed reservations, our
payments against the provider simulator's ledger (each APPROVED order charged once and
not refunded, every other charge refunded once), no saga step twice, and the
dashboard's counts by status. Stock and money are not
checked against where they started (``PUT /products`` sets stock, so only a run that
seeded them knows: the demo and the chaos run check those). Dead letters still waiting
are counted beside the verdict: a saga one of them cut short ended by its deadline, and
holds every invariant.

Exit status: 0 every invariant checked holds; 1 a violation (each printed); 2 a usage
error (argparse's); 3 not settled within ``--wait`` seconds (what is still in flight
printed: the oldest PENDING orders, the orders whose reservations are held, and whether
anything moved at all); 4 a database or the provider could not be read (which, and its
first line of error); 5 no stack runs in the run directory.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from sagastack import invariants
from sagastack.cli_types import count
from sagastack.embedded import MANIFEST, PidFile

#: Violations printed in full; past them, a count.
SHOWN = 50
#: Orders named per kind when the stack has not settled (the oldest PENDING ones, those
#: whose reservations are held).
SHOWN_IN_FLIGHT = 5


#: Seconds the provider simulator's ledger is asked for before the check gives up (exit 4).
PROVIDER_PATIENCE_SECONDS = 10.0


class NoStack(Exception):
    """No live run owns the run directory, it has not finished starting (or is stopping),
    or its manifest cannot be read."""


class Unreadable(Exception):
    """The provider simulator's ledger could not be read; the message says why (a
    database that does not answer is psycopg's own error)."""


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The manifest of the run that owns ``run_dir`` now: ``database_urls``,
    ``provider_url``, ``provider_simulated`` (``System.write_manifest``). Raises
    ``NoStack`` (saying why) when no run holds the directory's claim (``owner.lock``: a
    run that was killed left its manifest), the run has not written one yet (still
    starting), or it is not a manifest."""
    lock = run_dir / "owner.lock"
    if not lock.exists():
        raise NoStack(f"no stack has run in {run_dir}")
    try:
        with open(lock) as held:
            try:
                fcntl.flock(held, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # a live run holds it: good
            else:
                left = PidFile(run_dir / "pids.json").running()
                if left:  # the supervisor and its watchdog were both killed
                    raise NoStack(
                        f"no run supervises {run_dir}: its supervisor is gone, but what it started"
                        f" still runs ({', '.join(left)}); a run started there stops that first"
                    )
                raise NoStack(f"no stack runs in {run_dir} now")
        manifest = json.loads((run_dir / MANIFEST).read_text())
    except FileNotFoundError:
        raise NoStack(f"the stack in {run_dir} is still starting (or stopping)") from None
    except (OSError, ValueError) as unreadable:
        raise NoStack(f"{run_dir / MANIFEST} cannot be read: {unreadable}") from None
    if not (
        isinstance(manifest, dict)
        and isinstance(manifest.get("database_urls"), dict)
        and set(invariants.SERVICES) <= manifest["database_urls"].keys()
        and isinstance(manifest.get("provider_url"), str)
    ):
        raise NoStack(f"{run_dir / MANIFEST} is not a stack's manifest (System.write_manifest writes one)")
    return manifest


def _in_flight(database_urls: dict[str, str], moved: bool) -> str:
    unsent, pending, held, waiting = invariants.activity(database_urls)
    said = (
        f"{_n(pending, 'order')} PENDING, {_n(held, 'reservation')} held, {_n(waiting, 'payment')}"
        f" waiting on the provider, {_n(unsent, 'event')} not yet published"
    )
    oldest = invariants.pending_orders(database_urls, SHOWN_IN_FLIGHT)
    if oldest:
        said += "; the oldest PENDING: " + ", ".join(f"{oid} (placed {age:.0f} s ago)" for oid, age in oldest)
    holding = invariants.holding_orders(database_urls, SHOWN_IN_FLIGHT)
    if holding:
        said += "; reservations held for: " + ", ".join(f"{oid} ({status})" for oid, status in holding)
    provider_errors = invariants.provider_answers(database_urls, SHOWN_IN_FLIGHT) if waiting else []
    if provider_errors:
        said += "; the provider's last answers: " + "; ".join(provider_errors)
    if moved:
        return said + ". Check again when the load stops, or wait longer (--wait; WAIT= under make)."
    if waiting and provider_errors and not (pending or held or unsent):
        # nothing stuck but payments, and the provider said why: an outage or a refusal,
        # not a lost event; the charges and refunds go on once it takes them
        return said + (
            ". Nothing moved while it waited: the payments wait on the provider (see its answers;"
            " sagactl health shows its circuit breaker), and are settled once it takes them."
        )
    return (
        said + ". Nothing moved while it waited: these look stuck, not in flight — a saga whose"
        " event was lost (an embedded Tansu restarted keeps no events), or a service that is"
        " down (make run restarts them; sagactl health)."
    )


def _n(n: int, thing: str) -> str:
    return f"{n} {thing}" + ("" if n == 1 else "s")


Sizes = tuple[int, int, int]


def settled_check(urls: dict[str, str], provider: str | None, wait: float) -> tuple[list[str], Sizes] | None:
    """Every invariant (``invariants.check`` without the seed) and what it looked at
    (orders, products, payments), read while nothing moved: the stack quiet before and
    after, and no outbox written in between (``invariants.marks``). Three databases have
    no common snapshot, so an order that lands mid-check would show as a violation (an
    operator trial: 12 false alarms in 25 checks under a trickle of orders): such a check
    is thrown away and taken again. ``provider``: the simulator's URL (None: a real
    provider, not read). None: the stack did not stay still for one check within
    ``wait`` seconds. Raises ``Unreadable`` (the provider) or ``psycopg.Error`` (a
    database; each gets ``invariants.CONNECT_TIMEOUT_SECONDS`` to answer)."""
    end = time.monotonic() + wait
    while invariants.wait_for_quiescence(urls, timeout=max(0.0, end - time.monotonic())):
        before = invariants.marks(urls)
        ledger = _ledger(provider)
        violations, sizes = invariants.check_counted(urls, {}, {}, ledger)
        if invariants.activity(urls) == (0, 0, 0, 0) and invariants.marks(urls) == before:
            return violations, sizes
        if time.monotonic() >= end:
            break
    return None


def _ledger(provider: str | None) -> invariants.ProviderLedger | None:
    if provider is None:
        return None
    try:
        return invariants.ProviderLedger.fetch(provider, patience=PROVIDER_PATIENCE_SECONDS)
    except httpx.HTTPError as down:
        raise Unreadable(
            f"the payment provider simulator's ledger at {provider} cannot be read: {_first_line(down)}"
        ) from down


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def main(args: argparse.Namespace) -> int:
    try:
        return _check(Path(args.run_dir), args.wait)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _check(run_dir: Path, wait: int) -> int:
    try:
        manifest = read_manifest(run_dir)
    except NoStack as none:
        print(
            f"sagastack check: {none} (make run starts one; another run directory:"
            " --run-dir DIR, or RUN_DIR=DIR with make)"
        )
        return 5
    urls: dict[str, str] = manifest["database_urls"]
    if wait:
        print(f"waiting up to {wait} s for the stack in {run_dir} to settle …", flush=True)
    provider = manifest["provider_url"] if manifest.get("provider_simulated") else None
    try:
        first = invariants.marks(urls)
        checked = settled_check(urls, provider, wait)
        if checked is None:
            moved = invariants.marks(urls) != first
            print(f"not settled{f' after {wait} s' if wait else ''}: {_in_flight(urls, moved or not wait)}")
            return 3
    except psycopg.Error as down:
        print(f"sagastack check: a database of the stack cannot be read: {_first_line(down)}")
        return 4
    except Unreadable as unreadable:
        print(f"sagastack check: {unreadable}")
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
    waiting = invariants.pending_dead_letters(urls)
    if waiting:  # a saga an event of which was dead-lettered ends by its deadline, invariants holding
        print(
            "dead letters waiting: "
            + ", ".join(f"{name} {n}" for name, n in waiting.items())
            + " (sagactl dlq list): events a service could not take; a saga one of them"
            " cut short ended by its deadline, and the invariants cannot tell"
        )
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
        # not the module doc's first line: it began with reST's ``python -m sagastack check`` (a trial)
        description="Check the invariants of docs/design.md §6 on a stack that runs.",
    )
    p.add_argument("--run-dir", default=".run/stack", help="the stack's run directory (a demo's: .run/demo)")
    p.add_argument(
        "--wait", type=count, default=60, help="seconds to wait for the stack to settle (0: look once)"
    )
    p.set_defaults(func=main)
