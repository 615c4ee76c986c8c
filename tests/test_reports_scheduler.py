"""The scheduler: every closed hour once, missed hours caught up, late events re-reported.

Timeline (UTC, 2026-11-24), one view per hour from 08 to 13:

    08  09  10  11  12  13  14  15  16  17
    v   v   v   v   v   v                   views stored
                        ^ first start at 14:03: writes 13 only
                                    ^ restart at 17:03: writes 14, 15, 16 (missed)
    + a late view for 15 -> the next pass writes 15 again, nothing else
"""

from __future__ import annotations

import signal
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from test_reports import store, view

from clickstream.errors import ClickstreamError
from clickstream.ingest.cleaning import CleanBatch, ViewRow
from clickstream.ingest.event_time import format_timestamp
from clickstream.reports.hours import hours_between
from clickstream.reports.scheduler import due_hours, report_pass, run_every_hour
from clickstream.store.catalog import upsert_products
from clickstream.store.db import connect
from clickstream.store.writer import write_batch

DAY = datetime(2026, 11, 24, tzinfo=UTC)
DELAY = timedelta(minutes=2)


def at(hour: int, minute: int = 0) -> datetime:
    return DAY + timedelta(hours=hour, minutes=minute)


def test_due_hours_waits_for_the_delay_and_starts_after_the_last_reported():
    assert due_hours(None, at(14, 3), DELAY) == [at(13)]
    assert due_hours(None, at(14, 1), DELAY) == [at(12)]
    assert due_hours(at(13), at(14, 1), DELAY) == []
    assert due_hours(at(13), at(17, 3), DELAY) == [at(14), at(15), at(16)]


@pytest.fixture
def hours_stored(pipeline):
    with connect(pipeline.settings) as conn:
        upsert_products(conn, [("product-1", "category-1"), ("product-2", "category-1")])
    store(pipeline.settings, [view(f"user-{h}", "product-1", at(h, 30)) for h in range(8, 14)])
    return pipeline


def _written(out) -> list[str]:
    return sorted(p.name.removeprefix("conversion_rates_") for p in out.glob("conversion_*"))


def test_catch_up_writes_exactly_the_missed_hours_and_late_ones_again(hours_stored, tmp_path):
    out = tmp_path / "reports"
    with connect(hours_stored.settings, autocommit=True) as conn:
        first = report_pass(conn, out, at(14, 3), DELAY)
        assert [s.hour for s in first] == [at(13)]
        assert _written(out) == ["2026-11-24T13.csv"]
        assert report_pass(conn, out, at(14, 50), DELAY) == []

        restarted = report_pass(conn, out, at(17, 3), DELAY)
        assert [s.hour for s in restarted] == [at(14), at(15), at(16)]
        assert _written(out) == [f"2026-11-24T{h}.csv" for h in range(13, 17)]
        empty = (out / "conversion_rates_2026-11-24T15.csv").read_bytes()
        assert empty == b"category,views,purchases,conversion_rate\n"

        store(hours_stored.settings, [view("user-late", "product-2", at(15, 59))])
        late = report_pass(conn, out, at(17, 10), DELAY)
        assert [s.hour for s in late] == [at(15)]
        assert (out / "conversion_rates_2026-11-24T15.csv").read_text() == (
            "category,views,purchases,conversion_rate\ncategory-1,1,0,0.0000\n"
        )
        assert report_pass(conn, out, at(17, 20), DELAY) == []

        # Late events for an hour the scheduler never reported, or reported more than a day
        # ago, do not trigger a rewrite; a backfill with `report --hour` covers them.
        store(hours_stored.settings, [view("user-late", "product-2", at(9, 10))])
        assert report_pass(conn, out, at(17, 30), DELAY) == []
        store(hours_stored.settings, [view("user-later", "product-2", at(13, 10))])
        assert [s.hour for s in report_pass(conn, out, at(17, 40), DELAY)] == [at(13)]
        store(hours_stored.settings, [view("user-latest", "product-2", at(13, 20))])
        two_days_later = report_pass(conn, out, at(17, 3) + timedelta(days=2), DELAY)
        assert [s.hour for s in two_days_later] == hours_between(at(17), at(16) + timedelta(days=2))


def test_only_one_scheduler_runs_per_database(hours_stored, tmp_path):
    stop = threading.Event()
    clock = lambda: at(14, 3)  # noqa: E731
    runner = threading.Thread(
        target=run_every_hour,
        args=(hours_stored.settings, tmp_path, stop),
        kwargs={"poll": 0.1, "clock": clock},
    )
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "conversion_rates_2026-11-24T13.csv").exists():
            assert time.monotonic() < deadline, "the scheduler wrote nothing"
            time.sleep(0.05)
        with pytest.raises(ClickstreamError, match="another"):
            run_every_hour(hours_stored.settings, tmp_path, threading.Event(), clock=clock)
    finally:
        stop.set()
        runner.join(timeout=10)
    assert not runner.is_alive()


def test_every_hour_command_reports_and_stops_on_sigterm(pipeline, tmp_path):
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-m", "clickstream", "report", "--every-hour", "--out", str(tmp_path)],
        env=pipeline.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob("conversion_rates_*.csv")):
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "no report written"
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "wrote " in stdout and "conversion_rates_" in stdout


def test_a_role_that_may_not_prune_is_told_once_a_day_and_the_reports_go_on(
    hours_stored, tmp_path, caplog
):
    """Not the tables' owner: the daily prune is refused. It says so once, then waits for
    the next day, instead of trying again (and warning) at every pass."""
    import dataclasses
    import logging
    import uuid

    import psycopg.conninfo

    settings = hours_stored.settings
    role = f"reports_{uuid.uuid4().hex[:8]}"
    with connect(settings, autocommit=True) as owner:
        old = format_timestamp(DAY - timedelta(days=200))
        write_batch(owner, CleanBatch(views=[ViewRow("v-old", "u", "product-1", "web", old)]))
        owner.execute(f"CREATE ROLE {role} LOGIN")
        owner.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"
        )
        owner.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}")
    url = psycopg.conninfo.make_conninfo(settings.database_url, user=role)
    limited = dataclasses.replace(settings, database_url=url)
    caplog.set_level(logging.WARNING, logger="clickstream.reports.scheduler")
    stop = threading.Event()
    runner = threading.Thread(
        target=run_every_hour,
        args=(limited, tmp_path, stop),
        kwargs={"poll": 0.05, "clock": lambda: at(14, 3)},
    )
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "conversion_rates_2026-11-24T13.csv").exists():
            assert time.monotonic() < deadline, "the scheduler wrote nothing"
            time.sleep(0.05)
        time.sleep(1.5)  # some thirty passes more
    finally:
        stop.set()
        runner.join(timeout=30)
        with connect(settings, autocommit=True) as owner:
            owner.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}")
            owner.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {role}")
            owner.execute(f"DROP ROLE {role}")
    assert not runner.is_alive()
    refused = [r.getMessage() for r in caplog.records if "must be owner" in r.getMessage()]
    assert len(refused) == 1, refused
    assert refused[0].endswith("; the daily prune is tried again in 1 day, 0:00:00")
    assert hours_stored.query("SELECT count(*) FROM clickstream_detached") == [(0,)]
