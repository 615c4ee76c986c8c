"""`clickstream report --every-hour`: every closed hour reported once, late events included.

Each pass (at start, then every `poll` seconds):

1. Missed hours. Every hour after the last one this scheduler reported, up to the last
   complete hour, is written, once `delay` has passed since it closed (events still in
   flight at the top of the hour get that long to land). The last reported hour is kept in
   `report_runs`, so a scheduler that was stopped for a day writes the 24 hours on start and
   leaves no holes. On its very first start it writes the last complete hour only; older
   hours are a `clickstream report --hour` backfill away.
2. Late events. With each hour `report_runs` keeps how many views and order lines were
   stored for it when it was written. An hour reported within the last `LATE_WINDOW` whose
   totals changed since has received late events (or lost an erased user's): it is written
   again, replacing its files. Events later than that are stored but not re-reported by
   themselves.
3. Catalog changes. An hour reported within `LATE_WINDOW` that counted a product whose
   catalog entry was added or changed after the hour was written is written again, so its
   files show the product under its category now. `clickstream catalog load` does the same
   at once (`rereport`).

3. Retention. At start and then once a day (`PRUNE_EVERY`) it prunes what is older than the
   retention settings and creates the next days' partitions (store/retention.py), so a
   deployment that runs the scheduler needs no cron job for `clickstream prune`.

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
from clickstream.errors import ClickstreamError, DatabaseFault, Unavailable
from clickstream.reports.hourly import ReportSummary, read_counts, write_counts
from clickstream.reports.hours import HOUR, hours_between, last_complete_hour, suffix
from clickstream.reports.queries import hour_totals
from clickstream.store.db import connect
from clickstream.store.faults import database_errors
from clickstream.store.retention import cutoffs, prune

__all__ = [
    "LATE_WINDOW",
    "PRUNE_EVERY",
    "REPORT_DELAY",
    "due_hours",
    "prune_pass",
    "report_pass",
    "rereport",
    "run_every_hour",
]

log = logging.getLogger(__name__)

REPORT_DELAY = timedelta(minutes=2)
LATE_WINDOW = timedelta(hours=24)
PRUNE_EVERY = timedelta(days=1)
_LOCK_ID = 0x636C6B72  # "clkr"
_NO_PRIVILEGE = "42501"
_PRIVILEGES = (
    "SELECT (and INSERT, UPDATE if it is report_runs; for the daily prune, ownership of the"
    " partitioned tables and DELETE on the key tables and dead_letters)"
)


def due_hours(last_reported: datetime | None, now: datetime, delay: timedelta) -> list[datetime]:
    """The hours to write now: those closed at least `delay` ago and after `last_reported`."""
    newest = last_complete_hour(now - delay)
    first = newest if last_reported is None else last_reported + HOUR
    return hours_between(first, newest)


# Hours reported since `since` that counted a product added to or moved in the catalog after
# they were written. Products changed since the oldest of those runs are few: they are found
# first, then looked up in the hours' counters by key.
_CATALOG_CHANGED = """
    WITH runs AS (SELECT hour, reported_at FROM report_runs WHERE hour >= %(since)s),
    changed AS (
        SELECT productid, updated_at FROM products
        WHERE updated_at > (SELECT min(reported_at) FROM runs)
    )
    SELECT DISTINCT runs.hour FROM runs JOIN changed ON changed.updated_at > runs.reported_at
    WHERE EXISTS (SELECT 1 FROM report_view_hours v
                  WHERE v.hour = runs.hour AND v.productid = changed.productid)
       OR EXISTS (SELECT 1 FROM report_order_hours o
                  WHERE o.hour = runs.hour AND o.productid = changed.productid)
"""


def _stale_hours(conn: psycopg.Connection, now: datetime) -> dict[datetime, str]:
    """Hours reported within LATE_WINDOW that changed since, with why."""
    since = last_complete_hour(now) - LATE_WINDOW
    recorded = {
        hour: (views, lines)
        for hour, views, lines in conn.execute(
            "SELECT hour, views, order_lines FROM report_runs WHERE hour >= %s", (since,)
        )
    }
    if not recorded:
        return {}
    stale = {
        hour: "catalog changed"
        for (hour,) in conn.execute(_CATALOG_CHANGED, {"since": since}).fetchall()
    }
    current = hour_totals(conn, list(recorded))
    stale |= {h: "late events" for h, totals in current.items() if totals != recorded[h]}
    return stale


def _write_hour(
    conn: psycopg.Connection, hour: datetime, out_dir: Path, why: str | None
) -> ReportSummary:
    """Write one hour and record it with the totals it saw and the time its read began."""
    (started,) = conn.execute("SELECT clock_timestamp()").fetchone()
    counts, totals = read_counts(conn, hour)
    summary = write_counts(counts, hour, out_dir, totals)
    with conn.transaction():
        conn.execute(
            "INSERT INTO report_runs (hour, views, order_lines, reported_at)"
            " VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (hour) DO UPDATE SET views = excluded.views,"
            " order_lines = excluded.order_lines, reported_at = excluded.reported_at",
            (hour, *totals, started),
        )
    log.info(
        "reported %s%s: %d categories, %d views and %d order lines stored",
        suffix(hour),
        f" again ({why})" if why else "",
        summary.categories,
        totals[0],
        totals[1],
    )
    return summary


def report_pass(
    conn: psycopg.Connection, out_dir: Path, now: datetime, delay: timedelta = REPORT_DELAY
) -> list[ReportSummary]:
    """Write every missed hour and every hour with late events; return what was written.

    `conn` is in autocommit mode: each hour is read in its own snapshot.
    """
    last = conn.execute("SELECT max(hour) FROM report_runs").fetchone()[0]
    stale = _stale_hours(conn, now)
    hours = sorted(set(due_hours(last, now, delay)) | set(stale))
    return [_write_hour(conn, hour, out_dir, stale.get(hour)) for hour in hours]


def rereport(conn: psycopg.Connection, out_dir: Path, now: datetime) -> list[ReportSummary]:
    """Write again the hours reported within LATE_WINDOW that changed since (catalog or
    events), and only those; `conn` in autocommit mode."""
    stale = _stale_hours(conn, now)
    return [_write_hour(conn, hour, out_dir, stale[hour]) for hour in sorted(stale)]


def prune_pass(
    conn: psycopg.Connection,
    settings: Settings,
    now: datetime,
    stop: threading.Event | None = None,
) -> None:
    """Apply the retention settings (`conn` in autocommit mode) and log what went; a `stop`
    ends it between two steps."""
    result = prune(conn, cutoffs(settings, now), now, stop=stop)
    for line in result.lines():
        log.info("pruned %s", line)
    statement, seconds = result.longest_statement
    log.info(
        "retention applied: %d items removed, %d partitions created ahead%s",
        len(result.removed),
        len(result.created),
        f", longest statement {seconds:.3f}s" if statement else "",
    )


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
    pruned_at: datetime | None = None
    try:
        while True:
            try:
                if conn is None or conn.closed:
                    conn = _locked_connection(settings)
                with database_errors(role=conn.info.user, privileges=_PRIVILEGES):
                    for summary in report_pass(conn, out_dir, clock(), delay):
                        on_report(summary)
                now = clock()
                if not stop.is_set() and (pruned_at is None or now - pruned_at >= PRUNE_EVERY):
                    _daily_prune(conn, settings, now, stop)
                    pruned_at = now
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


def _daily_prune(
    conn: psycopg.Connection, settings: Settings, now: datetime, stop: threading.Event
) -> None:
    """The daily prune. A role that may not prune (not the tables' owner) is told once a
    day, not at every pass: the reports go on, the prune waits for a role that may."""
    try:
        with database_errors(role=conn.info.user, privileges=_PRIVILEGES):
            prune_pass(conn, settings, now, stop)
    except DatabaseFault as exc:
        if exc.sqlstate != _NO_PRIVILEGE:
            raise
        log.warning("%s; the daily prune is tried again in %s", exc, PRUNE_EVERY)


def _locked_connection(settings: Settings) -> psycopg.Connection:
    conn = connect(settings, autocommit=True)
    locked = conn.execute("SELECT pg_try_advisory_lock(%s)", (_LOCK_ID,)).fetchone()[0]
    if not locked:
        conn.close()
        raise ClickstreamError("another `clickstream report --every-hour` runs on this database")
    return conn
