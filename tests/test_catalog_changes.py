"""A catalog change reaches every output: the live view maps products at snapshot time, and
`catalog load` writes again the recent hours' reports that counted a moved product."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
from test_realtime_api import send, view, wait_for

from clickstream.api.server import run_in_background
from clickstream.ingest.cleaning import clean_batch
from clickstream.ingest.raw import Kind, RawEvent
from clickstream.reports.hours import HOUR, last_complete_hour, suffix
from clickstream.reports.scheduler import report_pass
from clickstream.store.catalog import upsert_products
from clickstream.store.db import connect
from clickstream.store.writer import write_batch

CATALOG = [("product-1", "category-1"), ("product-2", "category-2"), ("product-3", "category-3")]


def store_views(settings, views: list[tuple[str, str, datetime]]) -> None:
    raw = [
        RawEvent(Kind.VIEW, "v", 0, i, orjson.dumps(view(user, product, "web", at)), None)
        for i, (user, product, at) in enumerate(views)
    ]
    batch = clean_batch(raw)
    assert not batch.rejects
    with connect(settings) as conn:
        write_batch(conn, batch)


def test_a_moved_product_shows_under_its_new_category_everywhere(pipeline, tmp_path):
    p = pipeline
    with connect(p.settings) as conn:
        upsert_products(conn, CATALOG)
    # two reported hours: H-1 saw product-3 only, H saw product-1 and product-2
    now = datetime.now(UTC)
    hour = last_complete_hour(now)
    store_views(
        p.settings,
        [
            ("user-1", "product-3", hour - HOUR + timedelta(minutes=5)),
            ("user-1", "product-1", hour + timedelta(minutes=5)),
            ("user-2", "product-1", hour + timedelta(minutes=6)),
            ("user-2", "product-2", hour + timedelta(minutes=7)),
        ],
    )
    out = tmp_path / "reports"
    out.mkdir()
    with connect(p.settings, autocommit=True) as conn:
        report_pass(conn, out, hour + timedelta(minutes=3), delay=timedelta(0))
        report_pass(conn, out, hour + HOUR + timedelta(minutes=3), delay=timedelta(0))
    viewed = out / f"category_viewed_{suffix(hour)}.csv"
    earlier = out / f"category_viewed_{suffix(hour - HOUR)}.csv"
    assert viewed.read_text().splitlines()[1:] == [
        "category-1,product-1,,,,,,,,,",
        "category-2,product-2,,,,,,,,,",
    ]
    earlier_text = earlier.read_text()

    send(p, [view("user-5", "product-1", "web", now)])
    server = run_in_background(p.settings, port=0)
    try:
        wait_for(
            server,
            {
                "users": ["user-5"],
                "count": 1,
                "categories": [("category-1", 1)],
                "platforms": [("web", 1)],
            },
        )
        moved = tmp_path / "moved.csv"
        moved.write_text("productid,categoryid\nproduct-1,category-2\nproduct-2,category-2\n")
        result = p.cli("catalog", "load", str(moved), "--out", str(out))
        assert result.returncode == 0, result.stderr
        assert f"whose files changed: {suffix(hour)}\n" in result.stdout
        # the view that arrived under category-1 now counts under category-2
        wait_for(
            server,
            {
                "users": ["user-5"],
                "count": 1,
                "categories": [("category-2", 1)],
                "platforms": [("web", 1)],
            },
        )
    finally:
        server.stop()
    assert viewed.read_text().splitlines()[1:] == ["category-2,product-1,product-2,,,,,,,,"]
    conversion = out / f"conversion_rates_{suffix(hour)}.csv"
    assert conversion.read_text().splitlines()[1:] == ["category-2,3,0,0.0000"]
    assert earlier.read_text() == earlier_text
    # the scheduler finds nothing more to do
    with connect(p.settings, autocommit=True) as conn:
        assert report_pass(conn, out, now, delay=timedelta(0)) == []
