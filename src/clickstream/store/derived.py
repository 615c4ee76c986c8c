"""Tables derived from newly stored rows, kept current in the same transaction as the rows.

Each derivation is a name and one data-modifying SQL statement (INSERT ... ON CONFLICT ...)
that reads the rows a batch actually added, `new_product_views(messageid, userid, productid,
source, viewed_at)` or `new_order_lines(messageid, line, orderid, userid, productid, quantity,
ordered_at)`. The writer runs them as the parts of one WITH query, under their names, so a
derivation may also read what an earlier one RETURNs.
Because a redelivered event adds no row, a derived table is updated exactly once per event,
with no extra bookkeeping.
"""

from __future__ import annotations

__all__ = ["ORDER_LINE_DERIVATIONS", "VIEW_DERIVATIONS", "Derivation", "hour_bin"]

Derivation = tuple[str, str]  # (name, statement)


def hour_bin(column: str) -> str:
    """SQL for the UTC hour a time falls in, whatever the session's time zone: the one hour
    binning of the derived tables, their recomputation, erasure and the reports."""
    return f"date_bin('1 hour', {column}, '2000-01-01 00:00+00')"


# Who viewed what in which UTC hour, with the latest view of that hour (migration
# 0004_user_product_hours): what the recently-viewed API reads, and what makes the hourly
# distinct-viewer counters exact. Grouped because one batch may hold several views of a
# triple; ordered as its primary key (userid, hour, productid), so that concurrent consumers
# lock rows in one order. It RETURNs the triples it inserted (an update sets `revised`, which
# a new row has false; a partitioned table has no xmax to RETURN), and those are the batch's
# new distinct viewers; a triple another consumer inserted first is updated or skipped here,
# so it is counted once.
USER_PRODUCT_HOURS = f"""
    INSERT INTO user_product_hours AS r (userid, productid, hour, viewed_at)
    SELECT userid, productid, {hour_bin("viewed_at")},
           max(viewed_at)
    FROM new_product_views GROUP BY 1, 2, 3 ORDER BY 1, 3, 2
    ON CONFLICT (userid, productid, hour) DO UPDATE SET viewed_at = excluded.viewed_at,
        revised = true
    WHERE r.viewed_at < excluded.viewed_at
    RETURNING hour, productid, NOT r.revised AS inserted
"""

# The hourly reports' counters (see migration 0002_report_aggregates), pre-grouped per batch:
# per product and UTC hour, the events and the new distinct users in one upsert. Ordered so
# that concurrent consumers lock rows in one order.
REPORT_VIEW_COUNTS = f"""
    INSERT INTO report_view_hours AS r (hour, productid, views, viewers)
    SELECT hour, productid, sum(views), sum(viewers) FROM (
        SELECT {hour_bin("viewed_at")} AS hour, productid,
               count(*) AS views, 0 AS viewers
        FROM new_product_views GROUP BY 1, 2
        UNION ALL
        SELECT hour, productid, 0, count(*) FROM new_user_product_hours WHERE inserted
        GROUP BY 1, 2
    ) AS batch
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (hour, productid) DO UPDATE
    SET views = r.views + excluded.views, viewers = r.viewers + excluded.viewers
"""
# Buyers are a tenth of viewers and nothing else needs them per user: each (hour, product,
# user) once, and the rows really inserted are the new distinct buyers.
REPORT_BUYERS = f"""
    INSERT INTO report_buyers (hour, productid, userid)
    SELECT DISTINCT {hour_bin("ordered_at")}, productid, userid
    FROM new_order_lines ORDER BY 1, 2, 3
    ON CONFLICT DO NOTHING
    RETURNING hour, productid
"""
REPORT_ORDER_COUNTS = f"""
    INSERT INTO report_order_hours AS r (hour, productid, order_lines, buyers)
    SELECT hour, productid, sum(order_lines), sum(buyers) FROM (
        SELECT {hour_bin("ordered_at")} AS hour, productid,
               count(*) AS order_lines, 0 AS buyers
        FROM new_order_lines GROUP BY 1, 2
        UNION ALL
        SELECT hour, productid, 0, count(*) FROM new_report_buyers GROUP BY 1, 2
    ) AS batch
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (hour, productid) DO UPDATE
    SET order_lines = r.order_lines + excluded.order_lines, buyers = r.buyers + excluded.buyers
"""

VIEW_DERIVATIONS: tuple[Derivation, ...] = (
    ("new_user_product_hours", USER_PRODUCT_HOURS),
    ("report_view_counts", REPORT_VIEW_COUNTS),
)

ORDER_LINE_DERIVATIONS: tuple[Derivation, ...] = (
    ("new_report_buyers", REPORT_BUYERS),
    ("report_order_counts", REPORT_ORDER_COUNTS),
)
