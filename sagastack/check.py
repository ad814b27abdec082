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

Exit status: 0 every invariant holds; 1 a violation (each printed); 2 no stack runs in the
run directory; 3 not settled within ``--wait`` seconds (what is still in flight printed).
"""

from __future__ import annotations

import argparse
import fcntl
import json
from pathlib import Path
from typing import Any

from sagastack import invariants
from sagastack.cli_types import count
from sagastack.system import MANIFEST

#: Violations printed in full; past them, a count.
SHOWN = 50


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
    return (
        f"{_n(pending, 'order')} PENDING, {_n(held, 'reservation')} held, {_n(waiting, 'payment')}"
        f" waiting on the provider, {_n(unsent, 'event')} not yet published"
    )


def _n(n: int, thing: str) -> str:
    return f"{n} {thing}" + ("" if n == 1 else "s")


def main(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    try:
        manifest = read_manifest(run_dir)
    except NoStack as none:
        hint = " (make run; a demo's stack: --run-dir .run/demo)" if run_dir == Path(".run/stack") else ""
        print(f"sagastack check: {none}{hint}")
        return 2
    urls: dict[str, str] = manifest["database_urls"]
    print(f"waiting up to {args.wait} s for the stack in {run_dir} to settle …", flush=True)
    if not invariants.wait_for_quiescence(urls, timeout=args.wait):
        print(
            f"not settled after {args.wait} s: {_in_flight(urls)}. The invariants hold once nothing"
            " is in flight: check again when the load stops, or wait longer (--wait)."
        )
        return 3
    provider = manifest["provider_url"] if manifest["provider_simulated"] else None
    violations = invariants.check(urls, {}, {}, provider)
    orders, products, payments = invariants.sizes(urls)
    against = (
        "the provider simulator's ledger"
        if provider
        else "our orders (a real provider: its ledger is not read)"
    )
    looked = f"{_n(orders, 'order')}, {_n(products, 'product')} and {_n(payments, 'payment')}"
    print(f"checked {looked}, against {against}")
    if not violations:
        print("every invariant holds (stock and money against where they started: only a seeded run knows)")
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
