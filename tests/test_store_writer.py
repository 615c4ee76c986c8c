"""The writer through the consumer: what a redelivered or repeated event leaves in the tables."""

from __future__ import annotations

import orjson
from test_ingest import fast


def _order(messageid: str, products: list[str]) -> bytes:
    return orjson.dumps(
        {
            "event": "OrderEvent",
            "messageid": messageid,
            "userid": "user-1",
            "orderid": f"order-{messageid}",
            "lineitems": [{"productid": p, "quantity": 1} for p in products],
        }
    )


def test_an_order_already_stored_is_skipped_whole_even_with_more_line_items(pipeline):
    pipeline = fast(pipeline)
    pipeline.produce_orders([_order("m-1", ["a", "b"])])
    first = pipeline.consume()
    assert first.order_lines == 2

    # Back with a third line item, and a new order twice in one batch, the second longer.
    pipeline.produce_orders(
        [_order("m-1", ["a", "b", "c"]), _order("m-2", ["x"]), _order("m-2", ["x", "y", "z"])]
    )
    again = pipeline.consume()

    assert pipeline.query(
        "SELECT messageid, line, productid FROM order_lines ORDER BY messageid, line"
    ) == [("m-1", 1, "a"), ("m-1", 2, "b"), ("m-2", 1, "x")]
    assert (again.order_lines, again.duplicates, again.dead_letters) == (1, 6, 0)
    # The report counters count the lines stored, not the lines sent.
    assert pipeline.query("SELECT productid, order_lines FROM report_order_hours ORDER BY 1") == [
        ("a", 1),
        ("b", 1),
        ("x", 1),
    ]
