"""`clickstream demo`: the whole system on embedded services, with generated traffic.

A newcomer's first command. It starts what is not running, serves the dashboard and the API,
generates a catalog and events, replays them at a steady pace (so the live numbers move while
you watch), ingests them into PostgreSQL, prints what arrived every few seconds and writes the
current hour's reports every minute. The services stay up afterwards, so every other command
can be tried against the demo's data.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from clickstream.api.server import BackgroundServer, run_in_background
from clickstream.catalog import read_catalog
from clickstream.config import Settings
from clickstream.errors import ClickstreamError
from clickstream.generate import generate, write_dataset
from clickstream.ingest.consumer import Ingestor
from clickstream.kafka.producer import produce_lines
from clickstream.kafka.security import Brokers, brokers
from clickstream.reports.hourly import write_reports
from clickstream.services import embedded
from clickstream.services.prepare import prepare
from clickstream.store.catalog import upsert_products
from clickstream.store.db import connect
from clickstream.store.schema import describe

__all__ = ["run_demo"]

log = logging.getLogger("clickstream.demo")

VIEWS_PER_SECOND = 400
ORDERS_PER_SECOND = 20
PROGRESS_EVERY_SECONDS = 5
REPORTS_EVERY_SECONDS = 60

# A few events the consumer must refuse, to show where bad input goes.
BAD_VIEWS = [
    b'{"event": "ProductView", "messageid": "demo-bad-1", "userid": "user-1"',
    b'{"event": "ProductView", "messageid": "demo-bad-2", "userid": 42,'
    b' "properties": {"productid": "product-1"}, "context": {"source": "ios"}}',
]
BAD_ORDERS = [
    b'{"event": "OrderEvent", "messageid": "demo-bad-3", "userid": "user-2", "orderid": 1,'
    b' "lineitems": [{"productid": "product-1", "quantity": 0}]}',
]


def run_demo(settings: Settings, *, duration: float, stop: threading.Event) -> int:
    print(f"clickstream demo: {duration:g}s of generated traffic on embedded services")
    embedded.up(settings)
    print(f"  database schema: {describe(prepare(settings))}")
    bootstrap = brokers(settings)
    for service in embedded.status(settings):
        print(f"  {service.name:<9} {service.address}")

    views_needed = int(VIEWS_PER_SECOND * duration) + 1
    orders_needed = int(ORDERS_PER_SECOND * duration) + 1
    out = settings.data_dir / "demo"
    dataset = generate(
        users=2_000,
        products=500,
        categories=20,
        views=views_needed,
        orders=orders_needed,
        seed=int(time.time()),
    )
    paths = write_dataset(dataset, out)
    print(f"generated {views_needed:,} views and {orders_needed:,} orders into {out}")
    _load_catalog(settings, paths["catalog"])
    # The catalog before the server: the live view's first snapshot already has categories.
    server = _serve(settings)
    print(f"  dashboard {server.url}/  (the live 5-minute view; API docs at {server.url}/docs)")

    ingestor = Ingestor(settings, bootstrap)
    consumer = threading.Thread(target=ingestor.run, name="demo-consumer", daemon=True)
    consumer.start()
    producing = threading.Event()  # set: stop producing
    producers = [
        _replay(bootstrap, settings.kafka_views_topic, dataset.views, VIEWS_PER_SECOND, producing),
        _replay(
            bootstrap, settings.kafka_orders_topic, dataset.orders, ORDERS_PER_SECOND, producing
        ),
        _replay(bootstrap, settings.kafka_views_topic, BAD_VIEWS, None, producing),
        _replay(bootstrap, settings.kafka_orders_topic, BAD_ORDERS, None, producing),
    ]
    print(
        f"producing {VIEWS_PER_SECOND} views/s and {ORDERS_PER_SECOND} orders/s"
        f" into {settings.kafka_views_topic} and {settings.kafka_orders_topic}; Ctrl-C stops"
    )

    print(
        f"writing the current hour's reports every {REPORTS_EVERY_SECONDS}s into"
        f" {settings.reports_dir}/ (a demo shortcut: `clickstream report --every-hour` writes"
        " each hour once it has closed)"
    )

    deadline = time.monotonic() + duration
    next_reports = time.monotonic() + REPORTS_EVERY_SECONDS
    while not stop.wait(min(PROGRESS_EVERY_SECONDS, max(deadline - time.monotonic(), 0))):
        _print_progress(ingestor)
        if time.monotonic() >= next_reports:
            _write_reports(settings)
            next_reports += REPORTS_EVERY_SECONDS
        if time.monotonic() >= deadline or not consumer.is_alive():
            break
    producing.set()
    for producer in producers:
        producer.join()
    _drain(ingestor, consumer, stop)
    _print_progress(ingestor)
    _write_reports(settings)
    _print_summary(settings, server)
    server.stop()
    print("the services keep running: try `clickstream status`; `clickstream down` stops them")
    return 0


def _serve(settings: Settings) -> BackgroundServer:
    """The API and dashboard on the configured port, or any free one if that is taken."""
    try:
        return run_in_background(settings)
    except ClickstreamError:
        log.warning("port %s is taken: serving on a free port instead", settings.api_port)
        return run_in_background(settings, port=0)


def _write_reports(settings: Settings) -> None:
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    summary = write_reports(settings, hour, settings.reports_dir)
    for line in summary.lines():
        print(f"  {line}")


def _load_catalog(settings: Settings, path: Path) -> None:
    rows = read_catalog(path)
    with connect(settings) as conn:
        upsert_products(conn, rows)
    print(f"loaded {len(rows):,} products into the catalog")


def _replay(
    bootstrap: Brokers, topic: str, lines: list[bytes], rate: float | None, stop: threading.Event
) -> threading.Thread:
    thread = threading.Thread(
        target=produce_lines,
        args=(bootstrap, topic, lines),
        kwargs={"rate": rate, "stop": stop},
        name=f"demo-producer-{topic}",
        daemon=True,
    )
    thread.start()
    return thread


def _drain(ingestor: Ingestor, consumer: threading.Thread, stop: threading.Event) -> None:
    """Let the consumer store what was produced (unless Ctrl-C asked to stop), then stop it."""
    seen, quiet_since = -1, time.monotonic()
    while consumer.is_alive() and time.monotonic() - quiet_since < 2 and not stop.wait(0.2):
        if ingestor.stats.consumed != seen:
            seen, quiet_since = ingestor.stats.consumed, time.monotonic()
    ingestor.stop.set()
    consumer.join()


def _print_progress(ingestor: Ingestor) -> None:
    stats = ingestor.stats
    print(
        f"stored {stats.views:,} views, {stats.order_lines:,} order lines,"
        f" {stats.dead_letters:,} dead letters"
    )


def _print_summary(settings: Settings, server: BackgroundServer) -> None:
    with connect(settings) as conn:
        views, users, products = conn.execute(
            "SELECT count(*), count(DISTINCT userid), count(DISTINCT productid) FROM product_views"
        ).fetchone()
        lines, orders = conn.execute(
            "SELECT count(*), count(DISTINCT orderid) FROM order_lines"
        ).fetchone()
        reasons = conn.execute(
            "SELECT split_part(reason, ':', 1), count(*) FROM dead_letters GROUP BY 1 ORDER BY 1"
        ).fetchall()
        row = conn.execute("SELECT userid FROM product_views LIMIT 1").fetchone()
    print(
        f"in PostgreSQL: {views:,} views by {users:,} users of {products:,} products;"
        f" {lines:,} order lines of {orders:,} orders"
    )
    if reasons:
        print("dead letters: " + ", ".join(f"{count} {reason}" for reason, count in reasons))
    if row:
        print(
            f"recently viewed, as the recommendation service asks for it:"
            f" {server.url}/api/users/{row[0]}/recently-viewed?limit=5"
        )
