"""Reads of a user's recently viewed products, from the `recent_views` table the ingest keeps.

The query walks the index `(userid, viewed_at DESC, productid)` and stops after `limit`
entries: one request reads at most `limit` rows, however many views the user or the table
holds. Each product appears once in `recent_views`, so no DISTINCT is needed.
"""

from __future__ import annotations

import psycopg

__all__ = ["RECENTLY_VIEWED", "recently_viewed"]

RECENTLY_VIEWED = (
    "SELECT productid FROM recent_views WHERE userid = %s"
    " ORDER BY viewed_at DESC, productid LIMIT %s"
)


async def recently_viewed(conn: psycopg.AsyncConnection, user_id: str, limit: int) -> list[str]:
    """Distinct products of `user_id`, most recently viewed first (ties: product id)."""
    cur = await conn.execute(RECENTLY_VIEWED, (user_id, limit))
    return [row[0] for row in await cur.fetchall()]
