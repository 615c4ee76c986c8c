"""`clickstream bench prune`: what pruning 30 days of a 60-day store costs a running ingest.

In a scratch database, views spread over the 60 days before today are generated inside
PostgreSQL (generate_series, with their messageid keys and user_product_hours, as the ingest
would have left them). A separate process then runs the ingest's writer flat out, batch
after batch of new views through `write_batch` (keys, partitions, derived tables and
counters, as in production). Its rate is measured over a stretch without pruning, then
during a prune of the oldest 30 days. Meanwhile another connection samples every 20 ms which
locks the prune's session holds on the event tables and whether the writer waits for a
lock, and each DDL statement is timed.
"""

from __future__ import annotations

import bisect
import dataclasses
import multiprocessing
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
from tqdm import tqdm

from clickstream.bench.scratch import scratch_database
from clickstream.config import Settings
from clickstream.ingest.cleaning import CleanBatch, ViewRow
from clickstream.ingest.event_time import format_timestamp
from clickstream.store.db import connect
from clickstream.store.derived import hour_bin
from clickstream.store.partitions import ensure_days, partition_name
from clickstream.store.retention import cutoffs, prune
from clickstream.store.writer import write_batch

__all__ = ["generate_stored", "run_prune_benchmark"]

SCRATCH_DATABASE = "clickstream_bench_prune"
DAYS = 60
PRUNED_DAYS = 30
_SAMPLE_SECONDS = 0.02
# Modes that stop an INSERT (ROW EXCLUSIVE) or a SELECT; SHARE UPDATE EXCLUSIVE, which
# ATTACH and DETACH ... CONCURRENTLY take on the parent, blocks neither.
_BLOCKING = {"ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"}
_EVENT_TABLES = (
    "product_views",
    "order_lines",
    "user_product_hours",
    "report_buyers",
    "view_messageids",
    "order_messageids",
)

_GENERATE_DAY = """
    INSERT INTO {partition} (messageid, userid, productid, source, viewed_at)
    SELECT gen_random_uuid()::text, 'user-' || (random() * %(users)s)::int,
           'product-' || (random() * %(products)s)::int,
           (ARRAY['desktop', 'ios', 'android', 'web'])[1 + n %% 4],
           %(start)s::timestamptz + n::bigint * %(step)s::bigint * interval '1 microsecond'
    FROM generate_series(0, %(rows)s - 1) AS n
"""


def generate_stored(url: str, views: int, today: datetime) -> None:
    """`views` views over the DAYS days before today, with their keys and derived rows."""
    per_day = views // DAYS
    with psycopg.connect(url, autocommit=True) as conn:
        days = [(today - timedelta(days=d)).date() for d in range(DAYS, 0, -1)]
        for table in ("product_views", "user_product_hours"):
            ensure_days(conn, table, set(days))
        for day in tqdm(days, desc="generating views", unit="day"):
            rows = per_day + (views % DAYS if day == days[-1] else 0)
            start = datetime.combine(day, datetime.min.time(), UTC)
            part = partition_name("product_views", day)
            conn.execute(
                _GENERATE_DAY.format(partition=part),
                {
                    "users": 100_000,
                    "products": 20_000,
                    "start": start,
                    "step": 86_400_000_000 // max(rows, 1),
                    "rows": rows,
                },
            )
            conn.execute(
                f"INSERT INTO view_messageids (messageid, day) SELECT messageid, %s FROM {part}",
                (day,),
            )
            conn.execute(
                f"INSERT INTO {partition_name('user_product_hours', day)}"
                " (userid, productid, hour, viewed_at)"
                f" SELECT userid, productid, {hour_bin('viewed_at')},"
                f" max(viewed_at) FROM {part} GROUP BY 1, 2, 3"
            )
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")


def _ingest(url: str, batch_size: int, stop, done) -> None:
    """Write batches of new views until stopped; report (monotonic time, rows) per batch."""
    with psycopg.connect(url) as conn:
        while not stop.is_set():
            now = format_timestamp(datetime.now(UTC))
            batch = CleanBatch(
                views=[
                    ViewRow(str(uuid.uuid4()), f"user-{n % 5000}", f"product-{n % 997}", "ios", now)
                    for n in range(batch_size)
                ]
            )
            written = write_batch(conn, batch)
            done.put((time.monotonic(), written.views, conn.info.backend_pid))


@dataclasses.dataclass
class _LockWatch:
    """Longest stretch each (table, mode) was held by the prune, and the writer waited."""

    longest: dict[tuple[str, str, str], float] = dataclasses.field(default_factory=dict)
    writer_waited: float = 0.0

    def run(self, url: str, prune_pid: int, writer_pid: int, stop: threading.Event) -> None:
        held: dict[tuple[str, str, str], float] = {}
        waiting_since: float | None = None
        with psycopg.connect(url, autocommit=True) as conn:
            while not stop.is_set():
                now = time.monotonic()
                rows = conn.execute(
                    "SELECT c.relname, coalesce(p.relname, c.relname), l.mode FROM pg_locks l"
                    " JOIN pg_class c ON c.oid = l.relation"
                    " LEFT JOIN pg_inherits i ON i.inhrelid = c.oid"
                    " LEFT JOIN pg_class p ON p.oid = i.inhparent"
                    " WHERE l.pid = %s AND l.granted"
                    " AND coalesce(p.relname, c.relname) = ANY(%s)",
                    (prune_pid, list(_EVENT_TABLES)),
                ).fetchall()
                current = set(rows)
                for key in current - held.keys():
                    held[key] = now
                for key in held.keys() - current:
                    self._close(key, now - held.pop(key))
                waits = conn.execute(
                    "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s",
                    (writer_pid,),
                ).fetchone()
                if waits and waits[0]:
                    waiting_since = waiting_since or now
                elif waiting_since is not None:
                    self.writer_waited = max(self.writer_waited, now - waiting_since)
                    waiting_since = None
                stop.wait(_SAMPLE_SECONDS)
            for key, since in held.items():
                self._close(key, time.monotonic() - since)

    def _close(self, key: tuple[str, str, str], seconds: float) -> None:
        self.longest[key] = max(self.longest.get(key, 0.0), seconds)

    def longest_blocking(self) -> tuple[str, float]:
        """The longest-held lock that would stop a write of the table or partition it is on."""
        blocking = {k: v for k, v in self.longest.items() if k[2] in _BLOCKING}
        if not blocking:
            return "none", 0.0
        (relation, table, mode), seconds = max(blocking.items(), key=lambda kv: kv[1])
        where = relation if relation == table else f"{relation}, a partition of {table}"
        return f"{mode} on {where}", seconds


def _rate(marks: list[tuple[float, int]], start: float, end: float) -> float:
    """Rows per second of the batches that finished within [start, end]."""
    times = [t for t, _ in marks]
    first, last = bisect.bisect_left(times, start), bisect.bisect_right(times, end)
    return sum(n for _, n in marks[first:last]) / max(end - start, 1e-9)


def run_prune_benchmark(settings: Settings, *, views: int, baseline_seconds: float) -> float:
    url = scratch_database(settings, SCRATCH_DATABASE)
    bench = dataclasses.replace(
        settings,
        database_url=url,
        retention_events_days=PRUNED_DAYS,
        retention_user_product_hours_days=PRUNED_DAYS,
        retention_dead_letters_days=0,
    )
    today = datetime.now(UTC)
    started = time.monotonic()
    generate_stored(url, views, today)
    print(f"generated {views:,} views over {DAYS} days in {time.monotonic() - started:.1f}s")

    ctx = multiprocessing.get_context("spawn")
    stop, done = ctx.Event(), ctx.Queue()
    writer = ctx.Process(target=_ingest, args=(url, settings.ingest_batch_size, stop, done))
    writer.start()
    marks: list[tuple[float, int]] = []
    first = done.get(timeout=300)
    marks.append(first[:2])
    writer_pid = first[2]
    watch, watching = _LockWatch(), threading.Event()
    with connect(bench, autocommit=True) as conn:
        # The sampler runs through both stretches, so that its own load weighs on both alike.
        sampler = threading.Thread(
            target=watch.run, args=(url, conn.info.backend_pid, writer_pid, watching)
        )
        sampler.start()
        baseline_start = time.monotonic()
        time.sleep(baseline_seconds)
        baseline_end = prune_start = time.monotonic()
        result = prune(conn, cutoffs(bench, today), today)
        prune_end = time.monotonic()
        watching.set()
        sampler.join()
    stop.set()
    while writer.is_alive() or not done.empty():
        try:
            marks.append(done.get(timeout=1)[:2])
        except Exception:  # queue.Empty: the writer finished its last batch
            if not writer.is_alive():
                break
    writer.join()
    marks.sort()

    without = _rate(marks, baseline_start, baseline_end)
    during = _rate(marks, prune_start, prune_end)
    parts = len([r for r in result.removed if r.partition is not None])
    statement, statement_seconds = result.longest_statement
    lock, lock_seconds = watch.longest_blocking()
    print(
        f"pruned {parts} day partitions and {sum(result.rows_deleted.values()):,} key rows;"
        f" slowest DDL statement {statement_seconds:.3f}s ({statement})"
    )
    print(
        f"longest lock held by prune on the event tables that blocks writes: {lock_seconds:.3f}s"
        f" ({lock}); longest ingest wait for a lock: {watch.writer_waited:.3f}s"
    )
    ratio = during / without
    print(
        f"prune {prune_end - prune_start:.1f}s, ingest {during:,.0f} events/s during the prune,"
        f" {without:,.0f} without, longest blocking lock {lock_seconds:.3f}s, ratio={ratio:.2f}"
    )
    return ratio
