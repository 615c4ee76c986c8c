"""`clickstream generate`, `catalog load` and `produce`: data into the system."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from clickstream.cli._common import (
    command,
    existing_file,
    group,
    nonneg_int,
    positive_float,
    positive_int,
    stop_on_signals,
)
from clickstream.config import Settings

log = logging.getLogger("clickstream.catalog")


def cmd_generate(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream.generate import generate, write_dataset

    started = time.monotonic()
    dataset = generate(
        users=args.users,
        products=args.products,
        categories=args.categories,
        views=args.views,
        orders=args.orders,
        seed=args.seed,
    )
    paths = write_dataset(dataset, args.out)
    took = time.monotonic() - started
    print(f"wrote {len(dataset.views):,} views to {paths['views']}")
    print(f"wrote {len(dataset.orders):,} orders to {paths['orders']}")
    print(f"wrote {len(dataset.catalog):,} products to {paths['catalog']}")
    print(f"in {took:.1f}s (seed {args.seed})")
    return 0


def cmd_catalog_load(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from clickstream.catalog import read_catalog
    from clickstream.reports.hours import suffix
    from clickstream.reports.scheduler import LATE_WINDOW, rereport
    from clickstream.store.catalog import upsert_products
    from clickstream.store.db import connect
    from clickstream.store.faults import database_errors
    from clickstream.util.retry import ONE_SHOT_ATTEMPTS, retrying

    rows = read_catalog(args.file)
    for attempt in retrying(
        log,
        "nothing loaded yet",
        max_wait=settings.ingest_retry_max_seconds,
        attempts=ONE_SHOT_ATTEMPTS,
    ):
        with (
            attempt,
            connect(settings) as conn,
            database_errors(role=conn.info.user, privileges="SELECT, INSERT, UPDATE"),
        ):
            changed = upsert_products(conn, rows)
    print(f"loaded {len(rows):,} products from {args.file} ({changed:,} new or changed)")
    if changed and not args.no_reports:
        out = args.out or settings.reports_dir
        with connect(settings, autocommit=True) as conn:
            written = rereport(conn, out, datetime.now(UTC))
        hours = ", ".join(suffix(summary.hour) for summary in written) or "none"
        window = int(LATE_WINDOW.total_seconds() // 3600)
        print(f"reported again into {out}, hours of the last {window} whose files changed: {hours}")
    return 0


def cmd_produce(settings: Settings, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from clickstream.kafka.client import ensure_topics
    from clickstream.kafka.producer import produce_lines
    from clickstream.kafka.security import brokers

    address = brokers(settings)
    ensure_topics(address, [args.topic], settings.kafka_partitions)
    rate = None if args.max_speed else args.rate
    total = _count_lines(args.file)
    if args.limit is not None:
        total = min(total, args.limit)
    stop = stop_on_signals()
    pace = "as fast as possible" if rate is None else f"at {rate:g} events/s"
    print(f"producing {total:,} events from {args.file} to {args.topic} {pace}", file=sys.stderr)
    with open(args.file, "rb") as lines, tqdm(total=total, unit="ev", unit_scale=True) as bar:
        result = produce_lines(
            address,
            args.topic,
            lines,
            rate=rate,
            limit=args.limit,
            stop=stop,
            on_progress=bar.update,
            keep_timestamps=args.keep_timestamps,
        )
    how = "interrupted: " if result.interrupted else ""
    print(f"{how}{result.delivered:,} delivered, {result.failed:,} failed to {args.topic}")
    if result.failed:
        print(f"first failure: {result.first_error}", file=sys.stderr)
        return 1
    return 0


def _count_lines(path: Path) -> int:
    count = 0
    with open(path, "rb") as handle:
        for line in handle:
            if line.strip():
                count += 1
    return count


def register(sub) -> None:
    p = command(
        sub,
        "generate",
        cmd_generate,
        "write synthetic product-views.json, orders.json and product-category-map.csv",
        "Write synthetic events in exactly the source formats, deterministic for a seed: "
        "skewed product popularity, users with favourite categories, several platforms, "
        "orders mostly of viewed products.",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write into")
    p.add_argument("--users", type=positive_int, default=1000, help="distinct users (default 1000)")
    p.add_argument("--products", type=positive_int, default=1000, help="products (default 1000)")
    p.add_argument("--categories", type=positive_int, default=25, help="categories (default 25)")
    p.add_argument("--views", type=nonneg_int, default=100_000, help="view events (default 100000)")
    p.add_argument("--orders", type=nonneg_int, default=10_000, help="order events (default 10000)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")

    catalog = group(
        sub,
        "catalog",
        "manage the product catalog",
        "Manage the product catalog: which category each product belongs to.",
        metavar="ACTION",
        what="an action",
    )
    p = command(
        catalog,
        "load",
        cmd_catalog_load,
        "load a productid,categoryid CSV (upsert)",
        "Load a productid,categoryid CSV with a header line. New products are added, changed "
        "ones move category. The file is validated first: one bad line and nothing is loaded. "
        "The hours that `report --every-hour` wrote in the last 24 hours and that counted a "
        "product added or moved are written again at once, and the live view shows the new "
        "categories as soon as the load commits.",
    )
    p.add_argument("file", type=existing_file, metavar="FILE", help="the CSV file")
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="where the scheduler writes the reports (default: reports_dir)",
    )
    p.add_argument(
        "--no-reports", action="store_true", help="do not write the changed hours' reports again"
    )

    p = command(
        sub,
        "produce",
        cmd_produce,
        "replay an NDJSON file into Kafka",
        "Replay newline-delimited JSON into a topic: each event keyed by its userid and stamped "
        "with the send time. Lines that are not JSON objects are sent as they are, for the "
        "consumer to dead-letter. Ctrl-C stops cleanly: what was sent is delivered.",
    )
    p.add_argument("file", type=existing_file, metavar="FILE", help="NDJSON file, one event a line")
    p.add_argument("--topic", required=True, help="topic to send to, e.g. product-views or orders")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument(
        "--rate",
        type=positive_float,
        default=1.0,
        metavar="EVENTS_PER_SECOND",
        help="events per second (default 1, as the original producer)",
    )
    pace.add_argument(
        "--max-speed", action="store_true", help="send as fast as the broker takes them"
    )
    p.add_argument("--limit", type=nonneg_int, metavar="N", help="stop after N events")
    p.add_argument(
        "--keep-timestamps",
        action="store_true",
        help="an event that has a timestamp keeps it instead of the send time"
        " (e.g. fixed dead letters sent back)",
    )
