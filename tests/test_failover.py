"""A PostgreSQL failover to a standby that lacks the last transactions loses no event.

Debian's PostgreSQL runs as a primary and an asynchronous streaming standby
(`pg_basebackup -R`); the consumer and `clickstream serve` use a multi-host DSN with
`target_session_attrs=read-write`. The standby is held back (its WAL receiver stopped), the
consumer stores more events on the primary and commits them to Kafka, the primary is stopped
hard in the middle of the next batches and the standby promoted: the events the standby
never received must be read again from Kafka, because the database, not Kafka, says what
was stored (store/offsets.py).

    views A ........ stored on both
    views B ........ stored on the primary only (standby held back), committed to Kafka
    views C ........ produced while the primary dies; the standby is promoted
    then: the new primary holds A + B + C, each once

The times from the promotion to the first new row and to the API's first 200 are printed
(`pytest -s`), not asserted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from conftest import missing_dependency, settings_env
from pg_clusters import Cluster, cluster_dir, free_port, wait_for

from clickstream.generate import generate
from clickstream.store.recompute import differences
from clickstream.store.schema import migrate

# (engine, Spark's sink, views, orders, events per batch): the Spark engine is slower, so
# fewer; its tasks sink writes each Kafka partition's share in a task of its own.
SCENARIOS = [
    ("python", "auto", 45_000, 3_000, 1_000),
    ("spark", "driver", 9_000, 600, 1_000),
    ("spark", "tasks", 9_000, 600, 1_000),
]


def _count(cluster: Cluster, sql: str) -> int | None:
    try:
        return cluster.query(sql, dbname="clickstream")[0][0]
    except psycopg.Error:
        return None


@pytest.fixture
def primary_and_standby():
    """A primary with the schema, and its streaming standby, both running."""
    base = cluster_dir()
    primary = Cluster(base, "primary").init().start()
    standby = Cluster(base, "standby")
    try:
        primary.query("CREATE DATABASE clickstream")
        with psycopg.connect(primary.url("clickstream")) as conn:
            migrate(conn)
        standby.base_backup_of(primary).start()
        wait_for(
            lambda: primary.query("SELECT count(*) FROM pg_stat_replication")[0][0],
            30,
            "the standby to stream",
        )
        yield primary, standby
    finally:
        for cluster in (primary, standby):
            cluster.remove()
        shutil.rmtree(base, ignore_errors=True)


def _consumed(pipeline) -> int:
    """The views the consumer group has committed to Kafka."""
    topic = pipeline.settings.kafka_views_topic
    return sum(n for (t, _), n in pipeline.committed().items() if t == topic)


def _hold_back(standby: Cluster) -> None:
    """Stop the standby's WAL receiver for good: with no primary_conninfo it does not come
    back (pg_wal_replay_pause would only stop replay, not receipt)."""
    standby.query("ALTER SYSTEM SET primary_conninfo = ''")
    standby.query("SELECT pg_reload_conf()")
    wait_for(
        lambda: not standby.query("SELECT pid FROM pg_stat_wal_receiver"),
        30,
        "the standby's WAL receiver to stop",
    )


class _Prober(threading.Thread):
    """GET the recently-viewed route every 50 ms; note when each status was first seen."""

    def __init__(self, port: int, path: str) -> None:
        super().__init__(daemon=True)
        self.port, self.path = port, path
        self.stop = threading.Event()
        self.first_200_after: float | None = None
        self.since = float("inf")  # the moment from which a 200 counts
        self.statuses: list[int] = []

    def run(self) -> None:
        while not self.stop.wait(0.05):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", self.path)
                status = conn.getresponse().status
                conn.close()
            except OSError:
                status = 0
            now = time.monotonic()
            self.statuses.append(status)
            if status == 200 and now >= self.since and self.first_200_after is None:
                self.first_200_after = now


def _start(settings, log: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "clickstream", *args],
        env=settings_env(settings),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


@pytest.mark.parametrize(
    ("engine", "sink", "views", "orders", "batch"), SCENARIOS, ids=lambda v: str(v)
)
def test_a_failover_to_a_lagging_standby_loses_no_event(
    pipeline, primary_and_standby, tmp_path, engine, sink, views, orders, batch
):
    if engine == "spark" and importlib.util.find_spec("pyspark") is None:
        missing_dependency("pyspark is not installed (the spark extra)")
    primary, standby = primary_and_standby
    dsn = psycopg.conninfo.make_conninfo(
        host="127.0.0.1,127.0.0.1",
        port=f"{primary.port},{standby.port}",
        user="postgres",
        dbname="clickstream",
        target_session_attrs="read-write",
    )
    settings = dataclasses.replace(
        pipeline.settings,
        database_url=dsn,
        ingest_batch_size=batch,
        spark_max_batch_events=batch,
        spark_sink=sink,
        ingest_retry_max_seconds=0.5,
    )
    data = generate(users=200, products=300, categories=10, views=views, orders=orders, seed=19)
    a, b, c = views // 3, 2 * views // 3, views
    user = json.loads(data.views[0])["userid"]
    api_port = free_port()
    consumer = _start(settings, tmp_path / "consume.log", "consume", "--engine", engine)
    server = _start(settings, tmp_path / "serve.log", "serve", "--port", str(api_port))
    prober = _Prober(api_port, f"/api/users/{user}/recently-viewed")
    views_sql = "SELECT count(*) FROM product_views"
    try:
        pipeline.produce_views(data.views[:a])
        pipeline.produce_orders(data.orders)
        wait_for(lambda: _count(standby, views_sql) == a, 180, "views A on the standby")
        prober.start()
        wait_for(lambda: prober.statuses[-1:] == [200], 60, "the API to answer")

        _hold_back(standby)
        pipeline.produce_views(data.views[a:b])
        wait_for(lambda: _count(primary, views_sql) == b, 120, "views B on the primary")
        assert _count(standby, views_sql) == a  # the standby lags: B is on the primary only

        producing = threading.Thread(target=pipeline.produce_views, args=(data.views[b:c],))
        producing.start()
        wait_for(lambda: (_count(primary, views_sql) or 0) > b + batch, 120, "C being stored")
        on_the_primary = _count(primary, views_sql)
        primary.stop("immediate")
        on_the_standby = _count(standby, views_sql)
        standby.promote()
        promoted_at = prober.since = time.monotonic()
        first_row = wait_for(
            lambda: (_count(standby, views_sql) or 0) > on_the_standby and time.monotonic(),
            60,
            "a new row on the promoted standby",
        )
        producing.join()
        wait_for(lambda: _consumed(pipeline) == views, 180, "the consumer to commit every view")
        # Kafka's commits run behind the rows: once they are all in, so are the rows (or
        # they are lost; before the database kept the offsets, they were).
        with contextlib.suppress(AssertionError):
            wait_for(lambda: _count(standby, views_sql) == views, 10, "every view stored")
        wait_for(lambda: prober.first_200_after, 60, "the API to answer again")
    finally:
        prober.stop.set()
        for process in (consumer, server):
            process.send_signal(signal.SIGINT)
        for process in (consumer, server):
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        print((tmp_path / "consume.log").read_text()[-3000:])

    print(
        f"\nfailover ({engine}, sink {sink}): {views:,} views; at the promotion"
        f" {on_the_primary:,} or more had been stored on the old primary,"
        f" {on_the_standby:,} reached the standby; first new row"
        f" {first_row - promoted_at:.2f}s after the promotion, the API's first 200"
        f" {prober.first_200_after - promoted_at:.2f}s after it"
        f" ({sum(status != 200 for status in prober.statuses)} probes without a 200 in all)"
    )
    with psycopg.connect(standby.url("clickstream")) as conn:
        stored_views = conn.execute("SELECT count(*), count(DISTINCT messageid) FROM product_views")
        assert stored_views.fetchone() == (views, views)
        stored_orders = conn.execute("SELECT count(DISTINCT messageid) FROM order_lines")
        assert stored_orders.fetchone() == (orders,)
        assert conn.execute("SELECT count(*) FROM dead_letters").fetchone() == (0,)
        assert differences(conn) == []
        stored = conn.execute(
            "SELECT topic, sum(next_offset) FROM ingest_offsets GROUP BY topic ORDER BY topic"
        ).fetchall()
    assert dict(stored) == {
        settings.kafka_orders_topic: orders,
        settings.kafka_views_topic: views,
    }
    assert consumer.returncode == 0
