"""`clickstream bench reports`: one busy hour's report, from the counters versus the raw events.

A scratch database receives views and order lines all inside one UTC hour, stored the way
the consumer stores them (`write_batch` on cleaned batches), so the counters of the hourly
reports are maintained exactly as in production. Then, in the same run and on the same data:

  (a) the hourly report: counts from the counters kept at ingest, ranked and rendered;
  (b) the straightforward query: the raw events of the hour joined to the catalog, distinct
      users per product, ranked per category, rendered the same way.

Both must render identical files; the last line gives both times and ratio=b/a.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import psycopg
from tqdm import tqdm

from clickstream.bench.scratch import scratch_database
from clickstream.config import Settings
from clickstream.generate import PLATFORMS, power_law
from clickstream.ingest.cleaning import CleanBatch, OrderLineRow, ViewRow
from clickstream.reports.hourly import read_counts
from clickstream.reports.hours import suffix
from clickstream.reports.queries import raw_counts
from clickstream.reports.ranking import render
from clickstream.store.catalog import upsert_products
from clickstream.store.db import connect
from clickstream.store.writer import write_batch

__all__ = ["run_reports_benchmark"]

SCRATCH_DATABASE = "clickstream_bench_reports"
BENCH_HOUR = datetime(2026, 11, 24, 13, tzinfo=UTC)
_USERS = 300_000
_PRODUCTS = 20_000
_CATEGORIES = 60
_UNCATALOGUED = 0.02  # share of products missing from the catalog
_BATCH = 20_000
_REPEAT = 3


def _moments(rng: np.random.Generator, count: int) -> list[str]:
    """Event times spread over the benchmark hour, in the project's timestamp format."""
    start = np.datetime64(BENCH_HOUR.replace(tzinfo=None), "ms")
    offsets = rng.integers(0, 3_600_000, size=count).astype("timedelta64[ms]")
    return [t + "Z" for t in np.datetime_as_string(start + offsets, unit="ms")]


def _catalog(rng: np.random.Generator) -> list[tuple[str, str]]:
    categories = rng.integers(1, _CATEGORIES + 1, size=_PRODUCTS)
    listed = rng.random(_PRODUCTS) >= _UNCATALOGUED
    return [
        (f"product-{p + 1}", f"category-{categories[p]}") for p in range(_PRODUCTS) if listed[p]
    ]


def _batches(seed: int, views: int, order_lines: int) -> Iterator[CleanBatch]:
    """Cleaned batches of views, then of order lines (orders of 1 to 4 lines), in one hour."""
    rng = np.random.default_rng(seed)
    users = power_law(rng, _USERS, 0.7)
    products = power_law(rng, _PRODUCTS, 1.0)
    for start in range(0, views, _BATCH):
        n = min(_BATCH, views - start)
        who = rng.choice(_USERS, size=n, p=users) + 1
        what = rng.choice(_PRODUCTS, size=n, p=products) + 1
        where = rng.integers(0, len(PLATFORMS), size=n)
        when = _moments(rng, n)
        yield CleanBatch(
            views=[
                ViewRow(f"v{start + i}", f"user-{u}", f"product-{p}", PLATFORMS[s], t)
                for i, (u, p, s, t) in enumerate(zip(who, what, where, when, strict=True))
            ]
        )
    order = 0
    for start in range(0, order_lines, _BATCH):
        n = min(_BATCH, order_lines - start)
        rows: list[OrderLineRow] = []
        who = rng.choice(_USERS, size=n, p=users) + 1
        what = rng.choice(_PRODUCTS, size=n, p=products) + 1
        sizes = rng.integers(1, 5, size=n)
        when = _moments(rng, n)
        quantities = rng.integers(1, 4, size=n)
        first, i = order, 0
        while i < n:
            size = min(int(sizes[i]), n - i)
            for line in range(size):
                rows.append(
                    OrderLineRow(
                        f"o{order}",
                        line + 1,
                        str(50_000 + order),
                        f"user-{who[i]}",
                        f"product-{what[i + line]}",
                        int(quantities[i + line]),
                        when[i],
                    )
                )
            order += 1
            i += size
        yield CleanBatch(order_lines=rows, orders=order - first)


def _ingest(conn: psycopg.Connection, seed: int, views: int, order_lines: int) -> float:
    started = time.monotonic()
    stored = 0
    with tqdm(total=views + order_lines, unit="row", unit_scale=True, desc="ingested") as bar:
        for batch in _batches(seed, views, order_lines):
            result = write_batch(conn, batch)
            stored += result.views + result.order_lines
            bar.update(len(batch.views) + len(batch.order_lines))
    if stored != views + order_lines:
        raise RuntimeError(f"stored {stored:,} of {views + order_lines:,} rows")
    return time.monotonic() - started


def _best_of(repeat: int, run) -> tuple[float, dict[str, bytes]]:
    best, files = float("inf"), {}
    for _ in range(repeat):
        started = time.monotonic()
        files = run()
        best = min(best, time.monotonic() - started)
    return best, files


def run_reports_benchmark(
    settings: Settings, *, views: int, orders: int, seed: int
) -> tuple[float, float]:
    """Print the figures; return (report seconds, straightforward seconds)."""
    bench = dataclasses.replace(settings, database_url=scratch_database(settings, SCRATCH_DATABASE))
    print(
        f"scratch database {SCRATCH_DATABASE}: {views:,} views and {orders:,} order lines"
        f" in hour {suffix(BENCH_HOUR)}, {_USERS:,} users, {_PRODUCTS:,} products"
    )
    with connect(bench, autocommit=True) as conn:
        upsert_products(conn, _catalog(np.random.default_rng(seed)))
        took = _ingest(conn, seed, views, orders)
        print(
            f"ingested through write_batch in {took:.1f}s = {(views + orders) / took:,.0f} rows/s"
        )
        conn.execute("VACUUM ANALYZE")

        def report() -> dict[str, bytes]:
            return render(read_counts(conn, BENCH_HOUR)[0])

        def straightforward() -> dict[str, bytes]:
            with conn.transaction():
                return render(raw_counts(conn, BENCH_HOUR))

        report_seconds, report_files = _best_of(_REPEAT, report)
        print(f"(a) hourly report from the counters: {report_seconds:.3f}s (best of {_REPEAT})")
        raw_seconds, raw_files = _best_of(_REPEAT, straightforward)
        print(
            f"(b) straightforward query over the raw events: {raw_seconds:.3f}s (best of {_REPEAT})"
        )
    if report_files != raw_files:
        raise RuntimeError("the report and the straightforward query disagree")
    print("both give byte-identical files")
    print(
        f"report {report_seconds:.2f}s, straightforward {raw_seconds:.2f}s,"
        f" ratio={raw_seconds / report_seconds:.1f}"
    )
    return report_seconds, raw_seconds
