"""The consumer on a real broker and database, under the failures it must survive.

Each scenario ends with the same proof: every valid event stored exactly once (messageid sets
compared, duplicates counted), every bad event dead-lettered exactly once, nothing else.
"""

from __future__ import annotations

import dataclasses
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import pgserver
import psycopg
import pytest
from conftest import Pipeline

from clickstream.generate import generate
from clickstream.ingest.cleaning import Reason
from clickstream.ingest.consumer import Ingestor
from clickstream.services import embedded
from clickstream.store.batches import APPLICATION_NAME
from clickstream.store.db import connect
from clickstream.store.recompute import differences
from clickstream.store.schema import migrate

# Short timeouts keep restarts and rebalances quick: a killed member leaves the group
# after the session timeout.
FAST = {
    "kafka_session_timeout_ms": 2000,
    "ingest_batch_size": 500,
    "ingest_batch_wait_ms": 100,
    "ingest_retry_max_seconds": 1.0,
    "ingest_log_every_seconds": 1.0,
}


def fast(pipeline: Pipeline, **changes) -> Pipeline:
    """The pipeline with FAST settings and its schema in place, so counts can be polled."""
    settings = dataclasses.replace(pipeline.settings, **(FAST | changes))
    with connect(settings, check_schema=False) as conn:
        migrate(conn)
    return Pipeline(settings, pipeline.bootstrap)


@dataclass
class Stream:
    """Generated events with some bad ones mixed in, and what the database must end up with."""

    views: list[bytes]
    orders: list[bytes]
    view_ids: set[str]
    order_lines: set[tuple[str, int]]
    bad: list[bytes]

    def parts(self, count: int) -> list[tuple[list[bytes], list[bytes]]]:
        return [(self.views[i::count], self.orders[i::count]) for i in range(count)]


def _bad_view(n: int) -> bytes:
    return [
        b"not json %d" % n,
        b'{"event": "ProductView", "messageid": "bad-%d"}' % n,
        b"\xff\xfe bad utf-8 %d" % n,
        b'{"event": "OrderEvent", "messageid": "wrong-%d"}' % n,
    ][n % 4]


def _bad_order(n: int) -> bytes:
    return (
        b'{"event": "OrderEvent", "messageid": "bad-order-%d", "userid": "u", "orderid": 1,'
        b' "lineitems": [{"productid": "p", "quantity": 0}]}' % n
    )


def make_stream(views: int, orders: int, seed: int, bad_every: int | None = 400) -> Stream:
    data = generate(users=300, products=200, categories=8, views=views, orders=orders, seed=seed)
    view_lines, order_lines, bad = [], [], []
    for i, line in enumerate(data.views):
        view_lines.append(line)
        if bad_every and i % bad_every == 7:
            bad.append(_bad_view(i))
            view_lines.append(bad[-1])
    for i, line in enumerate(data.orders):
        order_lines.append(line)
        if bad_every and i % (bad_every // 10) == 3:
            bad.append(_bad_order(i))
            order_lines.append(bad[-1])
    lines = set()
    for line in data.orders:
        event = orjson.loads(line)
        lines.update((event["messageid"], n) for n in range(1, len(event["lineitems"]) + 1))
    view_ids = {orjson.loads(line)["messageid"] for line in data.views}
    return Stream(view_lines, order_lines, view_ids, lines, bad)


def stored_count(p: Pipeline) -> int:
    return p.query(
        "SELECT (SELECT count(*) FROM product_views) + (SELECT count(*) FROM order_lines)"
        " + (SELECT count(*) FROM dead_letters)"
    )[0][0]


def _unstamped(payload: bytes) -> bytes:
    """The event as its source wrote it: the producer adds a timestamp to JSON objects."""
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return bytes(payload)
    if not isinstance(event, dict):
        return bytes(payload)
    event.pop("timestamp", None)
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)


def assert_stored_exactly_once(p: Pipeline, stream: Stream) -> None:
    rows = p.query("SELECT messageid FROM product_views")
    assert len(rows) == len(stream.view_ids), "views lost or duplicated"
    assert {m for (m,) in rows} == stream.view_ids
    lines = p.query("SELECT messageid, line FROM order_lines")
    assert len(lines) == len(stream.order_lines), "order lines lost or duplicated"
    assert set(lines) == stream.order_lines
    dead = p.query('SELECT topic, partition, "offset", payload, reason FROM dead_letters')
    assert len({(t, part, o) for t, part, o, _, _ in dead}) == len(dead), "a dead letter twice"
    assert sorted(_unstamped(payload) for *_, payload, _ in dead) == sorted(
        _unstamped(bad) for bad in stream.bad
    )
    for *_, reason in dead:
        assert reason.split(":", 1)[0] in {r.value for r in Reason}
        assert not reason.startswith(Reason.REJECTED_BY_DATABASE), reason


def assert_derived_tables_recomputed(p: Pipeline) -> None:
    """user_product_hours and every report counter are what the raw events give."""
    with psycopg.connect(p.settings.database_url) as conn:
        found = differences(conn)
    assert not found, "\n".join(map(str, found[:20]))


def settle(p: Pipeline, stream: Stream, timeout: float) -> None:
    """Wait until the rows the stream should give are there (or time runs out)."""
    total = len(stream.view_ids) + len(stream.order_lines) + len(stream.bad)
    deadline = time.monotonic() + timeout
    while stored_count(p) < total and time.monotonic() < deadline:
        time.sleep(0.2)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


class Background(threading.Thread):
    """A thread whose failure fails the test when it is joined."""

    def __init__(self, target: Callable[[], object], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._work = target
        self.result: object = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._work()
        except BaseException as exc:
            self.error = exc

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self.error is not None:
            raise self.error


def produce_in_background(p: Pipeline, views: list[bytes], orders: list[bytes], rate=None):
    def run() -> None:
        p.produce_views(views, rate=rate)
        p.produce_orders(orders, rate=rate)

    thread = Background(run, "producer")
    thread.start()
    return thread


class ConsumerProcess:
    """`clickstream consume` in a subprocess, its log kept in a file."""

    def __init__(self, p: Pipeline, log: Path, *args: str) -> None:
        self.log = log
        with open(log, "w") as handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "clickstream", "consume", *args],
                env=p.env(),
                stdout=subprocess.PIPE,
                stderr=handle,
                text=True,
            )

    def output(self) -> str:
        return self.log.read_text()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def finish(self, timeout: float) -> str:
        """Stop it as Ctrl-C would, wait for a clean exit; return the summary line."""
        wait_for(lambda: "consuming" in self.output(), 30, "the consumer to start")
        self.process.send_signal(signal.SIGTERM)
        try:
            out, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"consumer did not finish in {timeout}s:\n{self.output()}"
            ) from None
        assert self.process.returncode == 0, self.output()
        assert "Traceback" not in self.output()
        return out


def duplicates_reported(summary: str) -> int:
    """Redelivered events a consumer says it skipped."""
    match = re.search(r"([\d,]+) duplicates skipped", summary)
    assert match, summary
    return int(match.group(1).replace(",", ""))


def stored_reported(summary: str) -> int:
    """Views plus order lines a consumer says it stored."""
    match = re.search(r"stored ([\d,]+) views and ([\d,]+) order lines", summary)
    assert match, summary
    return sum(int(n.replace(",", "")) for n in match.groups())


# -- redelivery --------------------------------------------------------------------------------


def test_replaying_stored_events_stores_nothing_new(pipeline):
    pipeline = fast(pipeline)
    stream = make_stream(views=1500, orders=150, seed=21, bad_every=100)
    pipeline.produce_views(stream.views)
    pipeline.produce_orders(stream.orders)
    first = pipeline.consume()
    assert first.views == len(stream.view_ids)
    assert first.dead_letters == len(stream.bad)
    assert_stored_exactly_once(pipeline, stream)
    ingested = pipeline.query("SELECT max(ingested_at) FROM product_views")

    # A new consumer group reads both topics again from the first offset.
    replay = fast(pipeline, kafka_consumer_group=pipeline.settings.kafka_consumer_group + "-2")
    again = replay.consume()

    assert again.consumed == first.consumed
    assert (again.views, again.order_lines, again.dead_letters) == (0, 0, 0)
    assert again.duplicates == len(stream.view_ids) + len(stream.order_lines)
    assert_stored_exactly_once(pipeline, stream)
    assert pipeline.query("SELECT max(ingested_at) FROM product_views") == ingested


def test_the_same_event_produced_twice_is_stored_once(pipeline):
    pipeline = fast(pipeline)
    stream = make_stream(views=300, orders=30, seed=22, bad_every=None)
    pipeline.produce_views(stream.views[:200])
    pipeline.produce_orders(stream.orders)
    pipeline.consume()
    pipeline.produce_views(stream.views)  # the first 200 again, at new offsets
    stats = pipeline.consume()
    assert stats.views == len(stream.view_ids) - 200
    assert stats.duplicates == 200
    assert_stored_exactly_once(pipeline, stream)


def test_sql_metacharacters_are_stored_exactly_as_sent(pipeline):
    pipeline = fast(pipeline)
    texts = [
        "o'brien",
        'say "hi"',
        "x'); DROP TABLE product_views; --",
        "back\\slash \\\\ \\N \\t",
        "\\",
        "100% _like_ $1 $$",
        "kullanıcı 모바일 🙂",
    ]
    views = [
        orjson.dumps(
            {
                "event": "ProductView",
                "messageid": f"{text}#{n}",
                "userid": text,
                "properties": {"productid": text},
                "context": {"source": text},
            }
        )
        for n, text in enumerate(texts)
    ]
    orders = [
        orjson.dumps(
            {
                "event": "OrderEvent",
                "messageid": f"{text}#{n}",
                "userid": text,
                "orderid": text,
                "lineitems": [{"productid": text, "quantity": 2}],
            }
        )
        for n, text in enumerate(texts)
    ]
    pipeline.produce_views(views)
    pipeline.produce_orders(orders)
    stats = pipeline.consume()
    assert stats.dead_letters == 0
    stored = pipeline.query("SELECT messageid, userid, productid, source FROM product_views")
    assert sorted(stored) == sorted((f"{t}#{n}", t, t, t) for n, t in enumerate(texts))
    lines = pipeline.query("SELECT messageid, orderid, userid, productid FROM order_lines")
    assert sorted(lines) == sorted((f"{t}#{n}", t, t, t) for n, t in enumerate(texts))


# -- crash safety ------------------------------------------------------------------------------


def consumer_in_flight(p: Pipeline) -> int | None:
    """The id of the transaction the consumer has open with rows written, if it has one."""
    rows = p.query(
        "SELECT backend_xid::text FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = %s AND backend_xid IS NOT NULL",
        (APPLICATION_NAME,),
    )
    return int(rows[0][0]) if rows else None


def transaction_outcome(p: Pipeline, xid: int) -> str:
    """'committed', 'aborted' or 'in progress' (pg_xact_status wants the 64-bit id)."""
    (current,) = p.query("SELECT pg_snapshot_xmax(pg_current_snapshot())::text")[0]
    full = (int(current) >> 32 << 32) | xid
    if full > int(current):
        full -= 1 << 32
    return p.query("SELECT pg_xact_status(%s::text::xid8)", (str(full),))[0][0]


def kill_mid_batch(
    p: Pipeline, consumer: ConsumerProcess, rng: random.Random, produced: dict[str, int]
) -> str:
    """Wait a random moment, then SIGKILL the consumer as soon as a batch is in flight.

    Returns what became of the transaction in flight: 'aborted' when the kill landed before
    its commit, 'committed' when the commit won the race, or 'idle' when the consumer had
    committed all `produced` (per topic) and there was no batch left to kill it in.
    """
    time.sleep(rng.uniform(0, 0.3))
    xid = None
    checked = time.monotonic()
    deadline = checked + 120
    while xid is None:
        if consumer.process.poll() is not None:
            raise AssertionError(f"the consumer exited:\n{consumer.output()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no batch in flight nor all committed:\n{consumer.output()}")
        xid = consumer_in_flight(p)
        if xid is None and time.monotonic() - checked > 0.5:
            if committed(p) == produced:
                return "idle"
            checked = time.monotonic()
    consumer.kill()
    outcome = "in progress"
    deadline = time.monotonic() + 30
    while outcome == "in progress" and time.monotonic() < deadline:
        outcome = transaction_outcome(p, xid)
        time.sleep(0.05)
    return outcome


def test_sigkill_while_a_batch_is_in_flight_loses_and_duplicates_nothing(pipeline, tmp_path):
    p = fast(pipeline)
    stream = make_stream(views=16_000, orders=1_600, seed=23)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    print(f"kill moments drawn with random seed {seed}")

    outcomes = []
    produced = dict.fromkeys(p.settings.topics, 0)
    consumer = ConsumerProcess(p, tmp_path / "consume-0.log")
    for n, (views, orders) in enumerate(stream.parts(8)):
        # While the restarted consumer joins the group, a backlog builds up; it is killed at
        # a random moment while it writes a batch of that backlog, as often as it takes for
        # one kill to land before the batch's commit.
        p.produce_views(views)
        p.produce_orders(orders)
        produced[p.settings.kafka_views_topic] += len(views)
        produced[p.settings.kafka_orders_topic] += len(orders)
        outcome = None
        while outcome not in {"aborted", "idle"}:
            outcome = kill_mid_batch(p, consumer, rng, produced)
            outcomes.append(outcome)
            if outcome != "idle":
                consumer = ConsumerProcess(p, tmp_path / f"consume-{len(outcomes)}.log")
        if outcomes.count("aborted") >= 5:
            rest = stream.parts(8)[n + 1 :]
            p.produce_views([line for views, _ in rest for line in views])
            p.produce_orders([line for _, orders in rest for line in orders])
            break

    settle(p, stream, timeout=90)
    consumer.finish(timeout=30)
    print(f"outcomes of the transactions in flight at each kill: {outcomes}")
    assert outcomes.count("aborted") >= 5, f"fewer than 5 kills landed mid-batch: {outcomes}"
    assert_stored_exactly_once(p, stream)
    assert_derived_tables_recomputed(p)


# -- a consumer group of two -------------------------------------------------------------------


def test_two_consumers_share_the_partitions_and_a_rebalance_loses_nothing(pipeline, tmp_path):
    p = fast(pipeline)
    stream = make_stream(views=12_000, orders=1_200, seed=24)
    (views_1, orders_1), (views_2, orders_2), (views_3, orders_3) = stream.parts(3)

    first = ConsumerProcess(p, tmp_path / "first.log")
    p.produce_views(views_1)
    p.produce_orders(orders_1)
    wait_for(lambda: stored_count(p) > 0, 60, "the first consumer to store events")

    second = ConsumerProcess(p, tmp_path / "second.log")
    producer = produce_in_background(p, views_2, orders_2, rate=4000)
    wait_for(
        lambda: re.search(r"assigned \S+ \[", second.output()) is not None,
        60,
        "the second consumer to be given partitions",
    )
    producer.join()
    assigned = re.findall(r"assigned (.*)", second.output())[-1]
    owned = sum(len(ids.split(",")) for ids in re.findall(r"\[([\d, ]+)\]", assigned))
    assert 0 < owned < 2 * p.settings.kafka_partitions, f"second consumer owns {assigned}"

    first_summary = first.finish(timeout=30)  # leaves the group mid-stream
    p.produce_views(views_3)
    p.produce_orders(orders_3)
    settle(p, stream, timeout=90)
    second_summary = second.finish(timeout=30)

    assert "revoked" in first.output()
    assert stored_reported(first_summary) > 0
    assert stored_reported(second_summary) > 0
    # Each batch is committed before its partitions move: no consumer was given an event
    # the other had already stored.
    assert duplicates_reported(first_summary) == 0
    assert duplicates_reported(second_summary) == 0
    assert_stored_exactly_once(p, stream)
    assert_derived_tables_recomputed(p)


# -- database outage ---------------------------------------------------------------------------


@pytest.fixture
def own_postgres(tmp_path):
    """A PostgreSQL server of this test alone, which the test may stop and start again."""
    pgdata = tmp_path / "pg"
    server = pgserver.get_server(pgdata, cleanup_mode=None)

    def stop() -> None:
        embedded._stop_postgres({"pgdata": str(server.pgdata)})

    def start() -> None:
        with server._lock:
            server.ensure_postgres_running()

    try:
        yield server.get_uri(), stop, start
    finally:
        stop()


def committed(p: Pipeline) -> dict[str, int]:
    """Offsets the ingest group has committed, summed per topic."""
    totals = dict.fromkeys(p.settings.topics, 0)
    for (topic, _), offset in p.committed().items():
        totals[topic] += offset
    return totals


def test_a_database_outage_is_retried_commits_nothing_and_loses_nothing(pipeline, own_postgres):
    url, stop_database, start_database = own_postgres
    p = fast(pipeline, database_url=url)
    stream = make_stream(views=3000, orders=300, seed=25, bad_every=100)
    (views_1, orders_1), (views_2, orders_2) = stream.parts(2)

    ingestor = Ingestor(p.settings, p.bootstrap)
    thread = Background(lambda: ingestor.run(until_idle=3), "ingest")
    thread.start()
    try:
        p.produce_views(views_1)
        p.produce_orders(orders_1)
        part_1 = {
            p.settings.kafka_views_topic: len(views_1),
            p.settings.kafka_orders_topic: len(orders_1),
        }
        wait_for(lambda: committed(p) == part_1, 60, "the first part to be committed")

        stop_database()
        p.produce_views(views_2)
        p.produce_orders(orders_2)
        retries = ingestor.stats.retries
        wait_for(lambda: ingestor.stats.retries >= retries + 3, 30, "the consumer to retry")
        assert thread.is_alive() and thread.error is None, thread.error
        assert committed(p) == part_1, "offsets were committed while the database was down"

        start_database()
        thread.join(timeout=90)
        assert not thread.is_alive(), "the consumer did not drain after the database came back"
    finally:
        ingestor.stop.set()
        thread.join(timeout=30)
    stats = thread.result
    assert stats.retries >= 3
    assert stats.dead_letters == len(stream.bad)
    assert_stored_exactly_once(p, stream)
    assert committed(p) == {
        p.settings.kafka_views_topic: len(stream.views),
        p.settings.kafka_orders_topic: len(stream.orders),
    }


# -- a row the database refuses ----------------------------------------------------------------


def test_a_row_the_database_refuses_is_dead_lettered_and_the_rest_of_its_batch_stored(pipeline):
    # Cleaning lets through every row the schema accepts; a constraint added by a database
    # administrator is how a row that passed cleaning can still be refused.
    pipeline = fast(pipeline)
    with connect(pipeline.settings) as conn:
        conn.execute(
            "ALTER TABLE product_views ADD CONSTRAINT no_recalled"
            " CHECK (productid <> 'product-recalled')"
        )
        conn.execute(
            "ALTER TABLE order_lines ADD CONSTRAINT no_recalled CHECK (productid <> 'recalled')"
        )
    stream = make_stream(views=400, orders=40, seed=26, bad_every=None)
    refused_view = orjson.loads(stream.views[100])
    refused_view["properties"]["productid"] = "product-recalled"
    refused_order = orjson.loads(stream.orders[10])
    refused_order["lineitems"].append({"productid": "recalled", "quantity": 1})
    stream.views[100] = orjson.dumps(refused_view)
    stream.orders[10] = orjson.dumps(refused_order)
    stream.view_ids.discard(refused_view["messageid"])
    stream.order_lines = {
        line for line in stream.order_lines if line[0] != refused_order["messageid"]
    }

    pipeline.produce_views(stream.views)
    pipeline.produce_orders(stream.orders)
    stats = pipeline.consume()

    assert stats.dead_letters == 2
    dead = pipeline.query("SELECT payload, reason FROM dead_letters ORDER BY topic")
    assert [orjson.loads(payload)["messageid"] for payload, _ in dead] == [
        refused_order["messageid"],
        refused_view["messageid"],
    ]
    for _, reason in dead:
        assert reason.startswith(f"{Reason.REJECTED_BY_DATABASE}: "), reason
        assert "no_recalled" in reason
    rows = pipeline.query("SELECT count(*) FROM product_views")
    assert rows == [(len(stream.view_ids),)]
    assert set(pipeline.query("SELECT messageid, line FROM order_lines")) == stream.order_lines
    again = pipeline.consume()
    assert again.consumed == 0, "the refused events' offsets are committed"


def test_bench_ingest_with_stored_views_runs_both_legs_on_new_events(pipeline):
    """`bench ingest --stored`: after the fill, (b) runs right after its checkpoint and again
    between checkpoints, each on events of its own (a repeat would time the duplicate path),
    all into the one filled database."""
    result = pipeline.cli(
        "bench", "ingest", "--events", "3000", "--stored", "6000", "--consumers", "1", timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert re.search(r"^stored 6,000 views first \(60 days before today\)", out, re.M)
    assert re.search(r"^\(b\) right after the checkpoint: 3,000 events in ", out, re.M)
    assert re.search(r"^\(b\) produce -> consume -> PostgreSQL between checkpoints, ", out, re.M)
    assert re.fullmatch(
        r"end to end [\d,]+ events/s, raw COPY [\d,]+ rows/s(; .*)?, ratio=\d+\.\d\d",
        out.strip().splitlines()[-1],
    )
    scratch = psycopg.conninfo.make_conninfo(
        pipeline.settings.database_url, dbname="clickstream_bench"
    )
    with psycopg.connect(scratch) as conn:
        keys = conn.execute("SELECT count(*) FROM view_messageids").fetchone()[0]
    assert keys == 6000 + 2 * 3000
