"""Daily partitions of the time-keyed tables: created ahead without blocking, dropped whole.

The raw events and the per-user derived tables are partitioned by UTC day of their time
column (migration 0008_time_partitions). Retention then drops whole days, which costs the
same at a thousand rows as at a hundred million: no DELETE, no table rewrite, no bloat.

Both moves are chosen for the locks they take on the parent table, which the ingest writes
all the time:

- A new day is created as a plain table with a CHECK constraint of its range, then
  `ATTACH PARTITION`ed: that takes SHARE UPDATE EXCLUSIVE on the parent, which lets inserts
  and reads run on (`CREATE TABLE ... PARTITION OF` would take ACCESS EXCLUSIVE and queue
  every writer behind the slowest reader). The CHECK spares the attach its scan. This runs
  in SQL, `clickstream_add_day` (store/schema.py), as the tables' owner.
- An old day leaves with `DETACH PARTITION ... CONCURRENTLY` (also SHARE UPDATE EXCLUSIVE,
  then it waits for the queries that may still see the partition), and is then dropped
  alone, outside the parent, where nothing waits for it.

Partitions are named `<table>_pYYYYMMDD`; the day is read back from the name. A prune
records each day it detaches in `clickstream_detached` before detaching it, and only a table
recorded there is ever dropped once detached: a day an operator detached to archive it is
named like a partition but is theirs, kept by the prune and refused by `clickstream_add_day`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from time import perf_counter

import psycopg
from psycopg import sql

__all__ = [
    "PARTITIONED",
    "Partition",
    "detached_by_us",
    "drop_partition",
    "ensure_days",
    "finish_pending_detaches",
    "partition_name",
    "partitions",
]

# Each partitioned table and the column whose UTC day places a row.
PARTITIONED: dict[str, str] = {
    "product_views": "viewed_at",
    "order_lines": "ordered_at",
    "user_product_hours": "hour",
    "report_buyers": "hour",
}

_NAME = re.compile(r"_p(\d{8})$")


@dataclass(frozen=True)
class Partition:
    table: str
    name: str
    day: date
    detach_pending: bool


def partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def partitions(conn: psycopg.Connection, table: str) -> list[Partition]:
    """The table's daily partitions, oldest first, including those half detached."""
    rows = conn.execute(
        "SELECT c.relname, i.inhdetachpending FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = to_regclass(%s) ORDER BY c.relname",
        (table,),
    ).fetchall()
    found = []
    for name, pending in rows:
        match = _NAME.search(name)
        if match:
            day = datetime.strptime(match.group(1), "%Y%m%d").date()
            found.append(Partition(table, name, day, pending))
    return found


def ensure_days(conn: psycopg.Connection, table: str, days: set[date]) -> list[date]:
    """Create the missing partitions of these days; return the days created.

    Through the function `clickstream_add_day` (migration 0008_time_partitions), which runs
    as the tables' owner: the ingest's role needs no DDL rights for it. Each day is created
    in a transaction of its own, under an advisory lock so that two writers meeting the same
    new day do not both create it; a day table a stopped prune detached but did not drop is
    dropped first (its rows and keys are pruned, they must not come back). Any other table of
    the day's name is refused (`psycopg.errors.DuplicateTable`): an operator's archive.
    """
    created = []
    for day in sorted(days):
        with conn.transaction():
            added = conn.execute("SELECT clickstream_add_day(%s, %s)", (table, day)).fetchone()
        if added and added[0]:
            created.append(day)
    return created


def detached_by_us(conn: psycopg.Connection) -> set[str]:
    """The day tables a prune recorded before detaching them and has not dropped yet."""
    return {name for (name,) in conn.execute("SELECT name FROM clickstream_detached")}


def finish_pending_detaches(conn: psycopg.Connection, table: str) -> list[str]:
    """Complete what an interrupted prune left: half-detached days, detached undropped ones.

    Only the tables a prune recorded are touched; a half-detached or detached day of anyone
    else stays as it is. `conn` must be in autocommit mode.
    """
    done = []
    ours = detached_by_us(conn)
    for part in partitions(conn, table):
        if part.detach_pending and part.name in ours:
            conn.execute(
                sql.SQL("ALTER TABLE {} DETACH PARTITION {} FINALIZE").format(
                    sql.Identifier(table), sql.Identifier(part.name)
                )
            )
    attached = {part.name for part in partitions(conn, table)}
    for name in sorted(ours - attached):
        if name.startswith(f"{table}_p"):
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
            conn.execute("DELETE FROM clickstream_detached WHERE name = %s", (name,))
            done.append(name)
    return done


def drop_partition(conn: psycopg.Connection, part: Partition) -> list[tuple[str, float]]:
    """Detach one day concurrently, then drop it; return each statement with its seconds.

    `conn` must be in autocommit mode (DETACH ... CONCURRENTLY refuses a transaction).
    """
    timings = []
    conn.execute(
        "INSERT INTO clickstream_detached (name) VALUES (%s) ON CONFLICT DO NOTHING", (part.name,)
    )
    for statement in (
        sql.SQL("ALTER TABLE {} DETACH PARTITION {} CONCURRENTLY").format(
            sql.Identifier(part.table), sql.Identifier(part.name)
        ),
        sql.SQL("DROP TABLE {}").format(sql.Identifier(part.name)),
    ):
        started = perf_counter()
        try:
            conn.execute(statement)
        except psycopg.errors.InsufficientPrivilege:
            # Refused before anything changed (a role that is not the owner): no record left.
            conn.execute("DELETE FROM clickstream_detached WHERE name = %s", (part.name,))
            raise
        timings.append((statement.as_string(conn), perf_counter() - started))
    conn.execute("DELETE FROM clickstream_detached WHERE name = %s", (part.name,))
    return timings
