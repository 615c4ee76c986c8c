"""Retention on a real database: exact day boundaries, exact dedup across days, live ingest.

Timeline of the boundary test (retention.events_days = 90, pruned on 2026-12-02 10:00Z):

    2026-09-01T12:00   2026-09-02T23:59:59.999 | 2026-09-03T00:00:00.000   2026-12-02T09:00
         dropped              dropped          |        kept                     kept
                                            cutoff
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import psycopg.conninfo
import pytest
from conftest import Pipeline

from clickstream.ingest.cleaning import CleanBatch, OrderLineRow, Reject, ViewRow
from clickstream.ingest.consumer import Ingestor
from clickstream.ingest.event_time import format_timestamp
from clickstream.reports.scheduler import run_every_hour
from clickstream.store.db import connect
from clickstream.store.migrations import MIGRATIONS
from clickstream.store.retention import cutoffs, prune
from clickstream.store.schema import migrate
from clickstream.store.writer import write_batch

NOW = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
CUTOFF = datetime(2026, 9, 3, tzinfo=UTC)
DEAD_LETTER_CUTOFF = datetime(2026, 11, 2, tzinfo=UTC)
MS = timedelta(milliseconds=1)


def at(moment: datetime) -> str:
    return format_timestamp(moment)


def view(messageid: str, moment: datetime, user: str = "user-1") -> ViewRow:
    return ViewRow(messageid, user, "product-1", "desktop", at(moment))


def order(messageid: str, moment: datetime, lines: int = 2) -> list[OrderLineRow]:
    return [
        OrderLineRow(messageid, n, "order-" + messageid, "user-1", f"product-{n}", 1, at(moment))
        for n in range(1, lines + 1)
    ]


def retained(pipeline: Pipeline, **days) -> Pipeline:
    names = {f"retention_{k}_days": v for k, v in days.items()}
    return Pipeline(dataclasses.replace(pipeline.settings, **names), pipeline.bootstrap)


def test_prune_drops_everything_before_the_cutoff_instant_and_keeps_it(pipeline):
    pipeline = retained(pipeline, events=90, user_product_hours=90, dead_letters=30)
    moments = {
        "old": CUTOFF - timedelta(days=1, hours=12),
        "last-ms": CUTOFF - MS,
        "boundary": CUTOFF,
        "recent": NOW - timedelta(hours=1),
    }
    with connect(pipeline.settings) as conn:
        write_batch(
            conn,
            CleanBatch(
                views=[view(f"v-{name}", t) for name, t in moments.items()],
                order_lines=[line for name, t in moments.items() for line in order(f"o-{name}", t)],
                rejects=[Reject("t", 0, n, b"{}", "bad-json: x") for n in range(2)],
            ),
        )
        for offset, received in enumerate([DEAD_LETTER_CUTOFF - MS, DEAD_LETTER_CUTOFF]):
            conn.execute(
                'UPDATE dead_letters SET received_at = %s WHERE "offset" = %s', (received, offset)
            )
        conn.commit()
        counters_before = conn.execute("SELECT * FROM report_view_hours ORDER BY 1").fetchall()
    with connect(pipeline.settings, autocommit=True) as conn:
        result = prune(conn, cutoffs(pipeline.settings, NOW), NOW)
    assert result.removed

    kept = {"boundary", "recent"}
    assert {r[0] for r in pipeline.query("SELECT messageid FROM product_views")} == {
        f"v-{name}" for name in kept
    }
    assert set(pipeline.query("SELECT messageid, line FROM order_lines")) == {
        (f"o-{name}", n) for name in kept for n in (1, 2)
    }
    assert {r[0] for r in pipeline.query("SELECT messageid FROM view_messageids")} == {
        f"v-{name}" for name in kept
    }
    assert {r[0] for r in pipeline.query("SELECT messageid FROM order_messageids")} == {
        f"o-{name}" for name in kept
    }
    assert sorted(r[0] for r in pipeline.query("SELECT hour FROM user_product_hours")) == [
        CUTOFF,
        datetime(2026, 12, 2, 9, tzinfo=UTC),
    ]
    assert pipeline.query("SELECT min(hour) FROM report_buyers") == [(CUTOFF,)]
    assert pipeline.query('SELECT "offset" FROM dead_letters') == [(1,)]
    # Counters (and so the reports) are kept.
    assert pipeline.query("SELECT * FROM report_view_hours ORDER BY 1") == counters_before
    assert dict(pipeline.query("SELECT name, pruned_before FROM retention_cutoffs")) == {
        "events": CUTOFF,
        "user_product_hours": CUTOFF,
        "dead_letters": DEAD_LETTER_CUTOFF,
    }
    # Today and the next two days have partitions ahead.
    days = {r[0] for r in pipeline.query("SELECT relname FROM pg_class WHERE relkind = 'r'")}
    assert {f"product_views_p202612{d:02}" for d in (2, 3, 4)} <= days


def test_the_same_messageid_with_another_event_time_is_stored_once(pipeline):
    first, later = NOW - timedelta(days=20), NOW - timedelta(hours=2)
    with connect(pipeline.settings) as conn:
        one = write_batch(
            conn, CleanBatch(views=[view("v-1", first)], order_lines=order("o-1", first))
        )
        assert (one.views, one.order_lines, one.duplicates) == (1, 2, 0)
        # Re-sent (stamped again) into another day's partition, alone and inside a new batch.
        again = write_batch(
            conn, CleanBatch(views=[view("v-1", later)], order_lines=order("o-1", later))
        )
        assert (again.views, again.order_lines, again.duplicates) == (0, 0, 3)
        mixed = write_batch(
            conn,
            CleanBatch(
                views=[view("v-2", later), view("v-1", later), view("v-2", first)],
                order_lines=order("o-2", later) + order("o-1", later),
            ),
        )
        assert (mixed.views, mixed.order_lines, mixed.duplicates) == (1, 2, 4)
    assert pipeline.query("SELECT messageid, viewed_at FROM product_views ORDER BY 1") == [
        ("v-1", first),
        ("v-2", later),  # of one messageid twice in a batch, the first event is kept
    ]
    assert pipeline.query("SELECT messageid, count(*) FROM order_lines GROUP BY 1 ORDER BY 1") == [
        ("o-1", 2),
        ("o-2", 2),
    ]
    # The counters counted each view once: one view and one viewer in each of two hours.
    assert pipeline.query("SELECT hour, views, viewers FROM report_view_hours ORDER BY 1") == [
        (first.replace(minute=0), 1, 1),
        (later.replace(minute=0), 1, 1),
    ]


def test_prune_dry_run_lists_and_the_command_removes(pipeline):
    old = datetime.now(UTC) - timedelta(days=100)
    with connect(pipeline.settings) as conn:
        write_batch(conn, CleanBatch(views=[view("v-old", old)]))
    listing = pipeline.cli("prune", "--dry-run")
    assert listing.returncode == 0, listing.stderr
    assert f"would remove product_views {old.date()} (product_views_p{old:%Y%m%d})" in (
        listing.stdout
    )
    assert "nothing was removed" in listing.stdout
    assert pipeline.query("SELECT count(*) FROM product_views") == [(1,)]
    done = pipeline.cli("prune")
    assert done.returncode == 0, done.stderr
    assert f"removed product_views {old.date()}" in done.stdout
    assert pipeline.query("SELECT count(*) FROM product_views") == [(0,)]


def test_ingest_keeps_running_while_prune_runs(pipeline):
    """Produce and consume in threads while prune drops 30 old days: each event once.

    The two provably overlap: the prune's first drop waits until the ingest has stored more
    events after the prune planned, and what was stored while the prune ran is checked."""
    settings = dataclasses.replace(
        pipeline.settings, ingest_batch_size=500, ingest_batch_wait_ms=50
    )
    now = datetime.now(UTC)
    with connect(settings) as conn:
        for day in range(100, 130):
            moment = now - timedelta(days=day)
            write_batch(conn, CleanBatch(views=[view(f"old-{day}-{n}", moment) for n in range(20)]))
    ids = [str(uuid.uuid4()) for _ in range(20_000)]
    lines = [
        orjson.dumps(
            {
                "event": "ProductView",
                "messageid": m,
                "userid": f"user-{n % 300}",
                "properties": {"productid": f"product-{n % 97}"},
                "context": {"source": "ios"},
            }
        )
        for n, m in enumerate(ids)
    ]
    producer = threading.Thread(
        target=Pipeline(settings, pipeline.bootstrap).produce_views,
        args=(lines,),
        kwargs={"rate": 4_000},  # five seconds of traffic
    )
    ingestor = Ingestor(settings, pipeline.bootstrap)
    consumer = threading.Thread(target=ingestor.run, kwargs={"until_idle": 3.0})
    new = "SELECT count(*) FROM view_messageids WHERE day > %s"
    recent = (now.date() - timedelta(days=1),)
    consumer.start()
    producer.start()
    with psycopg.connect(settings.database_url, autocommit=True) as probe:
        for _ in range(1200):
            if probe.execute(new, recent).fetchone()[0]:
                break
            threading.Event().wait(0.05)
        counts: dict[str, int] = {}

        def planned(doomed) -> None:
            counts["planned"] = probe.execute(new, recent).fetchone()[0]

        def stepped(doomed) -> None:
            if "first step" in counts:
                return
            for _ in range(600):  # the ingest stores more while the prune is under way
                counts["first step"] = probe.execute(new, recent).fetchone()[0]
                if counts["first step"] > counts["planned"]:
                    return
                threading.Event().wait(0.01)

        with connect(settings, autocommit=True) as conn:
            result = prune(conn, cutoffs(settings, now), now, on_plan=planned, on_step=stepped)
        counts["done"] = probe.execute(new, recent).fetchone()[0]
    producer.join()
    consumer.join()

    assert counts["planned"] < counts["first step"] <= counts["done"], counts
    assert len([r for r in result.removed if r.table == "product_views"]) == 30
    stored = pipeline.query("SELECT messageid, count(*) FROM product_views GROUP BY 1")
    assert {m for m, _ in stored} == set(ids)
    assert all(count == 1 for _, count in stored)
    assert pipeline.query("SELECT count(*) FROM dead_letters") == [(0,)]
    assert pipeline.query("SELECT count(*) FROM view_messageids") == [(len(ids),)]
    assert ingestor.stats.views == len(ids)


def test_the_report_scheduler_prunes_when_it_starts(pipeline, tmp_path):
    clock = lambda: NOW  # noqa: E731
    with connect(pipeline.settings) as conn:
        write_batch(conn, CleanBatch(views=[view("v-old", CUTOFF - MS), view("v-new", CUTOFF)]))
    stop = threading.Event()
    runner = threading.Thread(
        target=run_every_hour,
        args=(pipeline.settings, tmp_path, stop),
        kwargs={"poll": 0.05, "clock": clock},
    )
    runner.start()
    try:
        for _ in range(600):
            if pipeline.query("SELECT count(*) FROM retention_cutoffs") != [(0,)]:
                break
            stop.wait(0.05)
    finally:
        stop.set()
        runner.join(timeout=30)
    assert not runner.is_alive()
    assert pipeline.query("SELECT messageid FROM product_views") == [("v-new",)]
    assert pipeline.query("SELECT pruned_before FROM retention_cutoffs WHERE name = 'events'") == [
        (CUTOFF,)
    ]


def test_the_migration_moves_existing_rows_into_day_partitions(pipeline):
    """Tables of a database from before 0008 keep every row, and their dedup."""
    first, second = CUTOFF + timedelta(hours=5), NOW - timedelta(days=2)
    with psycopg.connect(pipeline.settings.database_url) as conn:
        conn.execute("DROP SCHEMA public CASCADE")  # the fixture's is current: start older
        conn.execute("CREATE SCHEMA public")
        conn.execute(
            "CREATE TABLE schema_migrations"
            " (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for name in sorted(MIGRATIONS):
            if name < "0008":
                for statement in MIGRATIONS[name]:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (name,))
        conn.execute(
            "INSERT INTO product_views (messageid, userid, productid, source, viewed_at) VALUES"
            " ('v-1', 'user-1', 'product-1', 'ios', %s), ('v-2', 'user-1', 'product-2', 'ios', %s)",
            (first, second),
        )
        conn.execute(
            "INSERT INTO order_lines"
            " (messageid, line, orderid, userid, productid, quantity, ordered_at) VALUES"
            " ('o-1', 1, '7', 'user-1', 'product-1', 1, %s),"
            " ('o-1', 2, '7', 'user-1', 'product-2', 3, %s)",
            (first, first),
        )
        conn.execute(
            "INSERT INTO user_product_hours (userid, productid, hour, viewed_at)"
            " VALUES ('user-1', 'product-1', %s, %s)",
            (first.replace(minute=0), first),
        )
        # An index another migration might have added comes along.
        conn.execute("CREATE INDEX product_views_by_user ON product_views (userid)")
        before = {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3").fetchall()
            for table in ("product_views", "order_lines", "user_product_hours")
        }
    with psycopg.connect(pipeline.settings.database_url) as conn:
        migrate(conn)
        assert (
            conn.execute("SELECT * FROM product_views ORDER BY 1, 2, 3").fetchall()
            == before["product_views"]
        )
        assert (
            conn.execute("SELECT * FROM order_lines ORDER BY 1, 2, 3").fetchall()
            == before["order_lines"]
        )
        assert [
            r[:4] for r in conn.execute("SELECT * FROM user_product_hours ORDER BY 1, 2, 3")
        ] == before["user_product_hours"]
        assert conn.execute("SELECT count(*) FROM product_views_p20260903").fetchone() == (1,)
        assert conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'product_views_by_user'"
        ).fetchall() == [("CREATE INDEX product_views_by_user ON ONLY public.product_views"
                          " USING btree (userid)",)]  # fmt: skip
        assert conn.execute("SELECT * FROM view_messageids ORDER BY 1").fetchall() == [
            ("v-1", first.date()),
            ("v-2", second.date()),
        ]
        again = write_batch(
            conn, CleanBatch(views=[view("v-1", NOW)], order_lines=order("o-1", NOW))
        )
        assert (again.views, again.order_lines, again.duplicates) == (0, 0, 3)


def test_a_day_detached_but_not_dropped_never_comes_back(pipeline):
    """What a prune stopped half way leaves: the writer and the next prune clear it away."""
    late, other = NOW - timedelta(days=3), NOW - timedelta(days=4)
    names = [f"product_views_p{moment:%Y%m%d}" for moment in (late, other)]
    with connect(pipeline.settings) as conn:
        write_batch(conn, CleanBatch(views=[view("v-a", late), view("v-x", other)]))
        for name in names:  # as drop_partition does, stopped before its DROP
            conn.execute("INSERT INTO clickstream_detached (name) VALUES (%s)", (name,))
            conn.execute(f"ALTER TABLE product_views DETACH PARTITION {name}")
        conn.commit()
        # This connection still believes the day has a partition: it finds out and makes one.
        stored = write_batch(conn, CleanBatch(views=[view("v-b", late)]))
        assert stored.views == 1
    assert pipeline.query("SELECT messageid FROM product_views") == [("v-b",)]
    with connect(pipeline.settings, autocommit=True) as conn:
        prune(conn, cutoffs(pipeline.settings, NOW), NOW)
    tables = {r[0] for r in pipeline.query("SELECT relname FROM pg_class WHERE relkind = 'r'")}
    assert names[0] in tables and names[1] not in tables
    assert pipeline.query("SELECT name FROM clickstream_detached") == []


def test_a_day_an_operator_detached_is_never_dropped(pipeline):
    """Named like a partition but detached by hand (to archive it): the prune keeps it, even
    past the cutoff, and the writer refuses to replace it, saying why."""
    archived = CUTOFF - timedelta(days=5)
    name = f"product_views_p{archived:%Y%m%d}"
    with connect(pipeline.settings) as conn:
        write_batch(conn, CleanBatch(views=[view("v-archived", archived)]))
        conn.execute(f"ALTER TABLE product_views DETACH PARTITION {name}")
        conn.commit()
    with connect(pipeline.settings, autocommit=True) as conn:
        result = prune(conn, cutoffs(retained(pipeline, events=90).settings, NOW), NOW)
        assert name not in {d.partition.name for d in result.removed if d.partition}
    assert pipeline.query(f"SELECT messageid FROM {name}") == [("v-archived",)]
    with connect(pipeline.settings) as conn, pytest.raises(psycopg.errors.DuplicateTable) as exc:
        write_batch(conn, CleanBatch(views=[view("v-late", archived)]))
    assert f"table {name} exists and is not a partition of product_views" in str(exc.value)
    assert pipeline.query(f"SELECT messageid FROM {name}") == [("v-archived",)]


def test_the_day_function_has_an_explicit_search_path_with_pg_temp_last(pipeline):
    """SECURITY DEFINER: a caller's temporary table must not shadow the function's own."""
    ((config, definer),) = pipeline.query(
        "SELECT proconfig, prosecdef FROM pg_proc WHERE proname = 'clickstream_add_day'"
    )
    (schema,) = pipeline.query("SELECT current_schema()")[0]
    assert definer and config == [f"search_path={schema}, pg_temp"]


def test_an_ingest_role_without_ddl_rights_still_gets_its_days(pipeline):
    """The days are made by clickstream_add_day, which runs as the tables' owner."""
    role = f"ingest_{uuid.uuid4().hex[:8]}"
    with connect(pipeline.settings, autocommit=True) as owner:
        owner.execute(f"CREATE ROLE {role} LOGIN")
        owner.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"
        )
        owner.execute(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}")
    try:
        url = psycopg.conninfo.make_conninfo(pipeline.settings.database_url, user=role)
        moment = NOW - timedelta(days=40)
        with psycopg.connect(url) as conn:
            stored = write_batch(conn, CleanBatch(views=[view("v-1", moment)]))
            assert stored.views == 1
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"CREATE TABLE {role}_own (x int)")
        assert pipeline.query("SELECT messageid FROM product_views") == [("v-1",)]
    finally:
        with connect(pipeline.settings, autocommit=True) as owner:
            owner.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}")
            owner.execute(f"DROP ROLE {role}")


def test_a_stopped_prune_ends_after_its_step_and_records_no_cutoff(pipeline):
    """What the scheduler's stop does to its inline prune: the step in progress ends, the
    rest stays for the next prune, and no cutoff is recorded for what was not removed."""
    days = [CUTOFF - timedelta(days=n) for n in (3, 2, 1)]
    with connect(pipeline.settings) as conn:
        write_batch(conn, CleanBatch(views=[view(f"v-{d:%d}", d) for d in days]))
    stop = threading.Event()
    with connect(pipeline.settings, autocommit=True) as conn:
        result = prune(
            conn,
            cutoffs(retained(pipeline, events=90).settings, NOW),
            NOW,
            on_step=lambda doomed: stop.set(),
            stop=stop,
        )
    assert [d.partition.day for d in result.removed] == [days[0].date()]
    assert pipeline.query("SELECT messageid FROM product_views ORDER BY 1") == [
        (f"v-{d:%d}",) for d in days[1:]
    ]
    assert pipeline.query("SELECT count(*) FROM retention_cutoffs") == [(0,)]
