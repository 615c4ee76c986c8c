"""Synthetic marketplace traffic in exactly the source formats, deterministic for a seed.

The shape is what the reports and the live view are meant to reveal: product popularity
follows a power law, each user favours a few categories, a few users are far more active
than the rest, several platforms, and orders are mostly of products the buyer viewed.
Everything is drawn with NumPy in bulk, so millions of events take seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["PLATFORMS", "Dataset", "generate", "power_law", "view_lines", "write_dataset"]

PLATFORMS = ("desktop", "mobile-web", "android", "ios")
_PLATFORM_WEIGHTS = (0.42, 0.28, 0.18, 0.12)
_FAVOURITES = 3
_FAVOURITE_SHARE = 0.8
_VIEWED_SHARE = 0.85


@dataclass(frozen=True)
class Dataset:
    catalog: list[tuple[str, str]]
    views: list[bytes]
    orders: list[bytes]


def _uuids(rng: np.random.Generator, count: int) -> list[str]:
    raw = rng.bytes(16 * count)
    out = []
    for i in range(count):
        h = raw[16 * i : 16 * i + 16].hex()
        out.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}")
    return out


def power_law(rng: np.random.Generator, count: int, exponent: float) -> np.ndarray:
    """Probabilities of `count` items, skewed like real popularity, in a shuffled order."""
    weights = 1.0 / np.arange(1, count + 1) ** exponent
    rng.shuffle(weights)
    return weights / weights.sum()


def generate(
    *,
    users: int = 1000,
    products: int = 1000,
    categories: int = 25,
    views: int = 100_000,
    orders: int = 10_000,
    seed: int = 42,
) -> Dataset:
    if min(users, products, categories) < 1 or min(views, orders) < 0:
        raise ValueError("users, products and categories must be at least 1; counts at least 0")
    rng = np.random.default_rng(seed)
    product_ids = np.array([f"product-{i}" for i in range(1, products + 1)], dtype=object)
    user_ids = np.array([f"user-{i}" for i in range(1, users + 1)], dtype=object)

    # Catalog: category sizes are skewed too; every category gets at least one product
    # when there are enough products.
    category_of = rng.choice(categories, size=products, p=power_law(rng, categories, 0.6))
    category_of[: min(categories, products)] = np.arange(min(categories, products))
    rng.shuffle(category_of)
    catalog = [(product_ids[i], f"category-{category_of[i] + 1}") for i in range(products)]

    popularity = power_law(rng, products, 1.1)
    members = [np.flatnonzero(category_of == c) for c in range(categories)]
    category_weight = np.array([popularity[m].sum() for m in members])
    live = np.flatnonzero(category_weight > 0)

    # Views: active users view more; most views fall in the viewer's favourite categories.
    activity = power_law(rng, users, 0.8)
    viewer = rng.choice(users, size=views, p=activity)
    favourites = live[
        rng.choice(
            len(live),
            size=(users, _FAVOURITES),
            p=category_weight[live] / category_weight[live].sum(),
        )
    ]
    in_favourites = rng.random(views) < _FAVOURITE_SHARE
    chosen_category = favourites[viewer, rng.integers(0, _FAVOURITES, size=views)]
    viewed = rng.choice(products, size=views, p=popularity)
    for c in live:
        picks = np.flatnonzero(in_favourites & (chosen_category == c))
        if picks.size:
            weights = popularity[members[c]] / category_weight[c]
            viewed[picks] = members[c][rng.choice(members[c].size, size=picks.size, p=weights)]
    platform = rng.choice(len(PLATFORMS), size=views, p=_PLATFORM_WEIGHTS)
    view_ids = _uuids(rng, views)
    view_records = [
        (
            b'{"event": "ProductView", "messageid": "%s", "userid": "%s", '
            b'"properties": {"productid": "%s"}, "context": {"source": "%s"}}'
        )
        % (mid.encode(), user_ids[u].encode(), product_ids[p].encode(), PLATFORMS[s].encode())
        for mid, u, p, s in zip(view_ids, viewer, viewed, platform, strict=True)
    ]

    order_records = _orders(
        rng,
        orders,
        viewer=viewer,
        viewed=viewed,
        activity=activity,
        popularity=popularity,
        user_ids=user_ids,
        product_ids=product_ids,
    )
    return Dataset(catalog, view_records, order_records)


def _orders(
    rng: np.random.Generator,
    orders: int,
    *,
    viewer: np.ndarray,
    viewed: np.ndarray,
    activity: np.ndarray,
    popularity: np.ndarray,
    user_ids: np.ndarray,
    product_ids: np.ndarray,
) -> list[bytes]:
    """Orders by users who viewed something, the more active the likelier, mostly of products
    the buyer viewed: so that the purchase/view ratio means something."""
    if not orders or not viewer.size:
        return []
    users, products = user_ids.size, product_ids.size
    by_user = np.argsort(viewer, kind="stable")
    sorted_viewers = viewer[by_user]
    starts = np.searchsorted(sorted_viewers, np.arange(users), side="left")
    ends = np.searchsorted(sorted_viewers, np.arange(users), side="right")
    has_views = np.flatnonzero(ends > starts)
    buyer_weight = activity[has_views] / activity[has_views].sum()
    buyers = has_views[rng.choice(has_views.size, size=orders, p=buyer_weight)]
    line_counts = 1 + rng.binomial(3, 0.25, size=orders)
    order_ids = _uuids(rng, orders)
    order_records: list[bytes] = []
    for n, (buyer, count) in enumerate(zip(buyers, line_counts, strict=True)):
        lines = []
        for _ in range(count):
            if rng.random() < _VIEWED_SHARE:
                product = viewed[by_user[rng.integers(starts[buyer], ends[buyer])]]
            else:
                product = rng.choice(products, p=popularity)
            quantity = int(rng.geometric(0.7))
            lines.append(
                b'{"productid": "%s", "quantity": %d}' % (product_ids[product].encode(), quantity)
            )
        order_records.append(
            b'{"event": "OrderEvent", "messageid": "%s", "userid": "%s", '
            b'"lineitems": [%s], "orderid": %d}'
            % (order_ids[n].encode(), user_ids[buyer].encode(), b", ".join(lines), 50000 + n)
        )
    return order_records


def view_lines(
    count: int, seed: int = 42, users: int = 100_000, products: int = 10_000
) -> list[bytes]:
    """Just views, for benchmarks that need many of them."""
    return generate(
        users=users, products=products, categories=50, views=count, orders=0, seed=seed
    ).views


def write_dataset(dataset: Dataset, out: Path) -> dict[str, Path]:
    """Write product-views.json, orders.json and product-category-map.csv into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "views": out / "product-views.json",
        "orders": out / "orders.json",
        "catalog": out / "product-category-map.csv",
    }
    paths["views"].write_bytes(b"".join(line + b"\n" for line in dataset.views))
    paths["orders"].write_bytes(b"".join(line + b"\n" for line in dataset.orders))
    paths["catalog"].write_text(
        "productid,categoryid\n" + "".join(f"{p},{c}\n" for p, c in dataset.catalog)
    )
    return paths
