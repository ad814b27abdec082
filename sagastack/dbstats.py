"""Where the databases' time goes: the statements that took each service's database
longest during a bench run, from PostgreSQL's ``pg_stat_statements``
(``bench --db-statements N``).

The figures are the server's **execution time** — wall time inside PostgreSQL, lock waits
included, not CPU — and its calls and rows, per normalized statement (parameters folded
into ``$1``, …). That is how this project found its set-based statements reading whole
tables (``saga_kit/sql.py``): a statement whose time per call grows with the table, or
whose rows are few for its time. The extension must be preloaded, so the embedded server
runs with ``PRELOAD`` (``System.postgres_options``); a database that was started without
it (an external one) is reported as such, and the run goes on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import psycopg
from rich.console import Console
from rich.table import Table

#: characters per line when the tables go to a file or a pipe rather than a terminal
LOG_WIDTH = 180
#: server options that load pg_stat_statements (and count statements inside functions too)
PRELOAD = ("-c", "shared_preload_libraries=pg_stat_statements", "-c", "pg_stat_statements.track=all")


@dataclass(frozen=True)
class Statement:
    """One normalized statement's totals since the last ``reset``: ``total_ms`` of
    execution (planning excluded) over ``calls``, returning or touching ``rows``."""

    query: str
    calls: int
    total_ms: float
    rows: int

    @property
    def ms_per_call(self) -> float:
        return self.total_ms / self.calls if self.calls else 0.0


def reset(urls: Mapping[str, str]) -> list[str]:
    """Create the extension where missing and zero its counters, in each database of
    ``urls`` (service → URL); returns why a database could not (e.g. not preloaded)."""
    problems = []
    for service, url in urls.items():
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                conn.execute("SELECT pg_stat_statements_reset()")
        except psycopg.Error as exc:
            problems.append(f"{service}: {str(exc).strip()}")
    return problems


def top(url: str, n: int) -> list[Statement]:
    """The ``n`` statements of the database at ``url`` with the most execution time."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT query, calls, total_exec_time, rows FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            # not the transactions' own statements, nor this module's
            " AND query !~* '^\\s*(BEGIN|COMMIT|ROLLBACK)' AND query !~ 'pg_stat_statements'"
            " ORDER BY total_exec_time DESC LIMIT %s",
            (n,),
        ).fetchall()
    return [Statement(re.sub(r"\s+", " ", q).strip(), c, t, r) for q, c, t, r in rows]


def print_top(urls: Mapping[str, str], n: int, sagas: int, console: Console | None = None) -> None:
    """One table per database: its ``n`` longest statements, with the time each cost per
    saga (``sagas`` completed while they were counted)."""
    if console is None:
        console = Console(highlight=False)
        if not console.is_terminal:  # a log or a pipe: wide enough to read the statements
            console = Console(highlight=False, width=LOG_WIDTH)
    for service, url in urls.items():
        try:
            statements = top(url, n)
        except psycopg.Error as exc:
            console.print(f"{service}: no statement statistics: {str(exc).strip()}")
            continue
        table = Table(
            title=f"{service}: statements by execution time, most first"
            " (wall time in the server, lock waits included)",
            title_justify="left",
        )
        for column in ("calls", "total ms", "ms/call", "ms/saga", "rows"):
            table.add_column(column, justify="right", no_wrap=True, min_width=len(column))
        # the statement takes what the figures leave of the line, cut short with an ellipsis
        table.add_column(
            "statement", overflow="ellipsis", no_wrap=True, max_width=max(20, console.width - 64)
        )
        for s in statements:
            table.add_row(
                f"{s.calls:,}",
                f"{s.total_ms:,.0f}",
                f"{s.ms_per_call:.2f}",
                f"{s.total_ms / max(1, sagas):.3f}",
                f"{s.rows:,}",
                s.query,
            )
        console.print(table)
