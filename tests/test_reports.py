"""Hourly reports on hand-built hours whose answers are known by construction.

One hour, 2026-11-24T13, holds (by category):

    category-1   product-1..8 viewed by 19..12 distinct users; product-9, -11, -12, -100
                 tied at 3 users for places 9 and 10; bought: product-2 by 2 users,
                 product-1 twice by one user
    category-2   product-20 viewed 50 times by one user, product-21 once by 2 users; no orders
    category-3   no views, one order line
    category-10  product-50 viewed at 13:00:00.000 and 13:59:59.999 (in) and at
                 12:59:59.999 and 14:00:00.000 (out); one order line
    not listed   product-999: 4 views, 1 order line
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import pytest
from conftest import Pipeline, fresh_database

from clickstream.ingest.cleaning import clean_batch
from clickstream.ingest.event_time import format_timestamp
from clickstream.ingest.raw import Kind, RawEvent
from clickstream.reports.hourly import read_counts
from clickstream.reports.hours import parse_hour
from clickstream.reports.queries import raw_counts
from clickstream.reports.ranking import ProductUsers
from clickstream.services import embedded
from clickstream.store.catalog import upsert_products
from clickstream.store.db import connect
from clickstream.store.schema import MIGRATIONS, migrate
from clickstream.store.writer import write_batch

H = datetime(2026, 11, 24, 13, tzinfo=UTC)
MS = timedelta(milliseconds=1)


def view(user: str, product: str, when: datetime) -> bytes:
    return orjson.dumps(
        {
            "event": "ProductView",
            "messageid": str(uuid.uuid4()),
            "userid": user,
            "properties": {"productid": product},
            "context": {"source": "desktop"},
            "timestamp": format_timestamp(when),
        }
    )


def order(user: str, items: list[tuple[str, int]], when: datetime) -> bytes:
    return orjson.dumps(
        {
            "event": "OrderEvent",
            "messageid": str(uuid.uuid4()),
            "userid": user,
            "orderid": uuid.uuid4().int % 10**9,
            "lineitems": [{"productid": p, "quantity": q} for p, q in items],
            "timestamp": format_timestamp(when),
        }
    )


def store(settings, views: list[bytes] = (), orders: list[bytes] = ()) -> None:
    """Clean and store events exactly as the consumer does after reading them from Kafka."""
    raw = [RawEvent(Kind.VIEW, "v", 0, i, line, None) for i, line in enumerate(views)]
    raw += [RawEvent(Kind.ORDER, "o", 0, i, line, None) for i, line in enumerate(orders)]
    batch = clean_batch(raw)
    assert not batch.rejects
    with connect(settings) as conn:
        write_batch(conn, batch)


CATALOG = [
    *((f"product-{n}", "category-1") for n in [*range(1, 13), 100]),
    ("product-20", "category-2"),
    ("product-21", "category-2"),
    ("product-60", "category-3"),
    ("product-50", "category-10"),
]


def hand_built_hour() -> tuple[list[bytes], list[bytes]]:
    at = H + timedelta(minutes=20)
    views = []
    for n in range(1, 9):
        views += [view(f"user-{u}", f"product-{n}", at) for u in range(20 - n)]
    for n in (12, 9, 100, 11):
        views += [view(f"user-{u}", f"product-{n}", at) for u in range(3)]
    views += [view("user-1", "product-20", at) for _ in range(50)]
    views += [view("user-1", "product-21", at), view("user-2", "product-21", at)]
    views += [
        view("user-b1", "product-50", H),
        view("user-b2", "product-50", H + timedelta(hours=1) - MS),
        view("user-b3", "product-50", H + timedelta(hours=1)),
        view("user-b4", "product-50", H - MS),
    ]
    views += [view(u, "product-999", at) for u in ("user-o1", "user-o1", "user-o2", "user-o2")]
    orders = [
        order("user-a", [("product-1", 1)], at),
        order("user-a", [("product-1", 5), ("product-2", 1)], at),
        order("user-y", [("product-2", 2)], at),
        order("user-z", [("product-60", 1)], at),
        order("user-o1", [("product-999", 1), ("product-50", 1)], at),
        order("user-late", [("product-1", 1)], H + timedelta(hours=1)),
    ]
    return views, orders


EMPTY = ",,,,,,,,"
EXPECTED = {
    "category_viewed_2026-11-24T13.csv": (
        "category,1,2,3,4,5,6,7,8,9,10\n"
        "category-1,product-1,product-2,product-3,product-4,product-5,product-6,product-7,"
        "product-8,product-9,product-11\n"
        f"category-2,product-21,product-20{EMPTY}\n"
        f"category-10,product-50,{EMPTY}\n"
    ),
    "category_bought_2026-11-24T13.csv": (
        "category,1,2,3,4,5,6,7,8,9,10\n"
        f"category-1,product-2,product-1{EMPTY}\n"
        f"category-3,product-60,{EMPTY}\n"
        f"category-10,product-50,{EMPTY}\n"
    ),
    "conversion_rates_2026-11-24T13.csv": (
        "category,views,purchases,conversion_rate\n"
        "category-1,136,4,0.0294\n"
        "category-2,52,0,0.0000\n"
        "category-3,0,1,\n"
        "category-10,2,1,0.5000\n"
    ),
}


@pytest.fixture
def hour_stored(pipeline):
    with connect(pipeline.settings) as conn:
        upsert_products(conn, CATALOG)
    views, orders = hand_built_hour()
    # Two batches, the second partly a redelivery of the first: counted once all the same.
    store(pipeline.settings, views[:100], orders[:2])
    store(pipeline.settings, views, orders)
    return pipeline


def test_report_of_a_hand_built_hour(hour_stored, tmp_path):
    out = tmp_path / "reports"
    result = hour_stored.cli("report", "--hour", "2026-11-24T13", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert {p.name: p.read_text() for p in out.iterdir()} == EXPECTED
    assert result.stdout.splitlines() == [
        f"wrote {out}/category_viewed_2026-11-24T13.csv (3 categories)",
        f"wrote {out}/category_bought_2026-11-24T13.csv (3 categories)",
        f"wrote {out}/conversion_rates_2026-11-24T13.csv (4 categories)",
        "left out 4 views and 1 order lines of 1 products missing from the catalog",
    ]


def test_counters_agree_with_the_raw_events(hour_stored):
    with connect(hour_stored.settings, autocommit=True) as conn:
        counters, totals = read_counts(conn, H)
        raw = raw_counts(conn, H)
    assert sorted(counters.viewers) == sorted(raw.viewers)
    assert sorted(counters.buyers) == sorted(raw.buyers)
    assert _rest(counters) == _rest(raw)
    assert totals == (136 + 52 + 2 + 4, 4 + 1 + 2)


@pytest.mark.parametrize("second_view", ["later", "earlier"])
def test_two_consumers_storing_one_viewer_at_once_count_it_once(pipeline, second_view):
    """Consumer B stores a view of the same (hour, product, user) while A's batch with it is
    still uncommitted: B waits for A, then must find the viewer counted already, whether
    its view is newer (B updates the row) or older (B leaves it)."""
    settings = pipeline.settings
    with connect(settings) as conn:
        upsert_products(conn, CATALOG)
    at = H + timedelta(minutes=30)
    other = at + (timedelta(minutes=5) if second_view == "later" else -timedelta(minutes=5))
    first = clean_batch([RawEvent(Kind.VIEW, "v", 0, 0, view("user-1", "product-1", at), None)])
    second = clean_batch(
        [
            RawEvent(Kind.VIEW, "v", 1, 0, view("user-1", "product-1", other), None),
            RawEvent(Kind.VIEW, "v", 1, 1, view("user-2", "product-1", other), None),
        ]
    )
    with connect(settings) as a, connect(settings) as b:
        b_pid = b.info.backend_pid
        with a.transaction():
            write_batch(a, first)
            writer = threading.Thread(target=write_batch, args=(b, second))
            writer.start()
            deadline = time.monotonic() + 10
            while not a.execute(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", (b_pid,)
            ).fetchone()[0]:
                assert time.monotonic() < deadline, "B never waited for A"
                time.sleep(0.01)
        writer.join(10)
    assert not writer.is_alive()
    with connect(settings, autocommit=True) as conn:
        counters, totals = read_counts(conn, H)
        raw = raw_counts(conn, H)
    assert counters.viewers == raw.viewers == [ProductUsers("category-1", "product-1", 2)]
    assert counters.views == {"category-1": 3}
    assert totals == (3, 0)


def _rest(counts):
    return {
        "views": counts.views,
        "purchases": counts.purchases,
        "left_out_views": counts.left_out_views,
        "left_out_order_lines": counts.left_out_order_lines,
        "left_out_products": counts.left_out_products,
    }


def test_rerun_is_byte_identical_and_a_late_catalog_entry_counts_from_then_on(
    hour_stored, tmp_path
):
    out = tmp_path / "reports"
    first = hour_stored.cli("report", "--hour", "2026-11-24T13", "--out", str(out))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = hour_stored.cli("report", "--hour", "2026-11-24T13", "--out", str(out))
    assert first.returncode == again.returncode == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert first.stdout == again.stdout

    with connect(hour_stored.settings) as conn:
        upsert_products(conn, [("product-999", "category-2")])
    later = hour_stored.cli("report", "--hour", "2026-11-24T13", "--out", str(out))
    assert later.stdout.splitlines()[-1] == (
        "left out 0 views and 0 order lines of 0 products missing from the catalog"
    )
    conversion = (out / "conversion_rates_2026-11-24T13.csv").read_text().splitlines()
    assert "category-2,56,1,0.0179" in conversion
    viewed = (out / "category_viewed_2026-11-24T13.csv").read_text().splitlines()
    assert f"category-2,product-21,product-999,product-20{EMPTY[:-1]}" in viewed


def test_an_hour_without_events_gives_headers_only(pipeline, tmp_path):
    result = pipeline.cli("report", "--hour", "2020-01-01T00", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "category_viewed_2020-01-01T00.csv").read_text() == (
        "category,1,2,3,4,5,6,7,8,9,10\n"
    )
    assert (tmp_path / "conversion_rates_2020-01-01T00.csv").read_text() == (
        "category,views,purchases,conversion_rate\n"
    )


def test_default_hour_is_the_last_complete_one_and_out_defaults_to_reports_dir(pipeline):
    before = datetime.now(UTC)
    result = pipeline.cli("report")
    after = datetime.now(UTC)
    assert result.returncode == 0, result.stderr
    names = {p.name for p in pipeline.settings.reports_dir.iterdir()}
    hours = {
        (t.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)) for t in (before, after)
    }
    assert any(
        names
        == {
            f"{k}_{h:%Y-%m-%dT%H}.csv"
            for k in ("category_viewed", "category_bought", "conversion_rates")
        }
        for h in hours
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--hour", "2026-11-24"],
        ["--hour", "2026-11-24T25"],
        ["--hour", "yesterday"],
        ["--hour", "2026-11-24T13", "--all-time"],
        ["--all-time", "--every-hour"],
    ],
)
def test_bad_report_arguments_end_in_one_line_and_exit_2(pipeline, args):
    result = pipeline.cli("report", *args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("clickstream report: error:")


def _clear_of_the_next_hour(margin: timedelta = timedelta(seconds=30)) -> None:
    """Wait past the top of the hour when it is close, so events stamped now share one hour."""
    now = datetime.now(UTC)
    next_hour = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    if next_hour - now < margin:
        time.sleep((next_hour - now).total_seconds() + 1)


def test_events_through_kafka_and_the_consumer_reach_the_report(pipeline, tmp_path):
    _clear_of_the_next_hour()
    with connect(pipeline.settings) as conn:
        upsert_products(conn, [("product-1", "category-1"), ("product-2", "category-1")])
    lines = [
        b'{"event": "ProductView", "messageid": "m1", "userid": "user-1",'
        b' "properties": {"productid": "product-2"}, "context": {"source": "ios"}}',
        b'{"event": "ProductView", "messageid": "m2", "userid": "user-2",'
        b' "properties": {"productid": "product-2"}, "context": {"source": "ios"}}',
        b'{"event": "ProductView", "messageid": "m3", "userid": "user-1",'
        b' "properties": {"productid": "product-1"}, "context": {"source": "ios"}}',
    ]
    pipeline.produce_views(lines + lines[:1])
    pipeline.produce_orders(
        [
            b'{"event": "OrderEvent", "messageid": "o1", "userid": "user-1", "orderid": 7,'
            b' "lineitems": [{"productid": "product-1", "quantity": 1}]}'
        ]
    )
    pipeline.consume()
    hours = pipeline.query(
        "SELECT DISTINCT date_trunc('hour', viewed_at, 'UTC') FROM product_views"
        " UNION SELECT date_trunc('hour', ordered_at, 'UTC') FROM order_lines"
    )
    assert len(hours) == 1, hours
    hour = hours[0][0].astimezone(UTC).strftime("%Y-%m-%dT%H")
    result = pipeline.cli("report", "--hour", hour, "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / f"category_viewed_{hour}.csv").read_text().splitlines()[1] == (
        f"category-1,product-2,product-1{EMPTY}"
    )
    assert (tmp_path / f"conversion_rates_{hour}.csv").read_text().splitlines()[1] == (
        "category-1,3,1,0.3333"
    )


@pytest.fixture
def before_0002(pipeline) -> Iterator[Pipeline]:
    """The pipeline on a database that has only the first migration's tables."""
    for url in fresh_database(embedded.database_url(pipeline.settings)):
        yield dataclasses.replace(
            pipeline, settings=dataclasses.replace(pipeline.settings, database_url=url)
        )


def test_the_migration_counts_events_stored_before_it(before_0002):
    """A database that already holds events gets its counters from them when it upgrades."""
    pipeline = before_0002
    url = pipeline.settings.database_url
    with psycopg.connect(url) as conn:
        for statement in MIGRATIONS["0001_core"]:
            conn.execute(statement)
        views, orders = hand_built_hour()
        conn.execute(
            "CREATE TABLE schema_migrations (name text PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute("INSERT INTO schema_migrations (name) VALUES ('0001_core')")
        conn.commit()
    batch = clean_batch(
        [RawEvent(Kind.VIEW, "v", 0, i, line, None) for i, line in enumerate(views)]
        + [RawEvent(Kind.ORDER, "o", 0, i, line, None) for i, line in enumerate(orders)]
    )
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO product_views (messageid, userid, productid, source, viewed_at)"
            " VALUES (%s, %s, %s, %s, %s)",
            batch.views,
        )
        cur.executemany(
            "INSERT INTO order_lines"
            " (messageid, line, orderid, userid, productid, quantity, ordered_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            batch.order_lines,
        )
    with psycopg.connect(url) as conn:
        migrate(conn)
        conn.commit()
        upsert_products(conn, CATALOG)
    with connect(pipeline.settings, autocommit=True) as conn:
        counters, _ = read_counts(conn, parse_hour("2026-11-24T13"))
        raw = raw_counts(conn, H)
    assert sorted(counters.viewers) == sorted(raw.viewers)
    assert sorted(counters.buyers) == sorted(raw.buyers)
    assert _rest(counters) == _rest(raw)
    assert raw.views == {"category-1": 136, "category-2": 52, "category-10": 2}
