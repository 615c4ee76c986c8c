"""Bulk writes of cleaned batches with COPY, exactly once, all in one transaction.

COPY is the fastest way into PostgreSQL but it has no ON CONFLICT. Almost every batch is
new, so rows are first COPied straight into their table under a savepoint. Only when that
meets a key already stored (a redelivery after a crash or a rebalance) does the batch take
the slower path: COPY into a session-local staging table, then `INSERT ... ON CONFLICT DO
NOTHING`, which makes a redelivered `messageid` a no-op. That is what turns Kafka's
at-least-once into effectively-once. Rows and dead letters of a batch commit together, so the
consumer can commit its offsets the moment this returns.

An order is stored whole or not at all: an order whose `messageid` is stored already is
skipped whole, even when it comes back with more line items. Every stored order has its
line 1, so such an order always meets a stored key and takes the merge, which skips every
line of a stored `messageid`; within one batch, the first event of a `messageid` wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import psycopg

from clickstream.events import CleanBatch
from clickstream.store.derived import ORDER_LINE_DERIVATIONS, VIEW_DERIVATIONS, Derivation

__all__ = ["WriteResult", "write_batch", "copy_views"]

_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS stage_product_views"
    " (messageid text, userid text, productid text, source text, viewed_at timestamptz)"
    " ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS stage_order_lines"
    " (messageid text, line integer, orderid text, userid text, productid text,"
    " quantity integer, ordered_at timestamptz) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS stage_dead_letters"
    ' (topic text, partition integer, "offset" bigint, payload bytea, reason text,'
    " kafka_ms bigint) ON COMMIT DELETE ROWS",
)

_VIEW_COLUMNS = "messageid, userid, productid, source, viewed_at"
_ORDER_LINE_COLUMNS = "messageid, line, orderid, userid, productid, quantity, ordered_at"


@dataclass(frozen=True)
class _Target:
    """A table rows are stored into, and the statements that keep its derivations current."""

    table: str
    columns: str
    key: str
    derivations: tuple[Derivation, ...]
    # Extra condition of the merge on the staged rows, e.g. to skip whole stored events.
    new_only: str = ""

    def copy(self, into: str) -> str:
        return f"COPY {into} ({self.columns}) FROM STDIN"

    @property
    def merge(self) -> str:
        """INSERT the staged rows that are new; feed exactly those to the derivations."""
        insert = (
            f"INSERT INTO {self.table} ({self.columns}) SELECT {self.columns}"
            f" FROM stage_{self.table} {self.new_only} ON CONFLICT ({self.key}) DO NOTHING"
        )
        if not self.derivations:
            return insert
        # How many rows and how many events (messageids) were new: a redelivery mixes both.
        return self._derive(
            f"{insert} RETURNING {self.columns}", "count(*), count(DISTINCT messageid)"
        )

    @property
    def derive_all_staged(self) -> str:
        """After a direct COPY every staged row is new: feed them all to the derivations."""
        return self._derive(f"SELECT {self.columns} FROM stage_{self.table}", "count(*)")

    def _derive(self, new_rows: str, counts: str) -> str:
        steps = "".join(f", {name} AS ({sql})" for name, sql in self.derivations)
        return f"WITH new_{self.table} AS ({new_rows}){steps} SELECT {counts} FROM new_{self.table}"


_VIEWS = _Target("product_views", _VIEW_COLUMNS, "messageid", VIEW_DERIVATIONS)
_ORDER_LINES = _Target(
    "order_lines",
    _ORDER_LINE_COLUMNS,
    "messageid, line",
    ORDER_LINE_DERIVATIONS,
    "WHERE NOT EXISTS (SELECT FROM order_lines stored"
    " WHERE stored.messageid = stage_order_lines.messageid)",
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
    the orders those lines belong to and each new dead letter's (topic, reason code), which
    the consumer's metrics count. Results add up field by field (tuples concatenate)."""

    views: int
    order_lines: int
    dead_letters: int
    duplicates: int
    orders: int = 0
    dead_letter_reasons: tuple[tuple[str, str], ...] = ()


def _escape(value: str) -> str:
    # Cleaned strings hold no control characters, so a backslash is all COPY text needs escaped.
    return value.replace("\\", "\\\\") if "\\" in value else value


def _copy_text(rows) -> bytes:
    lines = ["\t".join([_escape(v) if type(v) is str else str(v) for v in row]) for row in rows]
    lines.append("")
    return "\n".join(lines).encode()


def _first_of_each_order(lines: list) -> list:
    """The lines of the first order event of each messageid in the batch.

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
    return kept


def copy_views(cur: psycopg.Cursor, views: list) -> None:
    """A bare COPY of view rows into product_views: the ceiling the benchmark compares to."""
    with cur.copy(_VIEWS.copy("product_views")) as copy:
        copy.write(_copy_text(views))


def _store(cur: psycopg.Cursor, target: _Target, rows: list, events: int) -> tuple[int, int]:
    """Store the rows of `events` events once each; return how many rows and events were new."""
    data = _copy_text(rows)
    staged = False
    if target.derivations:
        with cur.copy(target.copy(f"stage_{target.table}")) as copy:
            copy.write(data)
        staged = True
    try:
        with cur.connection.transaction(), cur.copy(target.copy(target.table)) as copy:
            copy.write(data)
    except psycopg.errors.UniqueViolation:
        # Some of these rows are stored already: merge, skipping them.
        if not staged:
            with cur.copy(target.copy(f"stage_{target.table}")) as copy:
                copy.write(data)
        cur.execute(target.merge)
        if target.derivations:
            row = cur.fetchone()
            return (row[0], row[1]) if row else (0, 0)
        return cur.rowcount, cur.rowcount
    if target.derivations:
        cur.execute(target.derive_all_staged)
    return len(rows), events


def write_batch(conn: psycopg.Connection, batch: CleanBatch) -> WriteResult:
    """Store a cleaned batch durably and exactly once; raise the driver's error on failure.

    Called inside a transaction of the caller's, the batch is a savepoint of it: what it
    staged is cleared so the next batch of that transaction stages afresh.
    """
    views = order_lines = orders = 0
    reasons: list[tuple[str, str]] = []
    nested = conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
    with conn.transaction(), conn.cursor() as cur:
        for statement in _STAGING:
            cur.execute(statement)
        if batch.views:
            views, _ = _store(cur, _VIEWS, batch.views, len(batch.views))
        if batch.order_lines:
            lines = _first_of_each_order(batch.order_lines)
            events = sum(1 for row in lines if row[1] == 1)
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
        if nested:
            for table in ("product_views", "order_lines", "dead_letters"):
                cur.execute(f"DELETE FROM stage_{table}")
    duplicates = len(batch.views) - views + len(batch.order_lines) - order_lines
    return WriteResult(views, order_lines, len(reasons), duplicates, orders, tuple(reasons))
