"""Bulk writes of cleaned batches: COPY into staging, then merge, all in one transaction.

COPY is the fastest way into PostgreSQL but it has no ON CONFLICT. Rows are copied into
session-local staging tables and merged with `INSERT ... ON CONFLICT DO NOTHING`, which makes
a redelivered `messageid` a no-op: that is what turns Kafka's at-least-once into
effectively-once. Rows and dead letters of a batch commit together, so the consumer can
commit its offsets the moment this returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from clickstream.events import CleanBatch
from clickstream.store.derived import ORDER_LINE_DERIVATIONS, VIEW_DERIVATIONS

__all__ = ["WriteResult", "write_batch", "copy_views"]

_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS stage_product_views"
    " (messageid text, userid text, productid text, source text, viewed_at timestamptz)"
    " ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS stage_order_lines"
    " (messageid text, line integer, orderid text, userid text, productid text,"
    " quantity integer, ordered_at timestamptz) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS stage_dead_letters"
    ' (topic text, partition integer, "offset" bigint, payload bytea, reason text)'
    " ON COMMIT DELETE ROWS",
)

_VIEW_COLUMNS = "messageid, userid, productid, source, viewed_at"
_ORDER_LINE_COLUMNS = "messageid, line, orderid, userid, productid, quantity, ordered_at"


def _merge(table: str, columns: str, key: str, derivations: tuple[str, ...]) -> str:
    """INSERT the staged rows that are new; feed exactly those to the derived tables."""
    insert = (
        f"INSERT INTO {table} ({columns}) SELECT {columns} FROM stage_{table}"
        f" ON CONFLICT ({key}) DO NOTHING"
    )
    if not derivations:
        return insert
    steps = "".join(f", derived_{i} AS ({sql})" for i, sql in enumerate(derivations))
    return (
        f"WITH new_{table} AS ({insert} RETURNING {columns}){steps}"
        f" SELECT count(*) FROM new_{table}"
    )


_MERGE_VIEWS = _merge("product_views", _VIEW_COLUMNS, "messageid", VIEW_DERIVATIONS)
_MERGE_ORDER_LINES = _merge(
    "order_lines", _ORDER_LINE_COLUMNS, "messageid, line", ORDER_LINE_DERIVATIONS
)
_MERGE_DEAD_LETTERS = (
    'INSERT INTO dead_letters (topic, partition, "offset", payload, reason)'
    ' SELECT topic, partition, "offset", payload, reason FROM stage_dead_letters'
    ' ON CONFLICT (topic, partition, "offset", payload_md5) DO NOTHING'
)


@dataclass(frozen=True)
class WriteResult:
    views: int
    order_lines: int
    dead_letters: int
    duplicates: int


def _escape(value: str) -> str:
    # Cleaned strings hold no control characters, so a backslash is all COPY text needs escaped.
    return value.replace("\\", "\\\\") if "\\" in value else value


def _copy_text(rows) -> bytes:
    lines = ["\t".join([_escape(v) if type(v) is str else str(v) for v in row]) for row in rows]
    lines.append("")
    return "\n".join(lines).encode()


def copy_views(cur: psycopg.Cursor, table: str, views) -> None:
    """COPY view rows into `table` (a staging table, or the real one in the benchmark)."""
    with cur.copy(f"COPY {table} ({_VIEW_COLUMNS}) FROM STDIN") as copy:
        copy.write(_copy_text(views))


def _run_merge(cur: psycopg.Cursor, statement: str, derivations: tuple[str, ...]) -> int:
    cur.execute(statement)
    if derivations:
        row = cur.fetchone()
        return row[0] if row else 0
    return cur.rowcount


def write_batch(conn: psycopg.Connection, batch: CleanBatch) -> WriteResult:
    """Store a cleaned batch durably and exactly once; raise the driver's error on failure."""
    views = order_lines = dead = 0
    with conn.transaction(), conn.cursor() as cur:
        for statement in _STAGING:
            cur.execute(statement)
        if batch.views:
            copy_views(cur, "stage_product_views", batch.views)
            views = _run_merge(cur, _MERGE_VIEWS, VIEW_DERIVATIONS)
        if batch.order_lines:
            with cur.copy(f"COPY stage_order_lines ({_ORDER_LINE_COLUMNS}) FROM STDIN") as copy:
                copy.write(_copy_text(batch.order_lines))
            order_lines = _run_merge(cur, _MERGE_ORDER_LINES, ORDER_LINE_DERIVATIONS)
        if batch.rejects:
            with cur.copy(
                'COPY stage_dead_letters (topic, partition, "offset", payload, reason) FROM STDIN'
            ) as copy:
                for reject in batch.rejects:
                    copy.write_row(reject)
            cur.execute(_MERGE_DEAD_LETTERS)
            dead = cur.rowcount
    duplicates = len(batch.views) - views + len(batch.order_lines) - order_lines
    return WriteResult(views, order_lines, dead, duplicates)
