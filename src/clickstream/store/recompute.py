"""The derived tables recomputed from the raw events, and where the stored ones differ.

The consumer keeps `user_product_hours` and the report counters current batch by batch
(store/derived.py), adding what each batch's new rows change. That is fast but incremental:
a lost or doubled update would go unnoticed. Here each derived table is instead recomputed in
one query from `product_views` and `order_lines`, the raw events, for a range of UTC hours or
for all of them, and compared row by row with what is stored. The tests prove the consumer's
bookkeeping with it after crashes and rebalances; an operator's reconcile can build on it.

Every name here is a constant of this module: nothing from an event reaches the SQL text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from clickstream.store.derived import hour_bin

__all__ = ["DERIVED_TABLES", "DerivedTable", "Difference", "Hours", "differences", "recomputed"]

Hours = tuple[datetime, datetime]
"""(start, end): the UTC hours from the one holding `start` up to, not including, `end`'s."""


@dataclass(frozen=True)
class DerivedTable:
    """A table kept at ingest, and the query that recomputes it from raw events.

    `recompute` is a SELECT of `key + values` with a `{raw}` placeholder for the condition
    that picks the raw events of the hours asked for (on `time`, their event time).
    """

    name: str
    key: tuple[str, ...]
    values: tuple[str, ...]
    time: str
    recompute: str

    def select(self, hours: Hours | None) -> tuple[str, dict[str, Any]]:
        """The recomputed rows of these hours (all when None): SQL and its parameters."""
        raw = "true"
        if hours is not None:
            raw = f"{self.time} >= {hour_bin('%(start)s')} AND {self.time} < {hour_bin('%(end)s')}"
        return self.recompute.format(raw=raw), _params(hours)

    def stored(self, hours: Hours | None) -> tuple[str, dict[str, Any]]:
        """The stored rows of these hours (all when None): SQL and its parameters."""
        where = ""
        if hours is not None:
            where = f" WHERE hour >= {hour_bin('%(start)s')} AND hour < {hour_bin('%(end)s')}"
        columns = ", ".join(self.key + self.values)
        return f"SELECT {columns} FROM {self.name}{where}", _params(hours)


DERIVED_TABLES: tuple[DerivedTable, ...] = (
    DerivedTable(
        "user_product_hours",
        ("userid", "productid", "hour"),
        ("viewed_at",),
        "viewed_at",
        f"SELECT userid, productid, {hour_bin('viewed_at')} AS hour, max(viewed_at) AS viewed_at"
        " FROM product_views WHERE {raw} GROUP BY 1, 2, 3",
    ),
    DerivedTable(
        "report_view_hours",
        ("hour", "productid"),
        ("views", "viewers"),
        "viewed_at",
        f"SELECT {hour_bin('viewed_at')} AS hour, productid, count(*) AS views,"
        " count(DISTINCT userid) AS viewers FROM product_views WHERE {raw} GROUP BY 1, 2",
    ),
    DerivedTable(
        "report_buyers",
        ("hour", "productid", "userid"),
        (),
        "ordered_at",
        f"SELECT DISTINCT {hour_bin('ordered_at')} AS hour, productid, userid"
        " FROM order_lines WHERE {raw}",
    ),
    DerivedTable(
        "report_order_hours",
        ("hour", "productid"),
        ("order_lines", "buyers"),
        "ordered_at",
        f"SELECT {hour_bin('ordered_at')} AS hour, productid, count(*) AS order_lines,"
        " count(DISTINCT userid) AS buyers FROM order_lines WHERE {raw} GROUP BY 1, 2",
    ),
)


@dataclass(frozen=True)
class Difference:
    """One row where a stored derived table and its recomputation disagree.

    `stored` or `recomputed` is None when the row is missing on that side; otherwise both
    hold the non-key columns (`values`) as found, e.g. (views, viewers).
    """

    table: str
    key: tuple
    stored: tuple | None
    recomputed: tuple | None

    def __str__(self) -> str:
        return f"{self.table} {self.key}: stored {self.stored}, recomputed {self.recomputed}"


def recomputed(conn: psycopg.Connection, table: str, hours: Hours | None = None) -> list[tuple]:
    """The rows `table` should hold for these hours (all when None), key columns first."""
    derived = _table(table)
    sql, params = derived.select(hours)
    return conn.execute(f"{sql} ORDER BY {', '.join(derived.key)}", params).fetchall()


def differences(
    conn: psycopg.Connection, hours: Hours | None = None, tables: tuple[str, ...] | None = None
) -> list[Difference]:
    """Rows of the derived tables (all, or `tables`) that differ from a recomputation.

    Empty when every derived row of these hours (all when None) is exactly what the raw
    events give. Ordered by table, then key. Unless called inside a transaction of the
    caller's, it reads in one snapshot (REPEATABLE READ), so that a consumer writing
    meanwhile cannot make the two sides disagree.
    """
    chosen = DERIVED_TABLES if tables is None else tuple(_table(t) for t in tables)
    found: list[Difference] = []
    fresh = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with conn.transaction():
        if fresh:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        for table in chosen:
            found += _compare(conn, table, hours)
    return found


def _compare(conn: psycopg.Connection, table: DerivedTable, hours: Hours | None) -> list:
    stored, params = table.stored(hours)
    again, _ = table.select(hours)
    key = ", ".join(table.key)
    columns = [f"{side}.{v}" for side in ("s", "r") for v in table.values]
    differ = "".join(f" OR s.{v} IS DISTINCT FROM r.{v}" for v in table.values)
    sql = (
        f"WITH s AS (SELECT *, true AS present FROM ({stored}) AS s),"
        f" r AS (SELECT *, true AS present FROM ({again}) AS r)"
        f" SELECT {', '.join([key, 's.present', 'r.present', *columns])}"
        f" FROM s FULL JOIN r USING ({key})"
        f" WHERE s.present IS NULL OR r.present IS NULL{differ}"
        f" ORDER BY {key}"
    )
    width, count = len(table.key), len(table.values)
    found = []
    for row in conn.execute(sql, params):
        in_stored, in_again = row[width], row[width + 1]
        values = row[width + 2 :]
        found.append(
            Difference(
                table.name,
                tuple(row[:width]),
                tuple(values[:count]) if in_stored else None,
                tuple(values[count:]) if in_again else None,
            )
        )
    return found


def _table(name: str) -> DerivedTable:
    for table in DERIVED_TABLES:
        if table.name == name:
            return table
    known = ", ".join(t.name for t in DERIVED_TABLES)
    raise ValueError(f"{name} is not a derived table; derived tables are {known}")


def _params(hours: Hours | None) -> dict[str, Any]:
    return {} if hours is None else {"start": hours[0], "end": hours[1]}
