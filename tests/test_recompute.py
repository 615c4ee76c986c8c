"""Derived tables recomputed from the raw events: equal after ingest, every tampering found."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg

from clickstream.generate import generate
from clickstream.store.recompute import DERIVED_TABLES, Difference, differences, recomputed


def test_ingest_keeps_every_derived_table_equal_to_its_recomputation(pipeline):
    data = generate(users=40, products=30, categories=4, views=2000, orders=200, seed=41)
    pipeline.produce_views(data.views)
    pipeline.produce_orders(data.orders)
    pipeline.consume()

    with psycopg.connect(pipeline.settings.database_url) as conn:
        assert differences(conn) == []
        for table in DERIVED_TABLES:
            stored = conn.execute(f"SELECT count(*) FROM {table.name}").fetchone()[0]
            assert stored > 0, table.name
            assert len(recomputed(conn, table.name)) == stored, table.name


def test_every_kind_of_drift_is_reported_in_its_hours_only(pipeline):
    hour = datetime(2026, 11, 24, 13, tzinfo=UTC)
    earlier = hour - timedelta(hours=1)
    with psycopg.connect(pipeline.settings.database_url) as conn:
        from clickstream.store.partitions import PARTITIONED, ensure_days
        from clickstream.store.schema import migrate

        migrate(conn)
        # Rows written by hand need their day's partitions; the writer makes its own.
        for table in PARTITIONED:
            ensure_days(conn, table, {hour.date()})
        conn.execute(
            "INSERT INTO product_views (messageid, userid, productid, source, viewed_at) VALUES"
            " ('m1', 'u1', 'p1', 'ios', %(h)s + interval '5 min'),"
            " ('m2', 'u1', 'p1', 'ios', %(h)s + interval '50 min'),"
            " ('m3', 'u2', 'p1', 'ios', %(e)s + interval '1 min')",
            {"h": hour, "e": earlier},
        )
        conn.execute(
            "INSERT INTO order_lines (messageid, line, orderid, userid, productid, quantity,"
            " ordered_at) VALUES ('o1', 1, 'o', 'u1', 'p1', 1, %(h)s + interval '55 min')",
            {"h": hour},
        )
        # What ingest would have derived, with one slip in each table.
        conn.execute(
            "INSERT INTO user_product_hours VALUES ('u1', 'p1', %(h)s, %(h)s + interval '5 min')",
            {"h": hour},
        )  # not the latest view of the hour; u2's row of the hour before is missing
        conn.execute(
            "INSERT INTO report_view_hours VALUES (%(h)s, 'p1', 2, 1), (%(e)s, 'p1', 1, 2)",
            {"h": hour, "e": earlier},
        )  # the hour before counts a viewer twice
        conn.execute(
            "INSERT INTO report_buyers VALUES (%(h)s, 'p1', 'u1'), (%(h)s, 'p1', 'u9')",
            {"h": hour},
        )  # a buyer who never ordered
        # report_order_hours: the hour's counter is missing altogether

        found = differences(conn)
        assert found == [
            Difference("user_product_hours", ("u1", "p1", hour), (hour + timedelta(minutes=5),),
                       (hour + timedelta(minutes=50),)),
            Difference("user_product_hours", ("u2", "p1", earlier), None,
                       (earlier + timedelta(minutes=1),)),
            Difference("report_view_hours", (earlier, "p1"), (1, 2), (1, 1)),
            Difference("report_buyers", (hour, "p1", "u9"), (), None),
            Difference("report_order_hours", (hour, "p1"), None, (1, 1)),
        ]  # fmt: skip
        only_hour = differences(conn, (hour, hour + timedelta(hours=1)))
        assert only_hour == [d for d in found if hour in d.key]
        assert differences(conn, (earlier, hour), tables=("report_view_hours",)) == [found[2]]
        assert str(found[2]).startswith("report_view_hours (")
