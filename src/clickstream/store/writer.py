"""Bulk writes of cleaned batches with COPY, exactly once, all in one transaction.

COPY is the fastest way into PostgreSQL but it has no ON CONFLICT. Almost every batch is
new, so rows are first COPied straight into their table under a savepoint, and their
messageids into the kind's key table (`view_messageids`, `order_messageids`), whose primary
key is what makes a messageid unique: the event tables are partitioned by day of event time,
and the same messageid may come back with another event time (a re-produced event is stamped
again), so no constraint on them could see it. Only when the key table meets a messageid
already stored (a redelivery after a crash or a rebalance, a re-sent event) does the batch
take the slower path: `INSERT ... ON CONFLICT DO NOTHING` of the staged batch's keys, and
the rows of exactly the keys that were new. That is what turns Kafka's at-least-once into
effectively-once. Rows and dead letters of a batch commit together, so the consumer can
commit its offsets the moment this returns.

An event is stored whole or not at all: an order whose `messageid` is stored already is
skipped whole, even when it comes back with more line items, since its key is there; within
one batch, the first event of a `messageid` wins.

The days a batch's rows fall in get their partitions first (store/partitions.py), in short
transactions of their own; a day that a prune removed meanwhile is created again.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from datetime import date
from typing import NamedTuple

import psycopg

from clickstream.ingest.cleaning import CleanBatch
from clickstream.store.derived import ORDER_LINE_DERIVATIONS, VIEW_DERIVATIONS, Derivation
from clickstream.store.erased import skip_erased
from clickstream.store.offsets import Marks
from clickstream.store.partitions import ensure_days

__all__ = ["NOTHING_WRITTEN", "WriteResult", "copy_views", "write_batch"]

_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS stage_product_views"
    ' (messageid text COLLATE "C", userid text, productid text, source text,'
    " viewed_at timestamptz) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS stage_order_lines"
    ' (messageid text COLLATE "C", line integer, orderid text, userid text, productid text,'
    " quantity integer, ordered_at timestamptz) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS stage_dead_letters"
    ' (topic text, partition integer, "offset" bigint, payload bytea, reason text,'
    " kafka_ms bigint) ON COMMIT DELETE ROWS",
)

_VIEW_COLUMNS = "messageid, userid, productid, source, viewed_at"
_ORDER_LINE_COLUMNS = "messageid, line, orderid, userid, productid, quantity, ordered_at"


@dataclass(frozen=True)
class _Target:
    """A table rows are stored into, its key table, and the derivations kept from its rows.

    `time` is the event-time column (its UTC day is the row's partition and its key's day);
    `first` picks one row per messageid (an order's first line).
    """

    table: str
    keys: str
    columns: str
    time: str
    first: str
    derivations: tuple[Derivation, ...]

    def copy(self, into: str) -> str:
        return f"COPY {into} ({self.columns}) FROM STDIN"

    def _key_rows(self) -> str:
        return (
            f"SELECT messageid, ({self.time} AT TIME ZONE 'UTC')::date"
            f" FROM stage_{self.table} WHERE {self.first}"
        )

    @property
    def insert_keys(self) -> str:
        """The fast path's keys: a unique violation here means a messageid is stored already."""
        return f"INSERT INTO {self.keys} (messageid, day) {self._key_rows()}"

    @property
    def merge(self) -> str:
        """Store the staged rows of new messageids; feed exactly those to the derivations."""
        keys = f"{self.insert_keys} ON CONFLICT (messageid) DO NOTHING RETURNING messageid"
        rows = (
            f"INSERT INTO {self.table} ({self.columns}) SELECT {self.columns}"
            f" FROM stage_{self.table} JOIN new_keys USING (messageid) RETURNING {self.columns}"
        )
        # How many rows and how many events (messageids) were new: a redelivery mixes both.
        return self._derive(rows, "count(*), count(DISTINCT messageid)", f"new_keys AS ({keys}), ")

    @property
    def derive_all_staged(self) -> str:
        """After a direct COPY every staged row is new: feed them all to the derivations."""
        return self._derive(f"SELECT {self.columns} FROM stage_{self.table}", "count(*)")

    def _derive(self, new_rows: str, counts: str, before: str = "") -> str:
        steps = "".join(f", {name} AS ({sql})" for name, sql in self.derivations)
        return (
            f"WITH {before}new_{self.table} AS ({new_rows}){steps}"
            f" SELECT {counts} FROM new_{self.table}"
        )


_VIEWS = _Target(
    "product_views", "view_messageids", _VIEW_COLUMNS, "viewed_at", "true", VIEW_DERIVATIONS
)
_ORDER_LINES = _Target(
    "order_lines",
    "order_messageids",
    _ORDER_LINE_COLUMNS,
    "ordered_at",
    "line = 1",
    ORDER_LINE_DERIVATIONS,
)
_MERGE_DEAD_LETTERS = (
    'INSERT INTO dead_letters (topic, partition, "offset", payload, reason, kafka_timestamp)'
    ' SELECT topic, partition, "offset", payload, reason, to_timestamp(kafka_ms / 1000.0)'
    " FROM stage_dead_letters"
    ' ON CONFLICT (topic, partition, "offset", payload_md5) DO NOTHING'
    " RETURNING topic, split_part(reason, ':', 1)"
)


class WriteResult(NamedTuple):
    """What one write stored: rows new to the database, dead letters, duplicates skipped;
    the orders those lines belong to, the events of erased users skipped, and each new dead
    letter's (topic, reason code), which the consumer's metrics count. Results add up field
    by field with `plus` (the reasons concatenate)."""

    views: int
    order_lines: int
    dead_letters: int
    duplicates: int
    orders: int = 0
    # Events of erased users skipped (store/erased.py): before the reasons, which a Spark
    # task's report sends last.
    erased_views: int = 0
    erased_orders: int = 0
    dead_letter_reasons: tuple[tuple[str, str], ...] = ()

    def plus(self, other: WriteResult) -> WriteResult:
        return WriteResult(*(a + b for a, b in zip(self, other, strict=True)))


NOTHING_WRITTEN = WriteResult(0, 0, 0, 0)


def _copy_text(rows) -> bytes:
    """Rows as COPY text. Cleaned strings hold no control characters, so a backslash is all
    COPY text needs escaped, and escaping the joined text escapes every value: one pass of
    `replace` over the batch instead of a call per value (a third of the cost, measured)."""
    if not rows:
        return b""
    try:
        text = "\n".join(["\t".join(row) for row in rows])
    except TypeError:  # order lines carry numbers
        text = "\n".join(
            ["\t".join([v if type(v) is str else str(v) for v in row]) for row in rows]
        )
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    return (text + "\n").encode()


def _first_of_each_order(lines: list) -> tuple[list, int]:
    """The lines of the first order event of each messageid in the batch, and how many
    events that is.

    Line numbers restart at 1 with each event, which is how a second event of the same
    messageid shows in the flat list of lines.
    """
    seen: set[str] = set()
    kept = []
    skipping = False
    for row in lines:
        if row[1] == 1:
            skipping = row[0] in seen
            seen.add(row[0])
        if not skipping:
            kept.append(row)
    return kept, len(seen)


def _first_of_each_view(views: list) -> list:
    """The first view event of each messageid in the batch."""
    seen: set[str] = set()
    kept = []
    for row in views:
        if row[0] not in seen:
            seen.add(row[0])
            kept.append(row)
    return kept if len(kept) < len(views) else views


def copy_views(cur: psycopg.Cursor, views: list) -> None:
    """A bare COPY of view rows into product_views: the ceiling the benchmark compares to."""
    with cur.copy(_VIEWS.copy("product_views")) as copy:
        copy.write(_copy_text(views))


def _store(cur: psycopg.Cursor, target: _Target, rows: list, events: int) -> tuple[int, int]:
    """Store the rows of `events` events once each; return how many rows and events were new."""
    data = _copy_text(rows)
    with cur.copy(target.copy(f"stage_{target.table}")) as copy:
        copy.write(data)
    try:
        with cur.connection.transaction():
            cur.execute(target.insert_keys)
            with cur.copy(target.copy(target.table)) as copy:
                copy.write(data)
    except psycopg.errors.UniqueViolation:
        # Some of these messageids are stored already: merge, skipping them.
        cur.execute(target.merge)
        row = cur.fetchone()
        return (row[0], row[1]) if row else (0, 0)
    cur.execute(target.derive_all_staged)
    return len(rows), events


# Days each connection knows to have partitions: a batch of known days costs no query.
_known_days: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _ensure_partitions(conn: psycopg.Connection, batch: CleanBatch) -> None:
    known = _known_days.setdefault(conn, set())
    # The derived tables of the rows are partitioned by the same days as the rows.
    wanted = {
        (table, date.fromisoformat(day))
        for tables, days in (
            (("product_views", "user_product_hours"), {row[4][:10] for row in batch.views}),
            (("order_lines", "report_buyers"), {row[6][:10] for row in batch.order_lines}),
        )
        for day in days
        for table in tables
    }
    missing = wanted - known
    for table in {table for table, _ in missing}:
        ensure_days(conn, table, {day for t, day in missing if t == table})
    known |= missing


def _is_missing_partition(exc: psycopg.Error) -> bool:
    """A day's partition went away after we saw it (a prune): create it again and retry."""
    return isinstance(exc, psycopg.errors.CheckViolation) and "no partition of relation" in str(exc)


def write_batch(
    conn: psycopg.Connection, batch: CleanBatch, marks: Marks | None = None
) -> WriteResult:
    """Store a cleaned batch durably and exactly once; raise the driver's error on failure.

    `marks`, the batch's offsets, are recorded in the same transaction (store/offsets.py).
    Called inside a transaction of the caller's, the batch is a savepoint of it: what it
    staged is cleared so the next batch of that transaction stages afresh.
    """
    try:
        _ensure_partitions(conn, batch)
        return _write_batch(conn, batch, marks)
    except psycopg.errors.CheckViolation as exc:
        if not _is_missing_partition(exc):
            raise
        _known_days.pop(conn, None)
        _ensure_partitions(conn, batch)
        return _write_batch(conn, batch, marks)


def _write_batch(conn: psycopg.Connection, batch: CleanBatch, marks: Marks | None) -> WriteResult:
    views = order_lines = orders = 0
    reasons: list[tuple[str, str]] = []
    nested = conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
    with conn.transaction(), conn.cursor() as cur:
        batch, erased = skip_erased(cur, batch)
        for statement in _STAGING:
            cur.execute(statement)
        if batch.views:
            first = _first_of_each_view(batch.views)
            views, _ = _store(cur, _VIEWS, first, len(first))
        if batch.order_lines:
            lines, events = _first_of_each_order(batch.order_lines)
            order_lines, orders = _store(cur, _ORDER_LINES, lines, events)
        if batch.rejects:
            with cur.copy(
                'COPY stage_dead_letters (topic, partition, "offset", payload, reason, kafka_ms)'
                " FROM STDIN"
            ) as copy:
                for reject in batch.rejects:
                    copy.write_row(reject)
            cur.execute(_MERGE_DEAD_LETTERS)
            reasons = cur.fetchall()
        if marks is not None:
            marks.record(cur)
        if nested:
            for table in ("product_views", "order_lines", "dead_letters"):
                cur.execute(f"DELETE FROM stage_{table}")
    duplicates = len(batch.views) - views + len(batch.order_lines) - order_lines
    return WriteResult(
        views, order_lines, len(reasons), duplicates, orders, *erased.counts, tuple(reasons)
    )
