"""The fault matrix: the database fails the consumer in every way it can, no event is lost.

Each test runs the consumer as an ordinary role (not a superuser; it owns no table) while a
few thousand valid views and orders arrive in three parts:

    part 1        fault applied   part 2          fault removed   part 3
    |--stored--|  ^               |--retried...--|^               |--stored--|

and ends with the same proof: every valid event stored exactly once, zero dead letters, the
fault seen and logged with its cause, and the group's committed offsets never ahead of what
is stored: sampled while the fault holds, they neither advance nor cover an event that is
not in the database.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import orjson
import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from conftest import Pipeline
from psycopg import conninfo, sql
from test_ingest import (
    Background,
    assert_stored_exactly_once,
    fast,
    make_stream,
    own_postgres,  # noqa: F401  (a fixture)
    wait_for,
)

from clickstream.ingest.consumer import Ingestor
from clickstream.store.db import connect

Offsets = dict[tuple[str, int], int]
# Ends every session of a role (a parameter).
TERMINATE = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s"


# -- the role and the consumer ---------------------------------------------------------------


@dataclass
class Harness:
    """A database with the schema, an admin connection, and a consumer running as `role`."""

    admin_url: str
    admin: psycopg.Connection
    role: str
    p: Pipeline  # settings of the consumer: its role's URL
    samples: list[tuple[Offsets, set[str], set[str]]] = field(default_factory=list)

    def stored(self) -> tuple[set[str], set[str]]:
        views = {m for (m,) in self.admin.execute("SELECT messageid FROM product_views")}
        orders = {m for (m,) in self.admin.execute("SELECT DISTINCT messageid FROM order_lines")}
        return views, orders

    def sample(self) -> Offsets:
        """Committed offsets, then what is stored: the commit must never be ahead."""
        offsets = self.p.committed()
        views, orders = self.stored()
        self.samples.append((offsets, views, orders))
        return offsets

    def terminate_consumer(self) -> int:
        return len(self.admin.execute(TERMINATE, (self.role,)).fetchall())


def make_role(admin: psycopg.Connection, dbname: str) -> str:
    """A login role with exactly what the consumer needs: no ownership, no DDL, no superuser."""
    role = f"ingest_{uuid.uuid4().hex[:8]}"
    for statement in (
        "CREATE ROLE {role} LOGIN",
        "GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {role}",
        "GRANT USAGE ON SCHEMA public TO {role}",
        "GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {role}",
        "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}",
    ):
        names = {"role": sql.Identifier(role), "db": sql.Identifier(dbname)}
        admin.execute(sql.SQL(statement).format(**names))
    return role


def drop_role(admin: psycopg.Connection, role: str) -> None:
    admin.execute(TERMINATE, (role,))
    admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _harness(pipeline: Pipeline, url: str | None = None) -> Iterator[Harness]:
    admin_p = fast(pipeline, **({"database_url": url} if url else {}))
    admin_url = admin_p.settings.database_url
    admin = psycopg.connect(admin_url, autocommit=True)
    dbname = conninfo.conninfo_to_dict(admin_url)["dbname"]
    role = make_role(admin, dbname)
    settings = dataclasses.replace(
        admin_p.settings, database_url=conninfo.make_conninfo(admin_url, user=role)
    )
    h = Harness(admin_url, admin, role, Pipeline(settings, pipeline.bootstrap))
    try:
        yield h
    finally:
        if not h.admin.closed:
            drop_role(h.admin, role)
            h.admin.close()


@pytest.fixture
def harness(pipeline) -> Iterator[Harness]:
    yield from _harness(pipeline)


def messageids_by_offset(p: Pipeline) -> dict[tuple[str, int, int], str]:
    """Every record on the test's topics: (topic, partition, offset) -> its messageid."""
    group = f"index-{uuid.uuid4().hex[:8]}"
    reader = Consumer({"bootstrap.servers": p.bootstrap, "group.id": group})
    try:
        partitions = [
            TopicPartition(topic, n, OFFSET_BEGINNING)
            for topic in p.settings.topics
            for n in range(p.settings.kafka_partitions)
        ]
        total = sum(reader.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions)
        reader.assign(partitions)
        index: dict[tuple[str, int, int], str] = {}
        while len(index) < total:
            for message in reader.consume(1000, timeout=1):
                if message.error() is None:
                    key = (message.topic(), message.partition(), message.offset())
                    index[key] = orjson.loads(message.value())["messageid"]
        return index
    finally:
        reader.close()


def assert_commits_never_ahead(h: Harness) -> None:
    """Every event below a committed offset, at the time it was sampled, was stored then."""
    assert h.samples, "no sample of the committed offsets was taken"
    index = messageids_by_offset(h.p)
    views_topic = h.p.settings.kafka_views_topic
    for offsets, views, orders in h.samples:
        for (topic, partition, offset), messageid in index.items():
            if offset < offsets[(topic, partition)]:
                stored = views if topic == views_topic else orders
                assert messageid in stored, (
                    f"offset {offset} of {topic}[{partition}] committed, {messageid} not stored"
                )


# -- the scenario ----------------------------------------------------------------------------


def run_through_fault(
    h: Harness,
    apply: Callable[[], None],
    undo: Callable[[], None],
    *,
    seed: int,
    queryable: bool = True,
    lasting: bool = True,
) -> None:
    """Ingest part 1, apply the fault, send part 2, see it retried, undo, send part 3.

    A `lasting` fault fails every try until it is undone: the consumer must retry at least
    four times and commit nothing meanwhile. Otherwise one failed try is proof enough.
    `queryable`: the test can read the database while the fault holds.
    """
    p = h.p
    stream = make_stream(views=3000, orders=300, seed=seed, bad_every=None)
    parts = stream.parts(3)
    # The role may not create tables: the schema is in place, and a current schema is only
    # read on start.
    ingestor = Ingestor(
        p.settings, p.bootstrap, connect_db=lambda: connect(p.settings, check_schema=False)
    )
    tries = 4 if lasting else 1
    retries = 0
    thread = Background(ingestor.run, "ingest")
    thread.start()
    sent = dict.fromkeys(p.settings.topics, 0)

    def send(views: list[bytes], orders: list[bytes]) -> None:
        p.produce_views(views)
        p.produce_orders(orders)
        sent[p.settings.kafka_views_topic] += len(views)
        sent[p.settings.kafka_orders_topic] += len(orders)

    def all_committed() -> bool:
        totals = dict.fromkeys(p.settings.topics, 0)
        for (topic, _), offset in p.committed().items():
            totals[topic] += offset
        return totals == sent

    def sample() -> Offsets:
        """While the database cannot be read, nothing can be stored either: the offsets are
        checked against what was stored when the fault began."""
        if queryable:
            return h.sample()
        offsets = p.committed()
        h.samples.append((offsets, *stored_before))
        return offsets

    try:
        send(*parts[0])
        wait_for(all_committed, 60, "part 1 to be stored and committed")
        stored_before = h.stored()  # nothing in flight: part 1 is committed, part 2 not sent
        apply()
        retries = ingestor.stats.retries
        send(*parts[1])
        wait_for(lambda: ingestor.stats.retries >= retries + 1, 60, "the consumer to retry")
        held = sample()
        wait_for(lambda: ingestor.stats.retries >= retries + tries, 60, "more retries")
        assert thread.is_alive(), thread.error
        during = sample()
        if lasting:
            assert during == held, "offsets were committed while the fault held"
        undo()
        send(*parts[2])
        wait_for(all_committed, 90, "every part to be stored and committed")
        h.sample()
    finally:
        ingestor.stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive(), "the consumer did not stop"
    assert thread.result.dead_letters == 0
    assert_stored_exactly_once(p, stream)
    assert_commits_never_ahead(h)


def _retry_lines(caplog) -> str:
    lines = [r.getMessage() for r in caplog.records if r.name == "clickstream.consume"]
    return "\n".join(line for line in lines if "retrying in" in line)


# -- the matrix ------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _log_warnings(caplog):
    caplog.set_level(logging.WARNING, logger="clickstream.consume")


def test_insert_privilege_revoked_then_granted_back(harness, caplog):
    table_grant = sql.SQL("{} INSERT ON product_views {} {}")

    def grant(verb: str, direction: str) -> None:
        harness.admin.execute(
            table_grant.format(sql.SQL(verb), sql.SQL(direction), sql.Identifier(harness.role))
        )

    run_through_fault(
        harness, lambda: grant("REVOKE", "FROM"), lambda: grant("GRANT", "TO"), seed=61
    )
    assert (
        f"permission denied for table product_views: grant INSERT, SELECT, UPDATE on it to role"
        f" {harness.role}" in _retry_lines(caplog)
    )
    assert "nothing committed" in _retry_lines(caplog)


def test_a_column_renamed_away_and_back(harness, caplog):
    def rename(old: str, new: str) -> Callable[[], None]:
        return lambda: harness.admin.execute(
            f"ALTER TABLE product_views RENAME COLUMN {old} TO {new}"
        )

    run_through_fault(
        harness, rename("source", "source_old"), rename("source_old", "source"), seed=62
    )
    lines = _retry_lines(caplog)
    assert 'column "source" of relation "product_views" does not exist' in lines
    assert "the schema differs from the one this version expects" in lines


def test_the_consumers_backend_terminated(harness, caplog):
    # Its idle session is terminated first, so the next write fails for sure; then every
    # session the role opens is terminated, mid-batch or not, until the fault is undone.
    stop = threading.Event()
    killer = Background(lambda: _keep_terminating(harness, stop), "terminator")

    def apply() -> None:
        assert harness.terminate_consumer() == 1, "the consumer had no session to terminate"
        killer.start()

    def undo() -> None:
        stop.set()
        killer.join(timeout=30)

    run_through_fault(harness, apply, undo, seed=63, lasting=False)
    assert "terminating connection due to administrator command" in _retry_lines(caplog)


def _keep_terminating(h: Harness, stop) -> None:
    with psycopg.connect(h.admin_url, autocommit=True) as admin:
        while not stop.wait(0.05):
            admin.execute(TERMINATE, (h.role,))


def test_the_database_switched_read_only_then_back(harness, caplog):
    dbname = sql.Identifier(conninfo.conninfo_to_dict(harness.admin_url)["dbname"])

    def apply() -> None:
        harness.admin.execute(
            sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(dbname)
        )
        # A session sees the setting when it starts: the consumer must reconnect to see it.
        harness.terminate_consumer()

    def undo() -> None:
        harness.admin.execute(
            sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(dbname)
        )

    run_through_fault(harness, apply, undo, seed=64)
    lines = _retry_lines(caplog)
    assert "in a read-only transaction: the server is read-only" in lines


def test_a_lock_held_past_statement_timeout(harness, caplog):
    harness.admin.execute(
        sql.SQL("ALTER ROLE {} SET statement_timeout = '500ms'").format(
            sql.Identifier(harness.role)
        )
    )
    locker = psycopg.connect(harness.admin_url)

    def apply() -> None:
        # SHARE mode blocks the consumer's writes, not the test's reads.
        locker.execute("LOCK TABLE product_views IN SHARE MODE")

    try:
        run_through_fault(harness, apply, locker.rollback, seed=65)
    finally:
        locker.close()
    lines = _retry_lines(caplog)
    assert "canceling statement due to statement timeout" in lines
    assert f"raise statement_timeout for role {harness.role}" in lines


@pytest.fixture
def own_harness(pipeline, own_postgres):  # noqa: F811
    """A harness on a PostgreSQL server of this test alone, and that server's stop and start."""
    url, stop_database, start_database = own_postgres
    for h in _harness(pipeline, url):
        yield h, stop_database, start_database


def test_the_database_server_stopped_and_started(own_harness, caplog):
    h, stop_database, start_database = own_harness

    def stop() -> None:
        h.admin.close()
        stop_database()

    def start() -> None:
        start_database()
        h.admin = psycopg.connect(h.admin_url, autocommit=True)

    run_through_fault(h, stop, start, seed=66, queryable=False)
    assert "reconnecting" in _retry_lines(caplog)


def test_a_constraint_refusing_every_view_is_a_fault_not_bad_events(harness, caplog):
    """The guard: refusals beyond ingest.max_rejected_share of a batch are retried."""

    # Every event is refused, so any batch of two events or more is over the share.
    def apply() -> None:
        for table in ("product_views", "order_lines"):
            harness.admin.execute(
                f"ALTER TABLE {table} ADD CONSTRAINT botched CHECK (userid = '') NOT VALID"
            )

    def undo() -> None:
        for table in ("product_views", "order_lines"):
            harness.admin.execute(f"ALTER TABLE {table} DROP CONSTRAINT botched")

    run_through_fault(harness, apply, undo, seed=67)
    lines = _retry_lines(caplog)
    assert "the database refused more than" in lines
    assert 'violates check constraint "botched"' in lines
    assert "ingest.max_rejected_share" in lines


def test_the_database_down_when_the_consumer_starts(own_harness, caplog):
    """Started during an outage, the consumer waits for the database instead of exiting."""
    h, stop_database, start_database = own_harness
    p = h.p
    stream = make_stream(views=500, orders=50, seed=67, bad_every=None)
    h.admin.close()
    stop_database()
    ingestor = Ingestor(
        p.settings, p.bootstrap, connect_db=lambda: connect(p.settings, check_schema=False)
    )
    thread = Background(ingestor.run, "ingest")
    thread.start()
    try:
        p.produce_views(stream.views)
        p.produce_orders(stream.orders)
        wait_for(lambda: "nothing consumed yet" in _retry_lines(caplog), 60, "a retry at start")
        assert thread.is_alive(), thread.error
        start_database()
        h.admin = psycopg.connect(h.admin_url, autocommit=True)
        wait_for(
            lambda: sum(p.committed().values()) == len(stream.views) + len(stream.orders),
            90,
            "every event to be stored and committed",
        )
    finally:
        ingestor.stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive(), "the consumer did not stop"
    assert thread.result.dead_letters == 0
    assert_stored_exactly_once(p, stream)
