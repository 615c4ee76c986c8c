"""Produce -> consume -> PostgreSQL on real components: counts exact, nothing lost or doubled."""

from __future__ import annotations

import orjson
import pytest

from clickstream.generate import generate


def _expected(dataset):
    views = {orjson.loads(v)["messageid"] for v in dataset.views}
    lines = sum(len(orjson.loads(o)["lineitems"]) for o in dataset.orders)
    return views, lines


@pytest.mark.parametrize("target", ["pipeline", "external_pipeline"])
def test_every_valid_event_stored_once_every_invalid_one_dead_lettered(request, target):
    p = request.getfixturevalue(target)
    dataset = generate(users=50, products=40, categories=5, views=3000, orders=400, seed=3)
    bad_views = [b"not json at all", b'{"event": "ProductView", "messageid": "m-x"}', b"[1, 2]"]
    bad_orders = [
        b'{"event": "OrderEvent", "messageid": "o-x", "userid": "u", "orderid": 1, "lineitems": []}'
    ]
    p.produce_views(dataset.views + bad_views)
    p.produce_orders(dataset.orders + bad_orders)

    stats = p.consume()

    views, lines = _expected(dataset)
    assert stats.views == len(views)
    # counts and distinct counts: a set alone would not see a row stored twice
    assert p.query("SELECT count(*), count(DISTINCT messageid) FROM product_views") == [
        (len(views), len(views))
    ]
    assert {m for (m,) in p.query("SELECT messageid FROM product_views")} == views
    orders = {orjson.loads(o)["messageid"] for o in dataset.orders}
    assert p.query(
        "SELECT count(*), count(DISTINCT (messageid, line)), count(DISTINCT messageid)"
        " FROM order_lines"
    ) == [(lines, lines, len(orders))]
    assert p.query("SELECT count(*), count(DISTINCT messageid) FROM view_messageids") == [
        (len(views), len(views))
    ]
    reasons = sorted(r for (r,) in p.query("SELECT reason FROM dead_letters"))
    assert reasons == [
        "bad-json: invalid literal, expected 'null': line 1 column 1 (char 0)",
        "bad-lineitems: lineitems is empty",
        "missing-field: userid",
        "not-an-object: got a JSON array",
    ]
