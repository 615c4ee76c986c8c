"""The Spark engine against the default one: same input, same tables, same guarantees.

One SparkSession (local mode) serves the whole test session; each scenario runs its own
streaming query on its own topics, consumer group, checkpoint and database. The crash test
runs `clickstream consume --engine spark` as a user would, in a process of its own.
"""

from __future__ import annotations

import dataclasses
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from conftest import Pipeline, fresh_database, missing_dependency
from test_event_time import _send as send_unstamped
from test_event_time import _view as view
from test_ingest import (
    assert_stored_exactly_once,
    fast,
    make_stream,
    stored_reported,
    wait_for,
)

from clickstream.ingest.consumer import IngestStats
from clickstream.services import embedded

CRASH_HOOK = str(Path(__file__).with_name("spark_crash.py"))


def need_spark_extra() -> None:
    """pyspark and pyarrow, or the suite's rule for a missing dependency (fails under CI)."""
    try:
        import pyarrow  # noqa: F401
        import pyspark  # noqa: F401
    except ImportError as exc:
        missing_dependency(f"the spark extra is not installed ({exc.name} is missing)")


@pytest.fixture(scope="session")
def spark():
    """One local Spark session for every test here (it takes seconds to start)."""
    need_spark_extra()
    from clickstream.spark.session import spark_session

    session = spark_session("local[2]")
    yield session
    session.stop()


def consume(p: Pipeline, engine: str, spark=None, until_idle: float = 2.0) -> IngestStats:
    """Run one engine over what is on the topics until it is drained."""
    if engine == "python":
        return p.consume(until_idle=until_idle)
    from clickstream.spark.engine import SparkIngestor

    return SparkIngestor(with_sink(p, engine).settings, p.bootstrap, spark=spark).run(
        until_idle=until_idle
    )


def with_sink(p: Pipeline, engine: str) -> Pipeline:
    """`spark-driver` or `spark-tasks`: the pipeline with that `spark.sink`."""
    return Pipeline(
        dataclasses.replace(p.settings, spark_sink=engine.removeprefix("spark-")), p.bootstrap
    )


ENGINES = ["python", "spark-driver", "spark-tasks"]


@pytest.mark.parametrize("engine", ENGINES)
def test_each_engine_stores_exactly_once_and_a_replay_stores_nothing(pipeline, engine, request):
    spark = request.getfixturevalue("spark") if engine != "python" else None
    p = fast(pipeline)
    stream = make_stream(views=1500, orders=150, seed=31, bad_every=101)
    p.produce_views(stream.views)
    p.produce_orders(stream.orders)

    first = consume(p, engine, spark)

    assert first.consumed == len(stream.views) + len(stream.orders)
    assert first.views == len(stream.view_ids)
    assert first.order_lines == len(stream.order_lines)
    assert first.dead_letters == len(stream.bad)
    assert first.duplicates == 0
    assert_stored_exactly_once(p, stream)  # dead letters with their payloads and reasons
    reasons = {r.split(":")[0] for (r,) in p.query("SELECT reason FROM dead_letters")}
    assert reasons == {"bad-json", "missing-field", "bad-utf8", "wrong-event", "bad-lineitems"}
    # The group's offsets show everything consumed, for lag tools.
    assert sum(p.committed().values()) == first.consumed

    replay = fast(p, kafka_consumer_group=p.settings.kafka_consumer_group + "-again")
    again = consume(replay, engine, spark)

    assert again.consumed == first.consumed
    assert (again.views, again.order_lines, again.dead_letters) == (0, 0, 0)
    assert again.duplicates == len(stream.view_ids) + len(stream.order_lines)
    assert_stored_exactly_once(p, stream)


@pytest.mark.parametrize("engine", ["python", "spark-driver"])
def test_each_engine_stores_an_event_produced_twice_once(pipeline, engine, request):
    spark = request.getfixturevalue("spark") if engine != "python" else None
    p = fast(pipeline)
    stream = make_stream(views=300, orders=30, seed=32, bad_every=None)
    p.produce_views(stream.views[:200])
    p.produce_orders(stream.orders)
    consume(p, engine, spark)
    p.produce_views(stream.views)  # the first 200 again, at new offsets
    stats = consume(p, engine, spark)
    assert stats.consumed == len(stream.views)
    assert stats.views == len(stream.view_ids) - 200
    assert stats.duplicates == 200
    assert_stored_exactly_once(p, stream)


@pytest.mark.parametrize("engine", ["spark-driver", "spark-tasks"])
def test_each_spark_sink_counts_every_record_in_the_consumer_stats_and_metrics(
    pipeline, engine, spark
):
    """With `spark.sink: tasks` the rows are written in worker processes: their counts must
    still reach the summary and the metrics of the process that serves them."""
    from prometheus_client import REGISTRY

    p = fast(pipeline, ingest_metrics_port=9)  # counts in this process; nothing is served
    stream = make_stream(views=500, orders=50, seed=33, bad_every=47)
    p.produce_views(stream.views[:100])  # stored once, then duplicates
    p.produce_views(stream.views)
    p.produce_orders(stream.orders)
    views, orders = p.settings.kafka_views_topic, p.settings.kafka_orders_topic
    # Sent as it is (produce_views would stamp it now): its time is replaced, and counted.
    future = view("m-2099", "user-1", "product-a", "2099-06-01T12:00:00.000Z")
    send_unstamped(p.bootstrap, views, future)

    stats = consume(p, engine, spark)

    assert stats.replaced_times_text() == "1 event times replaced (ahead 1)"

    def metric(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    def events(topic: str, outcome: str) -> float:
        return metric("clickstream_ingest_events_total", topic=topic, outcome=outcome)

    letters = p.query(
        "SELECT topic, split_part(reason, ':', 1), count(*) FROM dead_letters GROUP BY 1, 2"
    )
    assert {
        (t, code, metric("clickstream_dead_letters_total", topic=t, reason=code))
        for t, code, _ in letters
    } == {(t, code, n) for t, code, n in letters}
    ((stored_views,),) = p.query("SELECT count(*) FROM product_views")
    ((stored_orders,),) = p.query("SELECT count(DISTINCT messageid) FROM order_lines")
    dead = {t: sum(n for topic, _, n in letters if topic == t) for t in (views, orders)}
    assert (events(views, "stored"), events(orders, "stored")) == (stored_views, stored_orders)
    assert (events(views, "dead_letter"), events(orders, "dead_letter")) == (
        dead[views],
        dead[orders],
    )
    duplicates = 100 - sum(1 for line in stream.views[:100] if line in stream.bad)
    assert events(views, "duplicate") == duplicates
    assert events(orders, "duplicate") == 0
    assert stored_views == len(stream.view_ids) + 1


# Columns a database fills in at ingest: they differ between any two runs.
# Columns of when and how rows were stored; `revised` says whether a later batch updated a
# user_product_hours row, which depends on where batch boundaries fell.
INGEST_TIME_COLUMNS = {
    "ingested_at",
    "received_at",
    "id",
    "updated_at",
    "reported_at",
    "revised",
    "stored_at",
    "consumer_group",  # each engine runs as a group of its own here
}


def table_contents(url: str) -> dict[str, list[tuple]]:
    """Every table's rows, ingest-time columns left out, in a stable order."""
    with psycopg.connect(url) as conn:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
                " AND table_name <> 'schema_migrations' ORDER BY 1"
            )
        ]
        contents = {}
        for table in tables:
            columns = [
                f'"{name}"'
                for (name,) in conn.execute(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
                    (table,),
                )
                if name not in INGEST_TIME_COLUMNS
            ]
            listed = ", ".join(columns)
            contents[table] = conn.execute(
                f"SELECT {listed} FROM {table} ORDER BY {listed}"
            ).fetchall()
    return contents


def test_both_engines_give_identical_tables(pipeline, services, spark):
    stream = make_stream(views=3000, orders=300, seed=33, bad_every=150)
    p = fast(pipeline, spark_max_batch_events=2000)  # two micro-batches
    p.produce_views(stream.views)
    p.produce_orders(stream.orders)
    consume(p, "python")
    for url in fresh_database(embedded.database_url(services)):
        other = fast(
            p,
            database_url=url,
            kafka_consumer_group=p.settings.kafka_consumer_group + "-spark",
        )
        consume(other, "spark-tasks", spark)
        python_tables = table_contents(p.settings.database_url)
        spark_tables = table_contents(url)
    assert set(python_tables) >= {"product_views", "order_lines", "dead_letters"}
    assert sum(map(len, python_tables.values())) > len(stream.view_ids)
    for table, rows in python_tables.items():
        assert spark_tables[table] == rows, f"{table} differs between the engines"


# -- a crash between PostgreSQL's commit and Spark's -------------------------------------------

RECOMPUTED = {
    "report_view_hours": """
        SELECT date_trunc('hour', viewed_at, 'UTC'), productid, count(*), count(DISTINCT userid)
        FROM product_views GROUP BY 1, 2 ORDER BY 1, 2""",
    "report_order_hours": """
        SELECT date_trunc('hour', ordered_at, 'UTC'), productid, count(*),
               count(DISTINCT userid)
        FROM order_lines GROUP BY 1, 2 ORDER BY 1, 2""",
    "report_buyers": """
        SELECT DISTINCT date_trunc('hour', ordered_at, 'UTC'), productid, userid
        FROM order_lines ORDER BY 1, 2, 3""",
    "user_product_hours": """
        SELECT userid, productid, date_trunc('hour', viewed_at, 'UTC'), max(viewed_at)
        FROM product_views GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""",
}
STORED = {
    "report_view_hours": "SELECT hour, productid, views, viewers FROM report_view_hours",
    "report_order_hours": "SELECT hour, productid, order_lines, buyers FROM report_order_hours",
    "report_buyers": "SELECT hour, productid, userid FROM report_buyers",
    "user_product_hours": "SELECT userid, productid, hour, viewed_at FROM user_product_hours",
}


def test_sigkill_after_the_database_committed_a_micro_batch_loses_and_duplicates_nothing(
    pipeline, tmp_path, spark
):
    # The driver sink here; the cluster's test crashes the task sink (spark.sink: auto).
    p = fast(pipeline, spark_max_batch_events=1000)
    env = {"CLICKSTREAM_SPARK_SINK": "driver"}
    assert_a_driver_crash_loses_and_duplicates_nothing(p, tmp_path, seed=34, env=env)


def assert_a_driver_crash_loses_and_duplicates_nothing(
    p: Pipeline, tmp_path: Path, seed: int, env: dict[str, str] | None = None
) -> None:
    """`consume --engine spark` SIGKILLed right after PostgreSQL committed its first
    micro-batch and before Spark recorded it; restarted from the checkpoint, it stores the
    rest, and the replayed micro-batch stores nothing twice."""
    from clickstream.spark.engine import checkpoint_dir

    stream = make_stream(views=2500, orders=250, seed=seed, bad_every=200)
    p.produce_views(stream.views)
    p.produce_orders(stream.orders)
    env = p.env() | (env or {})
    log = tmp_path / "crash.log"
    with open(log, "w") as handle:
        crashed = subprocess.run(
            [sys.executable, CRASH_HOOK, "1", "consume", "--engine", "spark", "--until-idle", "30"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=handle,
            text=True,
            timeout=300,
            start_new_session=True,  # its own process group: the JVM and workers die with it
        )
    assert crashed.returncode == -signal.SIGKILL, log.read_text()
    checkpoint = Path(checkpoint_dir(p.settings))
    planned = {f.name for f in (checkpoint / "offsets").iterdir() if f.name.isdigit()}
    done = {f.name for f in (checkpoint / "commits").iterdir() if f.name.isdigit()}
    assert planned - done, "Spark recorded the batch the crash should have cut off"
    stored_before = stored_count(p)
    assert 0 < stored_before < len(stream.view_ids) + len(stream.order_lines)

    # Restarted from the checkpoint, then stopped by SIGTERM once everything is stored.
    restart_log = tmp_path / "restart.log"
    with open(restart_log, "w") as handle:
        restarted = subprocess.Popen(
            [sys.executable, "-m", "clickstream", "consume", "--engine", "spark"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=handle,
            text=True,
        )
    try:
        total = len(stream.view_ids) + len(stream.order_lines)
        wait_for(lambda: stored_count(p) >= total, 240, "the restarted job to store the rest")
        restarted.send_signal(signal.SIGTERM)
        summary, _ = restarted.communicate(timeout=120)
    finally:
        if restarted.poll() is None:
            restarted.kill()
    assert restarted.returncode == 0, restart_log.read_text()
    assert "Traceback" not in restart_log.read_text()
    assert "Spark query stopped" in restart_log.read_text()
    assert stored_reported(summary) == (
        len(stream.view_ids) + len(stream.order_lines) - stored_before
    ), summary
    replayed = re.search(r"([\d,]+) duplicates skipped", summary)
    assert replayed and int(replayed.group(1).replace(",", "")) > 0, "no micro-batch replayed"
    assert_stored_exactly_once(p, stream)
    assert_derived_tables_recomputed(p)


def assert_derived_tables_recomputed(p: Pipeline) -> None:
    for table, query in RECOMPUTED.items():
        assert p.query(STORED[table] + " ORDER BY 1, 2, 3") == p.query(query), table


# -- a stop while the database is down ----------------------------------------------------------


@pytest.mark.parametrize("engine", ["spark-driver", "spark-tasks"])
def test_a_stop_during_a_database_outage_ends_and_leaves_the_micro_batch_to_the_next_run(
    pipeline, spark, engine, monkeypatch
):
    """Each sink's writes retry an outage until it ends; a stop must not wait for that: the
    run ends, the micro-batch is not recorded as done, and the next run stores it once."""
    from clickstream.spark import engine as spark_engine
    from clickstream.spark.engine import SparkIngestor, checkpoint_dir
    from clickstream.store.batches import APPLICATION_NAME

    monkeypatch.setattr(spark_engine, "_STOP_GRACE", 3.0)  # 15 s in production

    p = with_sink(fast(pipeline), engine)
    dbname = psycopg.conninfo.conninfo_to_dict(p.settings.database_url)["dbname"]
    stream = make_stream(views=400, orders=40, seed=35, bad_every=None)
    stop = threading.Event()
    ingestor = SparkIngestor(p.settings, p.bootstrap, spark=spark, stop=stop)
    running = threading.Thread(target=ingestor.run, name="spark-outage", daemon=True)
    running.start()
    with psycopg.connect(p.settings.database_url, autocommit=True) as admin:
        wait_for(lambda: ingestor.ready_at is not None, 120, "the query's first trigger")
        # Every write is refused from now on (a retried fault), until the database is back.
        admin.execute(f'ALTER DATABASE "{dbname}" SET default_transaction_read_only = on')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND datname = %s",
            (APPLICATION_NAME, dbname),
        )
        try:
            p.produce_views(stream.views)
            p.produce_orders(stream.orders)
            wait_for(lambda: ingestor.sink.busy, 60, "a micro-batch to start")
            time.sleep(3)  # its writes meet the refusal and retry
            stop.set()
            running.join(timeout=90)
            assert not running.is_alive(), "the stop waited for the database to come back"
            assert stored_count(p) == 0
        finally:
            admin.execute(f'ALTER DATABASE "{dbname}" RESET default_transaction_read_only')
    checkpoint = Path(checkpoint_dir(p.settings))
    planned = {f.name for f in (checkpoint / "offsets").iterdir() if f.name.isdigit()}
    done = {f.name for f in (checkpoint / "commits").iterdir() if f.name.isdigit()}
    assert planned - done, "the interrupted micro-batch was recorded as done"

    # The whole micro-batch is read again. (A cancelled task's Python worker is killed by
    # Spark within spark.python.task.killTimeout: one still retrying when the database came
    # back may have stored its share, which the next run then skips as duplicates.)
    again = consume(p, engine, spark)
    assert again.consumed == len(stream.views) + len(stream.orders)
    assert again.views + again.order_lines + again.duplicates == (
        len(stream.view_ids) + len(stream.order_lines)
    )
    assert_stored_exactly_once(p, stream)


def stored_count(p: Pipeline) -> int:
    return p.query(
        "SELECT (SELECT count(*) FROM product_views) + (SELECT count(*) FROM order_lines)"
    )[0][0]


def test_spark_engine_without_java_says_so_in_one_line(pipeline, tmp_path):
    env = pipeline.env() | {"PATH": str(tmp_path), "JAVA_HOME": ""}
    result = subprocess.run(
        [sys.executable, "-m", "clickstream", "consume", "--engine", "spark"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "clickstream: error: --engine spark needs Java 17 or newer and found none (no JAVA_HOME,"
        " no java on PATH): install a JRE, e.g. apt-get install openjdk-17-jre-headless"
    ]


def test_master_without_the_spark_engine_is_refused(pipeline):
    result = pipeline.cli("consume", "--master", "local[2]")
    assert result.returncode == 2
    assert result.stderr.strip() == ("clickstream: error: --master applies to --engine spark only")


# -- a micro-batch written in chunks, in one transaction --------------------------------------


def written_in_chunks(p: Pipeline, parts: list[list[bytes]], between=None, abort=False):
    """Hand `parts` to the driver sink's writer as chunks; `between` runs once the first is
    written, inside the open transaction. Returns the writer's result and the sink."""
    need_spark_extra()
    from concurrent.futures import ThreadPoolExecutor

    from clickstream.ingest.cleaning import clean_batch
    from clickstream.ingest.raw import Kind, RawEvent
    from clickstream.spark.sink import BatchSink, Chunks

    sink, chunks, offset = BatchSink(p.settings, tasks=False, stop=threading.Event()), Chunks(), 0
    with ThreadPoolExecutor(1) as pool:
        writing = pool.submit(sink.store.retrying, chunks.write_all(sink.store))
        for n, lines in enumerate(parts):
            topic = p.settings.kafka_views_topic
            raw = [RawEvent(Kind.VIEW, topic, 0, offset + i, v, None) for i, v in enumerate(lines)]
            offset += len(lines)
            chunks.put(raw, clean_batch(raw))
            if n == 0 and between is not None:
                wait_for(lambda: chunks.writes == 1, 60, "the first chunk written")
                between(sink.store)
        chunks.abort() if abort else chunks.end()
        return writing.exception() or writing.result(), sink


def test_a_fault_inside_a_micro_batch_rolls_it_back_whole_and_the_retry_stores_it_once(
    pipeline,
):
    p = fast(pipeline)
    stream = make_stream(views=600, orders=0, seed=31, bad_every=None)

    def terminate(store) -> None:
        with psycopg.connect(p.settings.database_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (store.connection.info.backend_pid,))

    written, sink = written_in_chunks(p, [stream.views[:250], stream.views[250:]], terminate)
    assert sink.stats.retries == 1
    assert (written.views, written.duplicates, written.dead_letters) == (600, 0, 0)
    stored = p.query("SELECT messageid FROM product_views")
    assert sorted(m for (m,) in stored) == sorted(stream.view_ids)
    assert len(stream.view_ids) == 600


def test_a_micro_batch_not_read_whole_stores_nothing(pipeline):
    p = fast(pipeline)
    stream = make_stream(views=300, orders=0, seed=32, bad_every=None)
    written, _ = written_in_chunks(
        p, [stream.views[:150], stream.views[150:]], between=lambda store: None, abort=True
    )
    assert str(written) == "the micro-batch was not read whole"
    assert stored_count(p) == 0
