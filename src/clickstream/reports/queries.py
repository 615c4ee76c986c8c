"""The per-product counts a report needs, read from PostgreSQL two ways that must agree.

`hour_counts` reads the per-hour counters kept at ingest (one row per product seen in the
hour); `raw_counts` is the straightforward query over the stored events, which `--all-time`
uses (distinct users over many hours cannot be summed from hourly counts) and which the
benchmark and the tests compare against. Both join the catalog now, at report time, so a
product added to the catalog after its events arrived is reported from then on.
"""

from __future__ import annotations

from datetime import datetime

import psycopg

from clickstream.reports.hours import HOUR
from clickstream.reports.ranking import Counts, ProductEvents, counts_from_products

__all__ = ["hour_counts", "hour_totals", "raw_counts"]

_WITH_CATEGORY = """
    SELECT a.productid, p.categoryid, a.users, a.events
    FROM ({per_product}) a LEFT JOIN products p USING (productid)
"""
_HOURLY_VIEWS = (
    "SELECT productid, viewers AS users, views AS events FROM report_view_hours WHERE hour = %(h)s"
)
_HOURLY_ORDERS = (
    "SELECT productid, buyers AS users, order_lines AS events"
    " FROM report_order_hours WHERE hour = %(h)s"
)


def _raw(table: str, at: str, hour: datetime | None) -> str:
    window = "" if hour is None else f" WHERE {at} >= %(h)s AND {at} < %(end)s"
    return (
        f"SELECT productid, count(DISTINCT userid) AS users, count(*) AS events FROM {table}"
        f"{window} GROUP BY productid"
    )


def _products(conn: psycopg.Connection, per_product: str, params: dict) -> list[ProductEvents]:
    sql = _WITH_CATEGORY.format(per_product=per_product)
    return [ProductEvents(*row) for row in conn.execute(sql, params)]


def hour_counts(conn: psycopg.Connection, hour: datetime) -> Counts:
    """One hour's counts from the counters kept at ingest."""
    params = {"h": hour}
    return counts_from_products(
        _products(conn, _HOURLY_VIEWS, params), _products(conn, _HOURLY_ORDERS, params)
    )


def raw_counts(conn: psycopg.Connection, hour: datetime | None) -> Counts:
    """One hour's counts (None: all time) straight from product_views and order_lines."""
    params = {} if hour is None else {"h": hour, "end": hour + HOUR}
    return counts_from_products(
        _products(conn, _raw("product_views", "viewed_at", hour), params),
        _products(conn, _raw("order_lines", "ordered_at", hour), params),
    )


def hour_totals(conn: psycopg.Connection, hours: list[datetime]) -> dict[datetime, tuple[int, int]]:
    """Views and order lines stored so far per hour, in the catalog or not.

    They only ever grow, so a total that changed since an hour was reported means events
    for that hour arrived after it.
    """
    totals = {h: [0, 0] for h in hours}
    for column, (table, events) in enumerate(
        [("report_view_hours", "views"), ("report_order_hours", "order_lines")]
    ):
        for hour, total in conn.execute(
            f"SELECT hour, sum({events})::bigint FROM {table} WHERE hour = ANY(%s) GROUP BY hour",
            (hours,),
        ):
            totals[hour][column] = total
    return {h: (v, o) for h, (v, o) in totals.items()}
