"""Reads of users' recently viewed products, from the `user_product_hours` table the ingest keeps.

A user's rows, newest first through the index `(userid, hour DESC, viewed_at DESC, productid)`,
list each product once per hour it was viewed in, and a product's first row is its latest
view. (The hour is viewed_at's bin, so it sorts the same, and leading with it lets PostgreSQL
read the table's daily partitions newest first and stop.) So the first `limit` distinct
products of the newest rows are the answer. A lookup reads a window of twice `limit` rows and
widens it only for a user whose window repeats products so much that it holds fewer than
`limit` of them: it reads a handful of rows, however long the history.
"""

from __future__ import annotations

import psycopg

__all__ = ["FIRST_WINDOW", "RECENT_ENTRIES", "recently_viewed_many"]

FIRST_WINDOW = 2  # rows read per product asked for
_WIDEN = 4

RECENT_ENTRIES = (
    "SELECT productid FROM user_product_hours WHERE userid = %s"
    " ORDER BY hour DESC, viewed_at DESC, productid LIMIT %s"
)

# Several windows in one statement: one row per (user, window) pair, in the order given.
_RECENT_ENTRIES_MANY = (
    "SELECT array(SELECT productid FROM user_product_hours WHERE userid = q.userid"
    " ORDER BY hour DESC, viewed_at DESC, productid LIMIT q.rows)"
    " FROM unnest(%s::text[], %s::int[]) WITH ORDINALITY AS q(userid, rows, i) ORDER BY q.i"
)


async def recently_viewed_many(
    conn: psycopg.AsyncConnection, lookups: list[tuple[str, int]]
) -> list[list[str]]:
    """For each (user id, limit): distinct products, most recent first (ties: product id)."""
    answers: list[list[str]] = [[] for _ in lookups]
    windows = {i: limit * FIRST_WINDOW for i, (_, limit) in enumerate(lookups)}
    while windows:
        pending = list(windows)
        cur = await conn.execute(
            _RECENT_ENTRIES_MANY,
            ([lookups[i][0] for i in pending], [windows[i] for i in pending]),
        )
        for i, (entries,) in zip(pending, await cur.fetchall(), strict=True):
            limit = lookups[i][1]
            products = list(dict.fromkeys(entries))[:limit]
            if len(products) == limit or len(entries) < windows[i]:
                answers[i] = products
                del windows[i]
            else:
                windows[i] *= _WIDEN
    return answers
