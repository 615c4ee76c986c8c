"""The three reports from per-product counts: ranking, ties, rates and the CSV bytes.

Pure: the same counts always give the same bytes, which is what makes a rerun of an hour
byte-identical whether the counts came from the aggregates or from the raw events.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from clickstream.util.natural import natural_key

__all__ = [
    "TOP",
    "Counts",
    "ProductEvents",
    "ProductUsers",
    "conversion_rate",
    "conversion_rows",
    "counts_from_products",
    "render",
    "top_rows",
]

TOP = 10


class ProductUsers(NamedTuple):
    category: str
    product: str
    users: int


class ProductEvents(NamedTuple):
    """One product's events in a window; `category` is None when it is not in the catalog."""

    product: str
    category: str | None
    users: int
    events: int


@dataclass(frozen=True)
class Counts:
    """What one window's reports are made of: distinct users per product of the catalog,
    events per category, and what was left out for products missing from the catalog."""

    viewers: list[ProductUsers] = field(default_factory=list)
    buyers: list[ProductUsers] = field(default_factory=list)
    views: dict[str, int] = field(default_factory=dict)
    purchases: dict[str, int] = field(default_factory=dict)
    left_out_views: int = 0
    left_out_order_lines: int = 0
    left_out_products: int = 0


def counts_from_products(views: Iterable[ProductEvents], orders: Iterable[ProductEvents]) -> Counts:
    """Split per-product counts into what the reports show and what they leave out."""
    missing: set[str] = set()

    def split(rows: Iterable[ProductEvents]) -> tuple[list[ProductUsers], dict[str, int], int]:
        users, per_category, left_out = [], defaultdict(int), 0
        for row in rows:
            if row.category is None:
                missing.add(row.product)
                left_out += row.events
            else:
                users.append(ProductUsers(row.category, row.product, row.users))
                per_category[row.category] += row.events
        return users, dict(per_category), left_out

    viewers, views_per_category, left_out_views = split(views)
    buyers, purchases_per_category, left_out_lines = split(orders)
    return Counts(
        viewers,
        buyers,
        views_per_category,
        purchases_per_category,
        left_out_views=left_out_views,
        left_out_order_lines=left_out_lines,
        left_out_products=len(missing),
    )


def top_rows(counts: Iterable[ProductUsers], top: int = TOP) -> list[list[str]]:
    """Per category, its `top` products by distinct users, best first; ties in natural order.

    One row per category with at least one product, rows in natural category order, each
    padded with empty cells to `top` products.
    """
    by_category: dict[str, list[ProductUsers]] = defaultdict(list)
    for row in counts:
        by_category[row.category].append(row)
    rows = []
    for category in sorted(by_category, key=natural_key):
        ranked = sorted(by_category[category], key=lambda r: (-r.users, natural_key(r.product)))
        products = [r.product for r in ranked[:top]]
        rows.append([category, *products, *[""] * (top - len(products))])
    return rows


def conversion_rate(purchases: int, views: int) -> str:
    """purchases / views with 4 decimals, halves rounded up; empty when there were no views.

    Integer arithmetic, so the rate is exact however large the counts.
    """
    if views == 0:
        return ""
    scaled = (purchases * 20_000 + views) // (2 * views)
    return f"{scaled // 10_000}.{scaled % 10_000:04d}"


def conversion_rows(
    views: Mapping[str, int], purchases: Mapping[str, int]
) -> list[tuple[str, int, int, str]]:
    """One row per category that had views or purchases, in natural category order."""
    categories = sorted(set(views) | set(purchases), key=natural_key)
    return [
        (
            c,
            views.get(c, 0),
            purchases.get(c, 0),
            conversion_rate(purchases.get(c, 0), views.get(c, 0)),
        )
        for c in categories
    ]


def _csv(header: list[str], rows: Iterable[Iterable[object]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


def render(counts: Counts) -> dict[str, bytes]:
    """The three files' bytes, by kind (`viewed`, `bought`, `conversion`)."""
    top_header = ["category", *(str(n) for n in range(1, TOP + 1))]
    return {
        "viewed": _csv(top_header, top_rows(counts.viewers)),
        "bought": _csv(top_header, top_rows(counts.buyers)),
        "conversion": _csv(
            ["category", "views", "purchases", "conversion_rate"],
            conversion_rows(counts.views, counts.purchases),
        ),
    }
