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

VIEW_DERIVATIONS: tuple[str, ...] = (RECENT_VIEWS,)

ORDER_LINE_DERIVATIONS: tuple[str, ...] = ()
