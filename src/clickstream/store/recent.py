"""Reads of users' recently viewed products, from the `user_product_hours` table the ingest keeps.

A user's rows list each product once per hour it was viewed in, and a product's first row
by (hour, viewed_at) newest first is its latest view, so the first `limit` distinct products
of the newest rows are the answer. The table's one index, its primary key `(userid, hour,
productid) INCLUDE (viewed_at)`, keeps a user's rows by hour but not by time within the hour
(a second index in that order cost every new row an insert; migration 0012 dropped it). So
a lookup first finds the hour of the user's `rows`-th newest row, reading `rows` index
entries, and then sorts only the rows of that hour and the newer ones: they hold the newest
`rows` rows, whole hours of them. Both steps read the index alone.

A lookup asks for a window of twice `limit` rows and widens it only for a user whose window
repeats products so much that it holds fewer than `limit` of them: it reads a handful of
rows, however long the history.
"""

from __future__ import annotations

import psycopg

__all__ = ["FIRST_WINDOW", "RECENT_ENTRIES", "recently_viewed_many"]

FIRST_WINDOW = 2  # rows read per product asked for
_WIDEN = 4


def _newest_rows(userid: str, rows: str) -> str:
    """SQL for the product ids of a user's newest `rows` rows, newest first (ties: id)."""
    cut = (
        f"SELECT coalesce(min(hour), '-infinity') FROM (SELECT hour FROM user_product_hours"
        f" WHERE userid = {userid} ORDER BY hour DESC LIMIT {rows}) AS newest"
    )
    return (
        f"SELECT productid FROM user_product_hours WHERE userid = {userid} AND hour >= ({cut})"
        f" ORDER BY hour DESC, viewed_at DESC, productid LIMIT {rows}"
    )


RECENT_ENTRIES = _newest_rows("%(user)s", "%(rows)s")

# Several windows in one statement: one row per (user, window) pair, in the order given.
_RECENT_ENTRIES_MANY = (
    f"SELECT array({_newest_rows('q.userid', 'q.rows')})"
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
