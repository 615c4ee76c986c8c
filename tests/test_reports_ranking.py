"""The reports' pure parts: natural order, top 10 with ties, rates, CSV bytes, hours."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from clickstream.reports.hours import file_names, hours_between, last_complete_hour, parse_hour
from clickstream.reports.ranking import (
    Counts,
    ProductEvents,
    ProductUsers,
    conversion_rate,
    counts_from_products,
    render,
    top_rows,
)
from clickstream.util.natural import natural_key


def test_natural_order_reads_numbers_as_numbers():
    ids = ["product-10", "product-2", "product-1", "item-3", "product-02", "product-", "p10x2"]
    assert sorted(ids, key=natural_key) == [
        "item-3",
        "p10x2",
        "product-",
        "product-1",
        "product-02",
        "product-2",
        "product-10",
    ]


def test_top_ten_breaks_a_tie_at_the_tenth_place_by_natural_order():
    # Eight clear leaders, then five products tied for places 9 and 10.
    leaders = [ProductUsers("c", f"product-{n}", 100 - n) for n in range(1, 9)]
    tied = [ProductUsers("c", f"product-{n}", 5) for n in (30, 9, 100, 12, 20)]
    rows = top_rows(leaders + tied)
    assert rows == [["c", *(f"product-{n}" for n in range(1, 9)), "product-9", "product-12"]]


def test_ranking_is_descending_and_ties_anywhere_are_natural():
    counts = [
        ProductUsers("c", "product-10", 3),
        ProductUsers("c", "product-2", 3),
        ProductUsers("c", "product-7", 9),
        ProductUsers("c", "product-1", 1),
    ]
    assert top_rows(counts) == [
        ["c", "product-7", "product-2", "product-10", "product-1", "", "", "", "", "", ""]
    ]


def test_one_row_per_category_in_natural_order_with_empty_trailing_cells():
    counts = [
        ProductUsers("category-10", "product-1", 1),
        ProductUsers("category-2", "product-5", 2),
        ProductUsers("category-2", "product-6", 7),
    ]
    assert top_rows(counts) == [
        ["category-2", "product-6", "product-5", *[""] * 8],
        ["category-10", "product-1", *[""] * 9],
    ]


@pytest.mark.parametrize(
    ("purchases", "views", "rate"),
    [
        (0, 0, ""),
        (3, 0, ""),
        (0, 7, "0.0000"),
        (1, 3, "0.3333"),
        (2, 3, "0.6667"),
        (1, 32, "0.0313"),  # exactly halfway: rounded up
        (1, 20_000, "0.0001"),  # half of the last place, up
        (1, 20_001, "0.0000"),
        (7, 2, "3.5000"),  # more order lines than views happens
        (123_456_789_012, 987_654_321_098, "0.1250"),
    ],
)
def test_conversion_rate_is_purchases_over_views_with_four_decimals(purchases, views, rate):
    assert conversion_rate(purchases, views) == rate


def test_render_gives_the_exact_bytes_of_the_three_files():
    counts = Counts(
        viewers=[ProductUsers("category-1", "product-1", 2), ProductUsers("c,2", 'p"q', 1)],
        buyers=[ProductUsers("category-1", "product-1", 1)],
        views={"category-1": 5, "c,2": 1},
        purchases={"category-1": 2, "category-3": 1},
    )
    files = render(counts)
    header = b"category,1,2,3,4,5,6,7,8,9,10\n"
    assert files["viewed"] == header + b'"c,2","p""q",,,,,,,,,\ncategory-1,product-1,,,,,,,,,\n'
    assert files["bought"] == header + b"category-1,product-1,,,,,,,,,\n"
    assert files["conversion"] == (
        b"category,views,purchases,conversion_rate\n"
        b'"c,2",1,0,0.0000\ncategory-1,5,2,0.4000\ncategory-3,0,1,\n'
    )


def test_products_missing_from_the_catalog_are_left_out_and_counted():
    views = [
        ProductEvents("product-1", "category-1", 2, 5),
        ProductEvents("product-9", None, 1, 4),
        ProductEvents("product-8", None, 2, 2),
    ]
    orders = [
        ProductEvents("product-9", None, 1, 3),
        ProductEvents("product-1", "category-1", 1, 1),
    ]
    counts = counts_from_products(views, orders)
    assert counts.viewers == [ProductUsers("category-1", "product-1", 2)]
    assert counts.views == {"category-1": 5}
    assert counts.purchases == {"category-1": 1}
    assert (counts.left_out_views, counts.left_out_order_lines, counts.left_out_products) == (
        6,
        3,
        2,
    )


def test_hours_and_file_names():
    hour = parse_hour("2026-11-24T13")
    assert hour == datetime(2026, 11, 24, 13, tzinfo=UTC)
    assert file_names(hour) == {
        "viewed": "category_viewed_2026-11-24T13.csv",
        "bought": "category_bought_2026-11-24T13.csv",
        "conversion": "conversion_rates_2026-11-24T13.csv",
    }
    assert file_names(None)["conversion"] == "conversion_rates_all.csv"
    assert last_complete_hour(datetime(2026, 11, 24, 14, 0, tzinfo=UTC)) == hour
    assert last_complete_hour(datetime(2026, 11, 24, 14, 59, 59, tzinfo=UTC)) == hour
    assert hours_between(hour, hour) == [hour]
    assert len(hours_between(hour, parse_hour("2026-11-25T13"))) == 25


@pytest.mark.parametrize(
    "text", ["2026-11-24", "2026-11-24T24", "2026-11-24 13", "2026-1-24T13", "2026-11-24T1", ""]
)
def test_a_malformed_hour_is_refused(text):
    with pytest.raises(ValueError, match="YYYY-MM-DDTHH"):
        parse_hour(text)
