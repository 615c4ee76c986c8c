"""`clickstream report --every-hour`: every closed hour reported once, late events included.

Each pass (at start, then every `poll` seconds):

1. Missed hours. Every hour after the last one this scheduler reported, up to the last
   complete hour, is written, once `delay` has passed since it closed (events still in
   flight at the top of the hour get that long to land). The last reported hour is kept in
   `report_runs`, so a scheduler that was stopped for a day writes the 24 hours on start and
   leaves no holes. On its very first start it writes the last complete hour only; older
   hours are a `clickstream report --hour` backfill away.
2. Late events. With each hour `report_runs` keeps how many views and order lines were
   stored for it when it was written. Those totals only grow, so an hour reported within the
   last `LATE_WINDOW` whose totals grew since has received late events: it is written again,
   replacing its files. Events later than that are stored but not re-reported by themselves.

One scheduler runs at a time per database (an advisory lock); a second one says so and exits.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from clickstream.config import Settings
from clickstream.errors import ClickstreamError, Unavailable
from clickstream.reports.hourly import ReportSummary, read_counts, write_counts
from clickstream.reports.hours import HOUR, hours_between, last_complete_hour, suffix
from clickstream.reports.queries import hour_totals
from clickstream.store.db import connect
from clickstream.store.faults import database_errors

__all__ = ["LATE_WINDOW", "REPORT_DELAY", "due_hours", "report_pass", "run_every_hour"]

log = logging.getLogger(__name__)

REPORT_DELAY = timedelta(minutes=2)
LATE_WINDOW = timedelta(hours=24)
_LOCK_ID = 0x636C6B72  # "clkr"
_PRIVILEGES = "SELECT (and INSERT, UPDATE if it is report_runs)"


def due_hours(last_reported: datetime | None, now: datetime, delay: timedelta) -> list[datetime]:
    """The hours to write now: those closed at least `delay` ago and after `last_reported`."""
    newest = last_complete_hour(now - delay)
    first = newest if last_reported is None else last_reported + HOUR
    return hours_between(first, newest)


def _stale_hours(conn: psycopg.Connection, now: datetime) -> list[datetime]:
    """Hours reported within LATE_WINDOW whose stored totals changed since."""
    recorded = {
        hour: (views, lines)
        for hour, views, lines in conn.execute(
            "SELECT hour, views, order_lines FROM report_runs WHERE hour >= %s",
            (last_complete_hour(now) - LATE_WINDOW,),
        )
    }
    if not recorded:
        return []
    current = hour_totals(conn, list(recorded))
    return sorted(h for h, totals in current.items() if totals != recorded[h])


def report_pass(
    conn: psycopg.Connection, out_dir: Path, now: datetime, delay: timedelta = REPORT_DELAY
) -> list[ReportSummary]:
    """Write every missed hour and every hour with late events; return what was written.

    `conn` is in autocommit mode: each hour is read in its own snapshot.
    """
    last = conn.execute("SELECT max(hour) FROM report_runs").fetchone()[0]
    hours = sorted(set(due_hours(last, now, delay)) | set(_stale_hours(conn, now)))
    written = []
    for hour in hours:
        counts, totals = read_counts(conn, hour)
        summary = write_counts(counts, hour, out_dir, totals)
        with conn.transaction():
            conn.execute(
                "INSERT INTO report_runs (hour, views, order_lines) VALUES (%s, %s, %s)"
                " ON CONFLICT (hour) DO UPDATE SET views = excluded.views,"
                " order_lines = excluded.order_lines, reported_at = now()",
                (hour, *totals),
            )
        again = " again (late events)" if last is not None and hour <= last else ""
        log.info(
            "reported %s%s: %d categories, %d views and %d order lines stored",
            suffix(hour),
            again,
            summary.categories,
            totals[0],
            totals[1],
        )
        written.append(summary)
    return written


def run_every_hour(
    settings: Settings,
    out_dir: Path,
    stop: threading.Event,
    *,
    poll: float = 60.0,
    delay: timedelta = REPORT_DELAY,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    on_report: Callable[[ReportSummary], None] = lambda summary: None,
) -> None:
    """Report passes until `stop` is set; a database fault is logged and retried.

    The pass itself is the retry: the next one, `poll` seconds later, writes whatever the
    failed one left unwritten.
    """
    conn: psycopg.Connection | None = None
    try:
        while True:
            try:
                if conn is None or conn.closed:
                    conn = _locked_connection(settings)
                with database_errors(role=conn.info.user, privileges=_PRIVILEGES):
                    for summary in report_pass(conn, out_dir, clock(), delay):
                        on_report(summary)
            except Unavailable as exc:
                log.warning("%s; retrying in %g s, hours not yet reported stay due", exc, poll)
                if conn is not None:
                    conn.close()
                conn = None
            if stop.wait(poll):
                return
    finally:
        if conn is not None and not conn.closed:
            conn.close()


def _locked_connection(settings: Settings) -> psycopg.Connection:
    conn = connect(settings, autocommit=True)
    locked = conn.execute("SELECT pg_try_advisory_lock(%s)", (_LOCK_ID,)).fetchone()[0]
    if not locked:
        conn.close()
        raise ClickstreamError("another `clickstream report --every-hour` runs on this database")
    return conn
