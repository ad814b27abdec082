"""How many orders are in each status, kept by the database (migration
``order_status_counts``): every statement that writes orders appends its net change per
status to ``order_status_counts``, in its own transaction. Reading sums the rows there;
``fold`` replaces them, on a schedule, with one row per status, so a read sums a few
hundred rows however many orders there are.

Exact, unlike an estimate from the planner's statistics: the dashboard's figures are
the orders that exist, as ``GET /orders?status=`` would list them.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from saga_kit.db import Database


async def read(conn: AsyncConnection) -> dict[str, int]:
    """Orders by status; a status without orders is absent."""
    rows = await conn.execute(
        text("SELECT status, sum(orders) FROM order_status_counts GROUP BY status HAVING sum(orders) <> 0")
    )
    return {status: int(n) for status, n in rows}


async def fold(db: Database) -> int:
    """Replace the rows appended since the last fold with one per status; return how many
    rows it folded. Safe beside writers and another instance's fold: it deletes only the
    rows its snapshot sees, and inserts their sum in the same transaction (a row committed
    meanwhile stays, to be folded next time)."""
    async with db.engine.begin() as conn:
        folded = await conn.scalar(
            text(
                "WITH folded AS (DELETE FROM order_status_counts RETURNING status, orders),"
                " summed AS ("
                "   INSERT INTO order_status_counts (status, orders)"
                "   SELECT status, sum(orders) FROM folded GROUP BY status HAVING sum(orders) <> 0"
                " )"
                " SELECT count(*) FROM folded"
            )
        )
    return int(folded or 0)
