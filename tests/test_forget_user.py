"""`clickstream forget-user` on a real database and broker: the user is gone from every
table, every report of their hours equals pandas' over the events without them, other users
are untouched, and the live view drops them at once, also after a restart."""

from __future__ import annotations

import dataclasses
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import psycopg
import pytest
from conftest import Pipeline
from test_realtime_api import send, view, wait_for
from test_reports_generated import HOURS, _expected, _with_timestamps

from clickstream.api.server import run_in_background
from clickstream.generate import generate, write_dataset
from clickstream.ingest.cleaning import clean_batch
from clickstream.ingest.consumer import Ingestor
from clickstream.ingest.event_time import format_timestamp
from clickstream.ingest.raw import Kind, RawEvent
from clickstream.lifecycle.privacy import names_user, user_hash
from clickstream.reports.hourly import write_reports
from clickstream.reports.hours import parse_hour
from clickstream.store.catalog import upsert_products
from clickstream.store.db import connect
from clickstream.store.erased import use_key
from clickstream.store.erasure import erase_user
from clickstream.store.recompute import differences
from clickstream.store.writer import write_batch

KEY = "test-hash-key"
GONE = "user-37"  # no other generated id contains it
USER_TABLES = ("product_views", "order_lines", "user_product_hours", "report_buyers")


def with_key(pipeline: Pipeline) -> Pipeline:
    return Pipeline(
        dataclasses.replace(pipeline.settings, privacy_hash_key=KEY), pipeline.bootstrap
    )


def bad_events() -> list[RawEvent]:
    """Dead letters that name the user (broken JSON, a bad field) and one that does not."""
    payloads = [
        b'{"event": "ProductView", "messageid": "d-1", "userid": "user-37", "properties"',
        b'{"event": "ProductView", "messageid": "d-2", "userid": "user-37"}',
        b'{"event": "ProductView", "messageid": "d-3", "userid": "user-36"}',
    ]
    return [RawEvent(Kind.VIEW, "v", 9, i, p, None) for i, p in enumerate(payloads)]


@pytest.fixture
def stored(pipeline, tmp_path):
    """Three hours of generated views and orders, stored through the consumer's writer."""
    p = with_key(pipeline)
    rng = np.random.default_rng(11)
    data = generate(users=60, products=80, categories=8, views=4_000, orders=400, seed=11)
    paths = write_dataset(data, tmp_path / "all")
    views, orders = _with_timestamps(data.views, rng), _with_timestamps(data.orders, rng)
    paths["views"].write_bytes(b"\n".join(views) + b"\n")
    paths["orders"].write_bytes(b"\n".join(orders) + b"\n")
    raw = [RawEvent(Kind.VIEW, "v", 0, i, line, None) for i, line in enumerate(views)]
    raw += [RawEvent(Kind.ORDER, "o", 0, i, line, None) for i, line in enumerate(orders)]
    batch = clean_batch(raw + bad_events())
    assert len(batch.rejects) == 3
    assert any(row.userid == GONE for row in batch.order_lines)
    with connect(p.settings) as conn:
        write_batch(conn, batch)
        upsert_products(conn, data.catalog)
    # the same files without the user: what pandas computes the reports from
    without = write_dataset(data, tmp_path / "without")
    for kind, lines in (("views", views), ("orders", orders)):
        kept = [line for line in lines if orjson.loads(line)["userid"] != GONE]
        without[kind].write_bytes(b"\n".join(kept) + b"\n")
    return p, without


def text_columns(conn: psycopg.Connection) -> list[tuple[str, str, str]]:
    return conn.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = 'public' AND data_type IN ('text', 'character varying', 'bytea')"
        " ORDER BY 1, 2"
    ).fetchall()


def holding(conn: psycopg.Connection, needle: str) -> dict[str, int]:
    """Rows of each text or bytea column of every table that contain `needle`."""
    found = {}
    for table, column, kind in text_columns(conn):
        value = "convert_to(%s, 'UTF8')" if kind == "bytea" else "%s"
        (count,) = conn.execute(
            f'SELECT count(*) FROM "{table}" WHERE position({value} IN "{column}") > 0',
            (needle,),
        ).fetchone()
        if count:
            found[f"{table}.{column}"] = count
    return found


def others(conn: psycopg.Connection) -> dict[str, set]:
    rows = {
        t: set(conn.execute(f"SELECT * FROM {t} WHERE userid <> %s", (GONE,))) for t in USER_TABLES
    }
    rows["dead_letters"] = set(
        conn.execute("SELECT id, payload FROM dead_letters WHERE id NOT IN (1, 2)")
    )
    return rows


def test_forget_user_erases_everywhere_and_reports_equal_pandas_without_them(stored, tmp_path):
    p, without = stored
    with connect(p.settings) as conn:
        assert set(holding(conn, GONE)) >= {f"{t}.userid" for t in USER_TABLES}
        before = {
            t: conn.execute(f"SELECT count(*) FROM {t} WHERE userid = %s", (GONE,)).fetchone()[0]
            for t in USER_TABLES
        }
        kept = others(conn)
        columns = text_columns(conn)
    assert ("dead_letters", "payload", "bytea") in columns

    result = p.cli("forget-user", GONE, "--yes")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"erased user {GONE}: ")

    with connect(p.settings, autocommit=True) as conn:
        assert holding(conn, GONE) == {}
        assert others(conn) == kept
        assert differences(conn) == []  # every derived row is what the raw events give
        ((hashed, removed),) = conn.execute("SELECT user_hash, rows_removed FROM erasures")
    assert hashed == user_hash(KEY, GONE) != GONE
    assert {t: removed[t] for t in USER_TABLES} == before
    assert removed["dead_letters"] == 2
    for hour in [*HOURS, None]:
        out = tmp_path / f"reports-{hour}"
        out.mkdir()
        write_reports(p.settings, None if hour is None else parse_hour(hour), out)
        for name, content in _expected(without, hour).items():
            assert (out / name).read_text() == content, name


def test_forget_user_asks_without_yes_and_needs_the_hash_key(pipeline):
    no_tty = with_key(pipeline).cli("forget-user", GONE, stdin=subprocess.DEVNULL)
    assert no_tty.returncode == 2
    assert "pass --yes" in no_tty.stderr and len(no_tty.stderr.strip().splitlines()) == 1
    no_key = pipeline.cli("forget-user", GONE, "--yes")
    assert no_key.returncode == 2
    assert "privacy.hash_key is not set" in no_key.stderr
    bad_id = with_key(pipeline).cli("forget-user", "a\x01b", "--yes")
    assert bad_id.returncode == 2 and "Traceback" not in bad_id.stderr


def test_names_user_is_exact():
    assert names_user(b'{"userid": "user-3", "x": ["a"]}', "user-3")
    assert names_user(b'{"a": {"b": ["user-3"]}}', "user-3")
    assert not names_user(b'{"userid": "user-30"}', "user-3")
    assert names_user(b'{"userid": "user-3", broken', "user-3")
    assert not names_user(b'{"userid": "user-30", broken', "user-3")
    assert names_user(b'{"userid": "\\u00fc-1"}', "ü-1")
    assert names_user('{"userid": "ü-1", broken'.encode(), "ü-1")


def test_the_live_view_drops_an_erased_user_at_once_and_after_a_restart(pipeline):
    p = with_key(pipeline)
    with connect(p.settings) as conn:
        upsert_products(conn, [("product-1", "category-1")])
    now = datetime.now(UTC)
    send(
        p,
        [
            view("user-a", "product-1", "web", now - timedelta(seconds=20)),
            view("user-b", "product-1", "ios", now - timedelta(seconds=10)),
            view("user-a", "product-2", "ios", now - timedelta(seconds=5)),
        ],
    )
    both = {
        "users": ["user-a", "user-b"],
        "count": 2,
        "categories": [("category-1", 2), ("(not in catalog)", 1)],
        "platforms": [("ios", 2), ("web", 1)],
    }
    only_b = {
        "users": ["user-b"],
        "count": 1,
        "categories": [("category-1", 1)],
        "platforms": [("ios", 1)],
    }
    server = run_in_background(p.settings, port=0)
    try:
        wait_for(server, both)
        result = p.cli("forget-user", "user-a", "--yes")
        assert result.returncode == 0, result.stderr
        wait_for(server, only_b)
    finally:
        server.stop()
    server = run_in_background(p.settings, port=0)  # reads the topic again from Kafka
    try:
        wait_for(server, only_b)
    finally:
        server.stop()


# -- under a live ingest ------------------------------------------------------------------------


def _view_of(user: str, n: int, moment: datetime) -> bytes:
    return orjson.dumps(
        {
            "event": "ProductView",
            "messageid": f"{user}-live-{n}",
            "userid": user,
            "properties": {"productid": f"product-{n % 3}"},  # few (user, product, hour) rows
            "context": {"source": "web"},
            "timestamp": format_timestamp(moment),
        }
    )


def _erased_outcome(topic: str) -> float:
    from prometheus_client import REGISTRY

    labels = {"topic": topic, "outcome": "erased"}
    return REGISTRY.get_sample_value("clickstream_ingest_events_total", labels) or 0.0


def test_an_erasure_during_a_live_ingest_is_exact_and_the_backlog_is_skipped(pipeline):
    """A consumer works through a backlog of the user's events (all from before the erasure)
    and is still storing them when the erasure runs: it leaves no row of theirs, every
    derived row agrees with the raw events, and each of their events is either erased from
    the database or skipped at ingest (outcome `erased`), none stored after."""
    p = with_key(pipeline)
    settings = dataclasses.replace(
        p.settings, ingest_batch_size=100, ingest_batch_wait_ms=20, ingest_metrics_port=1
    )
    now = datetime.now(UTC) - timedelta(seconds=30)
    theirs = [_view_of(GONE, n, now + timedelta(milliseconds=n)) for n in range(8_000)]
    others_ = [_view_of("user-36", n, now + timedelta(milliseconds=n)) for n in range(2_000)]
    p.produce_views([line for pair in zip(theirs[:2_000], others_, strict=True) for line in pair])
    p.produce_views(theirs[2_000:])
    topic = settings.kafka_views_topic
    skipped_before = _erased_outcome(topic)
    ingestor = Ingestor(settings, p.bootstrap)
    consumer = threading.Thread(target=ingestor.run, kwargs={"until_idle": 2.0})
    consumer.start()
    try:
        deadline = time.monotonic() + 60
        while p.query("SELECT count(*) FROM product_views WHERE userid = %s", (GONE,)) < [(300,)]:
            assert time.monotonic() < deadline and consumer.is_alive(), "nothing stored"
            time.sleep(0.02)
        with connect(p.settings, autocommit=True) as conn:
            erasure = erase_user(conn, GONE, user_hash(KEY, GONE))
    finally:
        consumer.join(timeout=120)
    assert not consumer.is_alive()
    assert p.query("SELECT count(*) FROM product_views WHERE userid = %s", (GONE,)) == [(0,)]
    assert p.query("SELECT count(*) FROM user_product_hours WHERE userid = %s", (GONE,)) == [(0,)]
    assert p.query("SELECT count(*) FROM product_views WHERE userid = 'user-36'") == [(2_000,)]
    with connect(p.settings, autocommit=True) as conn:
        assert differences(conn) == []
    removed = erasure.rows_removed["product_views"]
    assert 0 < removed < len(theirs)  # the erasure came in the middle of the backlog
    assert ingestor.stats.erased == len(theirs) - removed
    assert ingestor.stats.views == removed + 2_000
    assert _erased_outcome(topic) - skipped_before == len(theirs) - removed

    # The summary line of a consumer started later says so too; a newer event is stored.
    later = erasure.erased_at + timedelta(seconds=1)
    old_and_new = [_view_of(GONE, n, now) for n in range(10_000, 10_005)]
    p.produce_views([*old_and_new, _view_of(GONE, 10_010, later)], keep_timestamps=True)
    result = p.cli("consume", "--until-idle", "1.5")
    assert result.returncode == 0, result.stderr
    assert "stored 1 views" in result.stdout
    assert ", 5 events of erased users skipped," in result.stdout
    assert p.query("SELECT messageid FROM product_views WHERE userid = %s", (GONE,)) == [
        (f"{GONE}-live-10010",)
    ]


def test_a_redelivered_bad_record_of_an_erased_user_does_not_come_back(pipeline):
    """Bad records naming the user (quoted, bare, as a number) received before the erasure
    are skipped when delivered again; one received after it is a new dead letter."""
    p = with_key(pipeline)
    topic = p.settings.kafka_views_topic
    before_ms = int((datetime.now(UTC) - timedelta(minutes=5)).timestamp() * 1000)
    payloads = [
        b'{"event": "ProductView", "userid": "user-37", "properties"',
        b'{"event": "ProductView", "userid": user-37, broken',
        b'{"event": "ProductView", "messageid": "m-1", "userid": 37}',
        b'{"event": "ProductView", "userid": user-370, broken',  # someone else
    ]
    raw = [RawEvent(Kind.VIEW, topic, 0, i, x, before_ms) for i, x in enumerate(payloads)]
    with connect(p.settings, autocommit=True) as conn:
        write_batch(conn, clean_batch(raw))
        erase_user(conn, "user-37", user_hash(KEY, "user-37"))
        erase_user(conn, "37", user_hash(KEY, "37"))
        assert [bytes(x) for (x,) in conn.execute("SELECT payload FROM dead_letters")] == [
            payloads[3]
        ]
        use_key(conn, KEY, p.settings.kinds)
        again = write_batch(conn, clean_batch(raw))  # redelivered, from before the erasures
        assert (again.dead_letters, again.erased_views) == (0, 3)
        after_ms = int((datetime.now(UTC) + timedelta(seconds=1)).timestamp() * 1000)
        later = write_batch(
            conn, clean_batch([raw[0]._replace(offset=9, kafka_timestamp_ms=after_ms)])
        )
        assert (later.dead_letters, later.erased_views) == (1, 0)


def test_names_user_finds_numbers_and_bare_ids_exactly():
    assert names_user(b'{"userid": 37}', "37")
    assert not names_user(b'{"userid": 370, "orderid": 137}', "37")
    assert names_user(b'{"userid": 37, broken', "37")
    assert not names_user(b'{"messageid": "m-37", broken', "37")
    assert names_user(b'{"userid": user-37, broken', "user-37")
    assert names_user(b"userid=user-37;", "user-37")
    assert not names_user(b'{"userid": user-370, broken', "user-37")
