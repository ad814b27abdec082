"""``bench --db-statements``: an embedded server started with ``dbstats.PRELOAD`` counts
every statement, ``reset`` zeroes the counts, ``top`` ranks them by execution time; a
server started without it is reported, not fatal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from rich.console import Console

from sagastack import dbstats
from sagastack.embedded import DATABASES, Postgres


@pytest.fixture
def counting(tmp_path: Path) -> Iterator[Postgres]:
    pg = Postgres(tmp_path / "pgdata", dbstats.PRELOAD)
    pg.start()
    yield pg
    pg.stop()


def test_the_slowest_statements_come_first_with_their_calls_and_rows(counting: Postgres) -> None:
    url = counting.url(DATABASES["order_svc"])
    assert dbstats.reset({"order_svc": url}) == []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT 1")  # before the reset: not counted
        assert dbstats.reset({"order_svc": url}) == []
        for _ in range(3):
            conn.execute("SELECT pg_sleep(%s)", (0.05,))
        conn.execute("SELECT generate_series(%s::int, %s::int)", (1, 40))
    first, *rest = dbstats.top(url, 5)
    assert first.query == "SELECT pg_sleep($1)"
    assert (first.calls, first.rows) == (3, 3) and first.total_ms >= 150
    assert first.ms_per_call == pytest.approx(first.total_ms / 3)
    assert [(s.query, s.calls, s.rows) for s in rest] == [("SELECT generate_series($1::int, $2::int)", 1, 40)]
    console = Console(record=True, width=200)
    dbstats.print_top({"order_svc": url}, 5, sagas=3, console=console)
    printed = console.export_text()
    assert "order_svc: statements by execution time, most first" in printed
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in printed.splitlines() if "│" in line]
    assert [row[-1].split("(")[0] for row in rows] == [
        "SELECT pg_sleep",
        "SELECT generate_series",
    ]  # most first
    calls, total, per_call, per_saga, returned, _ = rows[0]
    assert (calls, returned) == ("3", "3")
    assert float(total.replace(",", "")) == pytest.approx(first.total_ms, abs=0.5)
    assert float(per_call) == pytest.approx(first.total_ms / 3, abs=0.005)
    assert float(per_saga) == pytest.approx(first.total_ms / 3, abs=0.001)  # 3 sagas


def test_a_server_without_the_library_is_reported_and_the_run_goes_on(postgres: Postgres) -> None:
    url = postgres.url(DATABASES["inventory_svc"])  # the session's server: started without it
    (problem,) = dbstats.reset({"inventory_svc": url})
    assert problem.startswith("inventory_svc: ") and "shared_preload_libraries" in problem
    console = Console(record=True, width=200)
    dbstats.print_top({"inventory_svc": url}, 5, sagas=1, console=console)
    assert "inventory_svc: no statement statistics" in console.export_text()
