"""Retention: what `clickstream prune` (and the report scheduler, once a day) removes, and how.

Each kind of data is kept for whole UTC days, its setting's number of them before today:
with `retention.events_days: 90`, a prune on 2026-12-02 keeps every event from
2026-09-03T00:00:00.000Z on and drops everything before that instant. The counters and the
written reports are never pruned.

- Raw events and the per-user derived tables (`user_product_hours`, `report_buyers`) are
  partitioned by day (store/partitions.py): a day leaves whole, detached concurrently and
  dropped, which neither rewrites nor bloats anything and never blocks the ingest.
- The messageid key tables keep each messageid with the day of its rows; a day's keys are
  deleted after its rows, in one paced pass over the table, a few blocks per statement (a
  key is a few dozen bytes, and the space they leave is reused by the keys that follow, so
  the table stays at its retention's size).
- Dead letters are few: deleted in small batches by `received_at`.

Each prune records its cutoffs in `retention_cutoffs`, so `clickstream reconcile` tells a
pruned hour from a damaged one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from time import perf_counter

import psycopg
from psycopg import sql

from clickstream.config import Settings
from clickstream.store.partitions import (
    PARTITIONED,
    Partition,
    detached_by_us,
    drop_partition,
    ensure_days,
    finish_pending_detaches,
    partitions,
)

__all__ = [
    "DAYS_AHEAD",
    "Cutoffs",
    "Doomed",
    "PruneResult",
    "cutoffs",
    "plan",
    "prune",
    "pruned_before",
]

log = logging.getLogger(__name__)

DAYS_AHEAD = 2  # partitions exist for today and this many days after it
_CHUNK = 10_000  # rows per DELETE: each a short transaction with few row locks
_CHUNK_BLOCKS = 100  # heap blocks of a key table per DELETE: about _CHUNK keys
# After each DELETE, a pause this many times as long as it took: a prune's deletes use at
# most a quarter of a core, leaving the rest to the ingest (bench prune measures the effect).
_PAUSE_FACTOR = 3

# Which cutoff applies to each partitioned table.
_TABLE_KIND = {
    "product_views": "events",
    "order_lines": "events",
    "user_product_hours": "user_product_hours",
    "report_buyers": "user_product_hours",
}
_KEY_TABLES = {"view_messageids": "events", "order_messageids": "events"}


@dataclass(frozen=True)
class Cutoffs:
    """Per kind (`events`, `user_product_hours`, `dead_letters`): rows before this go."""

    by_kind: dict[str, datetime | None]

    def of(self, kind: str) -> datetime | None:
        return self.by_kind[kind]


def cutoffs(settings: Settings, now: datetime) -> Cutoffs:
    """00:00 UTC of the day `N` days before today, per kind; None where N is 0 (kept)."""
    today = now.astimezone(UTC).date()

    def before(days: int) -> datetime | None:
        return None if days == 0 else datetime.combine(today - timedelta(days=days), time(), UTC)

    return Cutoffs(
        {
            "events": before(settings.retention_events_days),
            "user_product_hours": before(settings.retention_user_product_hours_days),
            "dead_letters": before(settings.retention_dead_letters_days),
        }
    )


@dataclass(frozen=True)
class Doomed:
    """Something a prune removes: a day's partition, or rows of a table before a time."""

    table: str
    what: str
    rows: int
    partition: Partition | None = None

    @property
    def rows_text(self) -> str:
        """A day's rows are the planner's estimate (counting millions would be slow)."""
        return f"about {self.rows:,} rows" if self.partition else f"{self.rows:,} rows"


@dataclass
class PruneResult:
    removed: list[Doomed] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    statements: list[tuple[str, float]] = field(default_factory=list)
    rows_deleted: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """What was removed, one line each, with the rows it held or that were deleted."""
        found = []
        for item in self.removed:
            deleted = self.rows_deleted.get(item.table)
            rows = item.rows_text if deleted is None else f"{deleted:,} rows"
            found.append(f"{item.table} {item.what}: {rows}")
        return found

    @property
    def longest_statement(self) -> tuple[str, float]:
        return max(self.statements, key=lambda s: s[1], default=("", 0.0))


def _estimated_rows(conn: psycopg.Connection, name: str) -> int:
    """The planner's count when it has one (a day can hold millions), else a count."""
    estimate = conn.execute(
        "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)", (name,)
    ).fetchone()
    if estimate and estimate[0] >= 0:
        return estimate[0]
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))
    return conn.execute(query).fetchone()[0]


def _before(conn: psycopg.Connection, table: str, column: str, cutoff: datetime | date) -> int:
    query = sql.SQL("SELECT count(*) FROM {} WHERE {} < %s").format(
        sql.Identifier(table), sql.Identifier(column)
    )
    return conn.execute(query, (cutoff,)).fetchone()[0]


def plan(conn: psycopg.Connection, limits: Cutoffs) -> list[Doomed]:
    """What a prune with these cutoffs removes, oldest first per table."""
    doomed = []
    ours = detached_by_us(conn)
    for table, kind in _TABLE_KIND.items():
        cutoff = limits.of(kind)
        if cutoff is None:
            continue
        for part in partitions(conn, table):
            if part.detach_pending and part.name not in ours:
                continue  # someone else's detach: theirs to finish
            if part.day < cutoff.date() or part.detach_pending:
                rows = _estimated_rows(conn, part.name)
                doomed.append(Doomed(table, f"{part.day} ({part.name})", rows, part))
    for table, kind in _KEY_TABLES.items():
        cutoff = limits.of(kind)
        if cutoff is not None and (rows := _before(conn, table, "day", cutoff.date())):
            doomed.append(Doomed(table, f"messageids of days before {cutoff.date()}", rows))
    cutoff = limits.of("dead_letters")
    if cutoff is not None and (rows := _before(conn, "dead_letters", "received_at", cutoff)):
        doomed.append(Doomed("dead_letters", f"received before {cutoff:%Y-%m-%dT%H:%MZ}", rows))
    return doomed


def _delete_in_chunks(
    conn: psycopg.Connection,
    table: str,
    key: str,
    where: sql.Composed,
    stop: threading.Event,
) -> int:
    """DELETE the rows `where` picks, _CHUNK at a time, each chunk its own transaction.

    After each chunk it pauses (_PAUSE_FACTOR), so that however many rows a prune has to
    remove, it takes little from the ingest at any moment.
    """
    statement = sql.SQL(
        "DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} WHERE {where} LIMIT {chunk})"
    ).format(table=sql.Identifier(table), key=sql.Identifier(key), where=where, chunk=_CHUNK)
    deleted = 0
    while True:
        started = perf_counter()
        count = conn.execute(statement).rowcount
        deleted += count
        if count < _CHUNK or _pause_after(started, stop):
            return deleted


def _pause_after(started: float, stop: threading.Event) -> bool:
    """Pause _PAUSE_FACTOR times as long as the statement begun at `started` took; True if
    the prune was stopped meanwhile."""
    return stop.wait((perf_counter() - started) * _PAUSE_FACTOR)


def _delete_keys(conn: psycopg.Connection, table: str, cutoff: date, stop: threading.Event) -> int:
    """The keys of the days before `cutoff`, in one paced pass over the table's blocks.

    The key tables have no index on `day`: one would cost every stored event an index insert
    (migration 0013), to speed up this, which runs once a day. Each statement deletes the
    doomed keys of `_CHUNK_BLOCKS` heap blocks, found by a TID range scan that reads just
    those blocks, so a pass reads the table once whatever the days hold. A key stored while
    the pass runs may land in a block already passed: it is of a kept day, or, a late event
    of a pruned day, goes with the next prune.
    """
    blocks = conn.execute(
        "SELECT pg_relation_size(%s) / current_setting('block_size')::int", (table,)
    ).fetchone()[0]
    statement = sql.SQL(
        "DELETE FROM {} WHERE ctid >= %s::tid AND ctid < %s::tid AND day < %s"
    ).format(sql.Identifier(table))
    deleted = 0
    for first in range(0, blocks, _CHUNK_BLOCKS):
        started = perf_counter()
        bounds = (f"({first},0)", f"({first + _CHUNK_BLOCKS},0)")
        deleted += conn.execute(statement, (*bounds, cutoff)).rowcount
        if _pause_after(started, stop):
            break
    return deleted


def ensure_ahead(conn: psycopg.Connection, now: datetime) -> list[str]:
    """Partitions for today and DAYS_AHEAD days after it, so the ingest rarely makes one."""
    today = now.astimezone(UTC).date()
    days = {today + timedelta(days=i) for i in range(DAYS_AHEAD + 1)}
    return [f"{table} {day}" for table in PARTITIONED for day in ensure_days(conn, table, days)]


def prune(
    conn: psycopg.Connection,
    limits: Cutoffs,
    now: datetime,
    *,
    on_plan: Callable[[list[Doomed]], None] = lambda doomed: None,
    on_step: Callable[[Doomed], None] = lambda doomed: None,
    stop: threading.Event | None = None,
) -> PruneResult:
    """Remove what `plan` lists; `conn` must be in autocommit mode.

    Partitions go first, then the keys of their days: between the two, a re-sent messageid
    of a dropped day is still refused, never stored twice. A `stop` ends it after the step
    or chunk in progress; the cutoffs are then not recorded (the next prune finishes).
    """
    stop = stop or threading.Event()
    result = PruneResult(created=ensure_ahead(conn, now))
    for table in PARTITIONED:
        for name in finish_pending_detaches(conn, table):
            log.info("finished the interrupted detach of %s and dropped it", name)
    doomed_all = plan(conn, limits)
    on_plan(doomed_all)
    for doomed in doomed_all:
        if stop.is_set():
            log.info("prune stopped: %d of %d items removed", len(result.removed), len(doomed_all))
            return result
        if doomed.partition is not None:
            result.statements += drop_partition(conn, doomed.partition)
        elif doomed.table == "dead_letters":
            before = sql.SQL("received_at < {}").format(sql.Literal(limits.of("dead_letters")))
            result.rows_deleted[doomed.table] = _delete_in_chunks(
                conn, "dead_letters", "id", before, stop
            )
        else:
            cutoff = limits.of(_KEY_TABLES[doomed.table])
            assert cutoff is not None
            result.rows_deleted[doomed.table] = _delete_keys(
                conn, doomed.table, cutoff.date(), stop
            )
        result.removed.append(doomed)
        on_step(doomed)
    if stop.is_set():
        return result
    for kind, cutoff in limits.by_kind.items():
        if cutoff is not None:
            conn.execute(
                "INSERT INTO retention_cutoffs (name, pruned_before) VALUES (%s, %s)"
                " ON CONFLICT (name) DO UPDATE SET pruned_at = now(), pruned_before ="
                " greatest(retention_cutoffs.pruned_before, excluded.pruned_before)",
                (kind, cutoff),
            )
    return result


def pruned_before(conn: psycopg.Connection) -> dict[str, datetime]:
    """The cutoffs of past prunes, per kind: what lies before them is gone by design."""
    return dict(conn.execute("SELECT name, pruned_before FROM retention_cutoffs").fetchall())
