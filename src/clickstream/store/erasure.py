"""`clickstream forget-user`: a user's rows out of every table, their counts out of the
report counters, and an audit row, in one transaction.

The transaction first closes the ingest's gate (store/erased.py): the batches in flight
commit before it reads, and the next wait until it commits, so no batch can store a row of
the user the erasure does not see, or touch a derived row it removes; the ingest pauses
while an erasure runs. Its record's time is its end: the user's events still on the topics
with an earlier event time are skipped when consumed, never stored again. Counters are decreased by
exactly what was deleted, so a counter a batch raised meanwhile keeps that batch's part:
the user's view events and order lines, and one distinct viewer or buyer per (hour,
product) row of `user_product_hours` / `report_buyers` removed. A counter row left at zero
is deleted, so a report rerun is the one computed as if the user had never existed.
Finding the rows scans `product_views` and `order_lines` (no index by user: it would cost
every ingested event for the sake of a rare request).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import orjson
import psycopg

from clickstream.lifecycle.privacy import names_user, needles
from clickstream.store.derived import hour_bin
from clickstream.store.erased import close_gate

__all__ = ["CHANNEL", "Erasure", "erase_user"]

CHANNEL = "clickstream_erasures"  # NOTIFY payload: the erasure's id

_ERASE = f"""
WITH views AS (
    DELETE FROM product_views WHERE userid = %(u)s
    RETURNING {hour_bin("viewed_at")} AS hour, productid
), lines AS (
    DELETE FROM order_lines WHERE userid = %(u)s
    RETURNING {hour_bin("ordered_at")} AS hour, productid
), viewed AS (
    DELETE FROM user_product_hours WHERE userid = %(u)s RETURNING hour, productid
), bought AS (
    DELETE FROM report_buyers WHERE userid = %(u)s RETURNING hour, productid
), dead AS (
    DELETE FROM dead_letters WHERE id = ANY(%(dead)s) RETURNING id
), view_counts AS (
    UPDATE report_view_hours r SET views = r.views - d.views, viewers = r.viewers - d.viewers
    FROM (
        SELECT hour, productid, sum(views) AS views, sum(viewers) AS viewers FROM (
            SELECT hour, productid, count(*) AS views, 0 AS viewers FROM views GROUP BY 1, 2
            UNION ALL
            SELECT hour, productid, 0, count(*) FROM viewed GROUP BY 1, 2
        ) AS x GROUP BY 1, 2
    ) AS d
    WHERE r.hour = d.hour AND r.productid = d.productid
    RETURNING r.hour, r.productid
), order_counts AS (
    UPDATE report_order_hours r
    SET order_lines = r.order_lines - d.order_lines, buyers = r.buyers - d.buyers
    FROM (
        SELECT hour, productid, sum(order_lines) AS order_lines, sum(buyers) AS buyers FROM (
            SELECT hour, productid, count(*) AS order_lines, 0 AS buyers FROM lines
            GROUP BY 1, 2
            UNION ALL
            SELECT hour, productid, 0, count(*) FROM bought GROUP BY 1, 2
        ) AS x GROUP BY 1, 2
    ) AS d
    WHERE r.hour = d.hour AND r.productid = d.productid
    RETURNING r.hour, r.productid
)
SELECT (SELECT count(*) FROM views), (SELECT count(*) FROM lines),
       (SELECT count(*) FROM viewed), (SELECT count(*) FROM bought),
       (SELECT count(*) FROM dead),
       (SELECT array_agg(hour) FROM view_counts), (SELECT array_agg(productid) FROM view_counts),
       (SELECT array_agg(hour) FROM order_counts), (SELECT array_agg(productid) FROM order_counts)
"""

_DROP_ZEROS = """
DELETE FROM {table} r USING unnest(%s::timestamptz[], %s::text[]) AS k(hour, productid)
WHERE r.hour = k.hour AND r.productid = k.productid AND r.{events} = 0 AND r.{users} = 0
"""


@dataclass(frozen=True)
class Erasure:
    """What one erasure removed: rows per table, the hours whose counters changed."""

    id: int
    erased_at: datetime
    rows_removed: dict[str, int]
    hours: list[datetime]

    @property
    def total(self) -> int:
        return sum(self.rows_removed.values())


def _dead_letters_naming(cur: psycopg.Cursor, userid: str) -> list[int]:
    """Ids of the dead letters whose payload names the user: a byte search narrows them
    down in the database, `names_user` decides on each."""
    forms = needles(userid)
    where = " OR ".join(["position(%s::bytea IN payload) > 0"] * len(forms))
    rows = cur.execute(f"SELECT id, payload FROM dead_letters WHERE {where}", forms)
    return [id_ for id_, payload in rows if names_user(bytes(payload), userid)]


def erase_user(conn: psycopg.Connection, userid: str, hashed: str) -> Erasure:
    """Erase the user, record the erasure under `hashed`, tell listeners; one transaction."""
    with conn.transaction(), conn.cursor() as cur:
        close_gate(cur)
        dead = _dead_letters_naming(cur, userid)
        row = cur.execute(_ERASE, {"u": userid, "dead": dead}).fetchone()
        views, lines, viewed, bought, dead_count, v_hours, v_products, o_hours, o_products = row
        removed = {
            "product_views": views,
            "order_lines": lines,
            "user_product_hours": viewed,
            "report_buyers": bought,
            "dead_letters": dead_count,
        }
        for table, events, users, hours, products in (
            ("report_view_hours", "views", "viewers", v_hours, v_products),
            ("report_order_hours", "order_lines", "buyers", o_hours, o_products),
        ):
            cur.execute(
                _DROP_ZEROS.format(table=table, events=events, users=users),
                (hours or [], products or []),
            )
            removed[table] = cur.rowcount
        erasure_id, erased_at = cur.execute(
            "INSERT INTO erasures (user_hash, rows_removed, erased_at)"
            " VALUES (%s, %s, clock_timestamp()) RETURNING id, erased_at",
            (hashed, orjson.dumps(removed).decode()),
        ).fetchone()
        cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(erasure_id)))
    hours = sorted(set(v_hours or []) | set(o_hours or []))
    return Erasure(erasure_id, erased_at, removed, hours)
