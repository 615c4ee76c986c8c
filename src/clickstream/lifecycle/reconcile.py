"""`clickstream reconcile`: the derived tables and counters checked against the raw events.

The recomputation and the comparison are store/recompute.py's; this module picks the hours,
sets apart those whose raw events retention removed (they cannot be checked, and their
counters are kept on purpose), prints each difference and, with `--fix`, repairs them one
hour per transaction.

Repairs stay right while the ingest runs. Each hour's repair transaction first closes the
ingest's gate (store/erased.py): the batches in flight commit, the next wait, and the hour's
differences are found again under it, so a batch that committed between the check and the
repair (and fixed a missing row itself, raising its counter) is seen, never counted twice.
A counter is moved by the difference (`views = views + recomputed - stored`), never
overwritten; a row is changed or deleted only if it still holds the value found wrong.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from clickstream.config import Settings
from clickstream.ingest.event_time import format_timestamp
from clickstream.reports.hours import HOUR, suffix
from clickstream.store.db import connect
from clickstream.store.erased import close_gate
from clickstream.store.recompute import DERIVED_TABLES, Difference, differences
from clickstream.store.retention import pruned_before

__all__ = ["Window", "describe", "repair", "run_reconcile", "windows"]

_TABLES = {table.name: table for table in DERIVED_TABLES}
# Counters add up; the other derived tables hold facts (a row is there or not, a latest time).
_ADDITIVE = {"report_view_hours", "report_order_hours"}
# What each kind of pruned raw data takes with it.
_NEEDS = {
    "events": tuple(_TABLES),
    "user_product_hours": ("user_product_hours", "report_buyers"),
}


@dataclass(frozen=True)
class Window:
    """Hours [start, end) and the derived tables that can be checked in them."""

    start: datetime
    end: datetime
    tables: tuple[str, ...]


def _floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def windows(
    start: datetime, end: datetime, cutoffs: dict[str, datetime]
) -> tuple[Window | None, list[Window]]:
    """Split [start, end) into the pruned hours (nothing checkable) and checkable windows.

    Before the events' cutoff nothing can be recomputed; between it and a later cutoff of
    user_product_hours only the counters can.
    """
    events = cutoffs.get("events")
    pruned = None
    if events is not None and start < events:
        pruned = Window(start, min(end, events), ())
        start = min(end, events)
    limits = sorted(
        {start, end} | {c for k, c in cutoffs.items() if k in _NEEDS and start < c < end}
    )
    checkable = []
    for lower, upper in zip(limits, limits[1:], strict=False):
        gone = {
            t for kind, c in cutoffs.items() if kind in _NEEDS and lower < c for t in _NEEDS[kind]
        }
        tables = tuple(t for t in _TABLES if t not in gone)
        if tables:
            checkable.append(Window(lower, upper, tables))
    return pruned, checkable


def _hour_of(diff: Difference) -> datetime:
    return diff.key[_TABLES[diff.table].key.index("hour")]


def describe(diff: Difference) -> str:
    """One line a person can act on: the hour, the table, the row, both sides' values."""
    table = _TABLES[diff.table]
    row = " ".join(str(v) for k, v in zip(table.key, diff.key, strict=True) if k != "hour")

    def values(side: tuple | None) -> str:
        if side is None:
            return "no row"
        if not table.values:
            return "a row"
        return ", ".join(
            f"{name}={format_timestamp(v) if isinstance(v, datetime) else v}"
            for name, v in zip(table.values, side, strict=True)
        )

    return (
        f"{suffix(_hour_of(diff))} {diff.table} {row}:"
        f" stored {values(diff.stored)}, recomputed {values(diff.recomputed)}"
    )


def _repair_one(conn: psycopg.Connection, diff: Difference) -> None:
    table = _TABLES[diff.table]
    name = sql.Identifier(table.name)
    keys = [sql.Identifier(k) for k in table.key]
    columns = [sql.Identifier(v) for v in table.values]
    match = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(k) for k in keys)
    same = sql.SQL("").join(sql.SQL(" AND {} = %s").format(c) for c in columns)
    if diff.table in _ADDITIVE:
        stored = diff.stored or (0,) * len(table.values)
        wanted = diff.recomputed or (0,) * len(table.values)
        deltas = [r - s for r, s in zip(wanted, stored, strict=True)]
        add = sql.SQL(", ").join(sql.SQL("{c} = c.{c} + excluded.{c}").format(c=c) for c in columns)
        action = sql.SQL("DO UPDATE SET {}").format(add)
        conn.execute(_upsert(name, keys, columns, action), (*diff.key, *deltas))
        zero = sql.SQL(" AND ").join(sql.SQL("{} = 0").format(c) for c in columns)
        conn.execute(sql.SQL("DELETE FROM {} WHERE {} AND {}").format(name, match, zero), diff.key)
    elif diff.recomputed is None:
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE {}{}").format(name, match, same),
            (*diff.key, *(diff.stored or ())),
        )
    elif diff.stored is None:
        newer = sql.SQL(", ").join(
            sql.SQL("{c} = greatest(c.{c}, excluded.{c})").format(c=c) for c in columns
        )
        action = sql.SQL("DO UPDATE SET {}").format(newer) if columns else sql.SQL("DO NOTHING")
        conn.execute(_upsert(name, keys, columns, action), (*diff.key, *diff.recomputed))
    else:
        sets = sql.SQL(", ").join(sql.SQL("{} = %s").format(c) for c in columns)
        conn.execute(
            sql.SQL("UPDATE {} SET {} WHERE {}{}").format(name, sets, match, same),
            (*diff.recomputed, *diff.key, *diff.stored),
        )


def _upsert(name: sql.Identifier, keys: list, columns: list, action: sql.Composable):
    """One row in (the keys' values, then the columns'), `action` on a conflict of its key;
    the stored row is `c` in the action."""
    return sql.SQL("INSERT INTO {} AS c ({}) VALUES ({}) ON CONFLICT ({}) {}").format(
        name,
        sql.SQL(", ").join(keys + columns),
        sql.SQL(", ").join(sql.Placeholder() * (len(keys) + len(columns))),
        sql.SQL(", ").join(keys),
        action,
    )


def repair(conn: psycopg.Connection, found: list[Difference]) -> dict[datetime, int]:
    """Repair the hours of these differences, one transaction per hour, each checked again
    with the ingest held (module doc); return how many were repaired per hour."""
    tables: dict[datetime, set[str]] = defaultdict(set)
    for diff in found:
        tables[_hour_of(diff)].add(diff.table)
    repaired = {}
    for hour in sorted(tables):
        with conn.transaction(), conn.cursor() as cur:
            close_gate(cur)
            now = differences(conn, (hour, hour + HOUR), tuple(sorted(tables[hour])))
            for diff in now:
                _repair_one(conn, diff)
        repaired[hour] = len(now)
    return repaired


_TIMES = (
    ("report_view_hours", "hour"),
    ("report_order_hours", "hour"),
    ("user_product_hours", "hour"),
    ("report_buyers", "hour"),
    ("product_views", "viewed_at"),
    ("order_lines", "ordered_at"),
)


def _span(conn: psycopg.Connection) -> tuple[datetime, datetime] | None:
    """From the first to the last hour that has counters, derived rows or raw events."""
    ends = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT min({c}) AS first, max({c}) AS last FROM {t}").format(
            c=sql.Identifier(column), t=sql.Identifier(table)
        )
        for table, column in _TIMES
    )
    row = conn.execute(sql.SQL("SELECT min(first), max(last) FROM ({}) AS e").format(ends))
    first, last = row.fetchone()
    if first is None:
        return None
    return _floor(first), _floor(last) + HOUR


def _check(conn: psycopg.Connection, checkable: list[Window]) -> list[Difference]:
    found: list[Difference] = []
    for window in checkable:
        found += differences(conn, (window.start, window.end), window.tables)
    return found


def run_reconcile(
    settings: Settings, *, hour: datetime | None, since: datetime | None, fix: bool
) -> int:
    """Print the differences (and repair them with `fix`); 1 when some remain, else 0."""
    with connect(settings, autocommit=True) as conn:
        if hour is not None:
            span: tuple[datetime, datetime] | None = (hour, hour + HOUR)
        elif since is not None:
            span = (since, _floor(datetime.now(UTC)) + HOUR)
        else:
            span = _span(conn)
        if span is None:
            print("nothing stored: nothing to reconcile")
            return 0
        pruned, checkable = windows(*span, pruned_before(conn))
        if pruned is not None:
            hours = int((pruned.end - pruned.start) / HOUR)
            print(
                f"pruned: {hours:,} hours from {suffix(pruned.start)} to"
                f" {suffix(pruned.end - HOUR)}, their raw events removed by retention;"
                " not checked"
            )
        for window in checkable:
            left_out = [t for t in _TABLES if t not in window.tables]
            if left_out:
                print(
                    f"pruned: {', '.join(left_out)} from {suffix(window.start)} to"
                    f" {suffix(window.end - HOUR)} (retention); the counters are checked"
                )
        found = _check(conn, checkable)
        for diff in found:
            print(describe(diff))
        hours = len({_hour_of(d) for d in found})
        checked = sum(int((w.end - w.start) / HOUR) for w in checkable)
        print(f"{len(found):,} differences in {hours:,} of {checked:,} hours checked")
        if not found or not fix:
            return 1 if found else 0
        repaired = repair(conn, found)
        print(f"repaired {sum(repaired.values()):,} differences in {len(repaired):,} hours")
        remaining = _check(conn, [w for w in checkable if _touches(w, repaired)])
        for diff in remaining:
            print(f"still different: {describe(diff)}")
        return 1 if remaining else 0


def _touches(window: Window, hours: dict[datetime, int]) -> bool:
    return any(window.start <= hour < window.end for hour in hours)
