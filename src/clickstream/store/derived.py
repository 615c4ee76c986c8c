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

VIEW_DERIVATIONS: tuple[str, ...] = ()

ORDER_LINE_DERIVATIONS: tuple[str, ...] = ()
