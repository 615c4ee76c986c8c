"""Reconcile on a real database: damage the derived tables, find it, fix it, find nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

from clickstream.ingest.cleaning import CleanBatch, OrderLineRow, ViewRow
from clickstream.ingest.event_time import format_timestamp
from clickstream.lifecycle.reconcile import Window, repair, windows
from clickstream.store.db import connect
from clickstream.store.recompute import DERIVED_TABLES, differences
from clickstream.store.retention import cutoffs, prune
from clickstream.store.writer import write_batch

H1 = datetime(2026, 12, 1, 10, tzinfo=UTC)
H2 = H1 + timedelta(hours=1)


def views_and_orders(hour: datetime, tag: str) -> CleanBatch:
    at = format_timestamp(hour + timedelta(minutes=7))
    return CleanBatch(
        views=[
            ViewRow(f"{tag}-v{n}", f"user-{n % 3}", f"product-{n % 2}", "ios", at) for n in range(6)
        ],
        order_lines=[OrderLineRow(f"{tag}-o1", 1, "9", "user-1", "product-1", 2, at)],
    )


def test_reconcile_finds_a_bad_counter_and_a_missing_row_fixes_both_then_finds_nothing(
    pipeline,
):
    with connect(pipeline.settings) as conn:
        write_batch(conn, views_and_orders(H1, "a"))
        write_batch(conn, views_and_orders(H2, "b"))
        clean = conn.execute("SELECT * FROM report_view_hours ORDER BY 1, 2").fetchall()
        uph = conn.execute("SELECT * FROM user_product_hours ORDER BY 1, 2, 3").fetchall()
        conn.execute(
            "UPDATE report_view_hours SET views = views + 5"
            " WHERE hour = %s AND productid = 'product-1'",
            (H1,),
        )
        conn.execute(
            "DELETE FROM user_product_hours"
            " WHERE userid = 'user-2' AND productid = 'product-0' AND hour = %s",
            (H2,),
        )
        conn.commit()

    found = pipeline.cli("reconcile")
    assert found.returncode == 1, found.stderr
    lines = found.stdout.splitlines()
    assert "2026-12-01T10 report_view_hours product-1: stored views=8, viewers=3," in (
        "".join(line for line in lines if "report_view_hours" in line)
    )
    assert [line for line in lines if "user_product_hours" in line] == [
        "2026-12-01T11 user_product_hours user-2 product-0: stored no row,"
        " recomputed viewed_at=2026-12-01T11:07:00.000Z"
    ]
    assert lines[-1] == "2 differences in 2 of 2 hours checked"

    fixed = pipeline.cli("reconcile", "--since", "2026-12-01T00", "--fix")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "repaired 2 differences in 2 hours" in fixed.stdout

    again = pipeline.cli("reconcile", "--hour", "2026-12-01T11")
    assert again.returncode == 0, again.stdout
    assert again.stdout.splitlines()[-1] == "0 differences in 0 of 1 hours checked"
    assert pipeline.query("SELECT * FROM report_view_hours ORDER BY 1, 2") == clean
    assert [
        row[:4] for row in pipeline.query("SELECT * FROM user_product_hours ORDER BY 1, 2, 3")
    ] == [row[:4] for row in uph]


def test_hours_whose_raw_events_were_pruned_are_reported_as_pruned(pipeline):
    now = datetime.now(UTC)
    old = (now - timedelta(days=120)).replace(minute=0, second=0, microsecond=0)
    recent = (now - timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    with connect(pipeline.settings) as conn:
        write_batch(conn, views_and_orders(old, "old"))
        write_batch(conn, views_and_orders(recent, "new"))
    with connect(pipeline.settings, autocommit=True) as conn:
        prune(conn, cutoffs(pipeline.settings, now), now)
    assert pipeline.query("SELECT count(*) FROM product_views WHERE viewed_at < %s", (recent,)) == [
        (0,)
    ]
    # The old hour's counters are kept, and nothing recomputes them any more.
    assert pipeline.query("SELECT sum(views) FROM report_view_hours WHERE hour = %s", (old,)) == [
        (6,)
    ]

    everything = pipeline.cli("reconcile")
    assert everything.returncode == 0, everything.stdout
    assert f"pruned: {0:,}" not in everything.stdout
    first = everything.stdout.splitlines()[0]
    assert first.startswith("pruned: ") and f"from {old:%Y-%m-%dT%H} to" in first
    assert "removed by retention; not checked" in first
    assert everything.stdout.splitlines()[-1].startswith("0 differences in 0 of ")

    one = pipeline.cli("reconcile", "--hour", f"{old:%Y-%m-%dT%H}", "--fix")
    assert one.returncode == 0, one.stdout
    assert one.stdout.splitlines() == [
        f"pruned: 1 hours from {old:%Y-%m-%dT%H} to {old:%Y-%m-%dT%H}, their raw events"
        " removed by retention; not checked",
        "0 differences in 0 of 0 hours checked",
    ]

    bad = pipeline.cli("reconcile", "--hour", "2026-13-01T00")
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1


def test_hours_split_into_pruned_counters_only_and_everything():
    """events pruned before day 3, user_product_hours before day 5, asked for days 1 to 8:

    day 1        3                5                  8
        | pruned | counters only  | every table      |
    """
    day = lambda n: datetime(2026, 12, n, tzinfo=UTC)  # noqa: E731
    cut = {"events": day(3), "user_product_hours": day(5), "dead_letters": day(7)}
    pruned, checkable = windows(day(1), day(8), cut)
    assert pruned == Window(day(1), day(3), ())
    assert checkable == [
        Window(day(3), day(5), ("report_view_hours", "report_order_hours")),
        Window(day(5), day(8), tuple(t.name for t in DERIVED_TABLES)),
    ]
    assert windows(day(1), day(2), cut) == (Window(day(1), day(2), ()), [])
    assert windows(day(6), day(7), {}) == (
        None,
        [Window(day(6), day(7), tuple(t.name for t in DERIVED_TABLES))],
    )


def test_a_repair_sees_a_batch_a_consumer_committed_after_the_check(pipeline):
    """Damage as a lost batch leaves it (a user_product_hours row gone, its viewer taken
    off the counter). A consumer stores a view of that (user, product, hour) after the check
    found the damage and before the repair: the batch itself restores the row and raises the
    counter, and the repair, which checks the hour again with the ingest held, must not
    raise it a second time."""
    with connect(pipeline.settings) as conn:
        write_batch(conn, views_and_orders(H2, "b"))
        conn.execute(
            "DELETE FROM user_product_hours"
            " WHERE userid = 'user-2' AND productid = 'product-0' AND hour = %s",
            (H2,),
        )
        conn.execute(
            "UPDATE report_view_hours SET viewers = viewers - 1"
            " WHERE hour = %s AND productid = 'product-0'",
            (H2,),
        )
        conn.commit()
    with connect(pipeline.settings, autocommit=True) as conn:
        found = differences(conn)
        assert {d.table for d in found} == {"user_product_hours", "report_view_hours"}
        event = {
            "event": "ProductView",
            "messageid": "late-b",
            "userid": "user-2",
            "properties": {"productid": "product-0"},
            "context": {"source": "web"},
            "timestamp": format_timestamp(H2 + timedelta(minutes=30)),
        }
        pipeline.produce_views([orjson.dumps(event)], keep_timestamps=True)
        assert pipeline.consume().views == 1  # a real consumer, between check and repair
        repaired = repair(conn, found)
        assert differences(conn) == []
    assert repaired == {H2: 0}  # the batch repaired it: nothing left to do
    assert pipeline.query(
        "SELECT views, viewers FROM report_view_hours WHERE hour = %s AND productid = 'product-0'",
        (H2,),
    ) == [(4, 3)]
