"""Tables derived from newly stored rows, kept current in the same transaction as the rows.

Each entry is one data-modifying SQL statement (INSERT ... ON CONFLICT ...) that reads the
rows a batch actually added, `new_product_views(messageid, userid, productid, source,
viewed_at)` or `new_order_lines(messageid, line, orderid, userid, productid, quantity,
ordered_at)`.
Because a redelivered event adds no row, a derived table is updated exactly once per event,
with no extra bookkeeping.
"""

from __future__ import annotations

__all__ = ["ORDER_LINE_DERIVATIONS", "VIEW_DERIVATIONS"]

# Latest view per (user, product) for the recently-viewed API. Grouped because one batch may
# hold several views of a pair; ordered so that concurrent consumers lock rows in one order.
RECENT_VIEWS = """
    INSERT INTO recent_views AS r (userid, productid, viewed_at)
    SELECT userid, productid, max(viewed_at) FROM new_product_views
    GROUP BY userid, productid ORDER BY userid, productid
    ON CONFLICT (userid, productid) DO UPDATE SET viewed_at = excluded.viewed_at
    WHERE r.viewed_at < excluded.viewed_at
"""

# The hourly reports' counters (see migration 0002_report_aggregates): events per product and
# UTC hour, pre-grouped per batch; each new (hour, product, user) once, which a statement-level
# trigger adds to the distinct-user counters.
REPORT_VIEW_COUNTS = """
    INSERT INTO report_view_hours AS r (hour, productid, views)
    SELECT date_trunc('hour', viewed_at, 'UTC'), productid, count(*) FROM new_product_views
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (hour, productid) DO UPDATE SET views = r.views + excluded.views
"""
REPORT_VIEWERS = """
    INSERT INTO report_viewers (hour, productid, userid)
    SELECT DISTINCT date_trunc('hour', viewed_at, 'UTC'), productid, userid
    FROM new_product_views ORDER BY 1, 2, 3
    ON CONFLICT DO NOTHING
"""
REPORT_ORDER_LINE_COUNTS = """
    INSERT INTO report_order_hours AS r (hour, productid, order_lines)
    SELECT date_trunc('hour', ordered_at, 'UTC'), productid, count(*) FROM new_order_lines
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (hour, productid) DO UPDATE SET order_lines = r.order_lines + excluded.order_lines
"""
REPORT_BUYERS = """
    INSERT INTO report_buyers (hour, productid, userid)
    SELECT DISTINCT date_trunc('hour', ordered_at, 'UTC'), productid, userid
    FROM new_order_lines ORDER BY 1, 2, 3
    ON CONFLICT DO NOTHING
"""

VIEW_DERIVATIONS: tuple[str, ...] = (RECENT_VIEWS, REPORT_VIEW_COUNTS, REPORT_VIEWERS)

ORDER_LINE_DERIVATIONS: tuple[str, ...] = (REPORT_ORDER_LINE_COUNTS, REPORT_BUYERS)
