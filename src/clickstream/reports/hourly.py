"""Write one window's three report files: read the counts in one snapshot, rank, write."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg

from clickstream.config import Settings
from clickstream.reports.files import write_atomically
from clickstream.reports.hours import FILE_KINDS, file_names
from clickstream.reports.queries import hour_counts, hour_totals, raw_counts
from clickstream.reports.ranking import Counts, render
from clickstream.store.db import connect
from clickstream.store.faults import database_errors
from clickstream.util.retry import ONE_SHOT_ATTEMPTS, retrying

__all__ = ["ReportSummary", "read_counts", "write_counts", "write_reports", "write_window"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportSummary:
    """What a report run wrote, and what it left out."""

    hour: datetime | None
    paths: dict[str, Path]
    viewed_categories: int
    bought_categories: int
    categories: int
    left_out_views: int
    left_out_order_lines: int
    left_out_products: int
    stored_views: int | None
    stored_order_lines: int | None

    def lines(self) -> list[str]:
        """What a person running the report wants to read: where, how many, what was left out."""
        per_kind = {
            "viewed": self.viewed_categories,
            "bought": self.bought_categories,
            "conversion": self.categories,
        }
        lines = [
            f"wrote {path} ({per_kind[kind]:,} categories)" for kind, path in self.paths.items()
        ]
        lines.append(
            f"left out {self.left_out_views:,} views and {self.left_out_order_lines:,} order lines"
            f" of {self.left_out_products:,} products missing from the catalog"
        )
        return lines


def read_counts(
    conn: psycopg.Connection, hour: datetime | None
) -> tuple[Counts, tuple[int, int] | None]:
    """The window's counts and, for an hour, its stored totals, all from one snapshot.

    `conn` must be idle (autocommit mode suits): the read is one transaction of its own.
    """
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        if hour is None:
            return raw_counts(conn, None), None
        return hour_counts(conn, hour), hour_totals(conn, [hour])[hour]


def write_counts(
    counts: Counts, hour: datetime | None, out_dir: Path, totals: tuple[int, int] | None = None
) -> ReportSummary:
    """Write the three files of `counts` into `out_dir`, each atomically."""
    files = render(counts)
    names = file_names(hour)
    paths = {kind: out_dir / names[kind] for kind in FILE_KINDS}
    for kind in FILE_KINDS:
        write_atomically(paths[kind], files[kind])
    return ReportSummary(
        hour=hour,
        paths=paths,
        viewed_categories=len({row.category for row in counts.viewers}),
        bought_categories=len({row.category for row in counts.buyers}),
        categories=len(set(counts.views) | set(counts.purchases)),
        left_out_views=counts.left_out_views,
        left_out_order_lines=counts.left_out_order_lines,
        left_out_products=counts.left_out_products,
        stored_views=None if totals is None else totals[0],
        stored_order_lines=None if totals is None else totals[1],
    )


def write_window(conn: psycopg.Connection, hour: datetime | None, out_dir: Path) -> ReportSummary:
    """Write the reports of one hour (None: all time) into `out_dir`."""
    counts, totals = read_counts(conn, hour)
    return write_counts(counts, hour, out_dir, totals)


def write_reports(settings: Settings, hour: datetime | None, out_dir: Path) -> ReportSummary:
    """Write the reports of one UTC hour (None: all time) into `out_dir`.

    A database fault is retried a few times, then raised with its cause and remedy.
    """
    for attempt in retrying(
        log,
        "no report written yet",
        max_wait=settings.ingest_retry_max_seconds,
        attempts=ONE_SHOT_ATTEMPTS,
    ):
        with (
            attempt,
            connect(settings, autocommit=True) as conn,
            database_errors(role=conn.info.user),
        ):
            return write_window(conn, hour, out_dir)
    raise AssertionError("unreachable: retrying returns or raises")
