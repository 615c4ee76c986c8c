"""Reads of users' recently viewed products, from the `recent_views` table the ingest keeps.

Each lookup walks the index `(userid, viewed_at DESC, productid)` and stops after `limit`
entries: it reads at most `limit` rows, however many views the user or the table holds.
Each product appears once per user in `recent_views`, so no DISTINCT is needed.
"""

from __future__ import annotations

import psycopg

__all__ = ["RECENTLY_VIEWED", "RECENTLY_VIEWED_MANY", "recently_viewed_many"]

RECENTLY_VIEWED = (
    "SELECT productid FROM recent_views WHERE userid = %s"
    " ORDER BY viewed_at DESC, productid LIMIT %s"
)

# Several lookups in one statement: one row per (user, limit) pair, in the order given.
RECENTLY_VIEWED_MANY = (
    "SELECT array(SELECT productid FROM recent_views WHERE userid = q.userid"
    " ORDER BY viewed_at DESC, productid LIMIT q.lim)"
    " FROM unnest(%s::text[], %s::int[]) WITH ORDINALITY AS q(userid, lim, i) ORDER BY q.i"
)


async def recently_viewed_many(
    conn: psycopg.AsyncConnection, lookups: list[tuple[str, int]]
) -> list[list[str]]:
    """For each (user id, limit): distinct products, most recent first (ties: product id)."""
    users = [user for user, _ in lookups]
    limits = [limit for _, limit in lookups]
    cur = await conn.execute(RECENTLY_VIEWED_MANY, (users, limits))
    return [row[0] for row in await cur.fetchall()]
