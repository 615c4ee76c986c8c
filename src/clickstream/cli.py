"""The one command, `clickstream`: parses, calls, prints.

Every failure a user can cause ends in one line on stderr and a non-zero exit code (2 for
bad arguments), never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from clickstream import __version__
from clickstream.config import Settings, load_settings
from clickstream.errors import ClickstreamError, UsageError
from clickstream.process import tune_garbage_collector

__all__ = ["main"]

log = logging.getLogger("clickstream")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error instead of the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of at least 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number greater than 0, got {text}")
    return value


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def _stop_on_signals() -> threading.Event:
    """Turn SIGINT and SIGTERM into a stop request the long-running loops check."""
    stop = threading.Event()

    def handler(signum, _frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.info(
            "%s received: finishing the current batch, then stopping", signal.Signals(signum).name
        )
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


# -- commands -------------------------------------------------------------------------------


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream.prepare import prepare
    from clickstream.services import embedded

    embedded.up(settings)
    prepare(settings)
    _print_status(embedded.status(settings))
    return 0


def cmd_down(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream.services import embedded

    stopped = embedded.down(settings)
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    return 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream.services import embedded

    services = embedded.status(settings)
    _print_status(services)
    return 0 if all(s.running for s in services) else 3


def _print_status(services) -> None:
    for service in services:
        state = "running" if service.running else "stopped"
        print(f"{service.name:<9} {state:<8} {service.address}")
        print(f"{'':<9} {service.detail}")


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
    from clickstream.catalog import read_catalog
    from clickstream.store.catalog import upsert_products
    from clickstream.store.db import connect

    rows = read_catalog(args.file)
    with connect(settings) as conn:
        changed = upsert_products(conn, rows)
    print(f"loaded {len(rows):,} products from {args.file} ({changed:,} new or changed)")
    return 0


def cmd_produce(settings: Settings, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from clickstream.kafka.client import ensure_topics
    from clickstream.kafka.producer import produce_lines
    from clickstream.services.embedded import bootstrap_servers

    bootstrap = bootstrap_servers(settings)
    ensure_topics(bootstrap, [args.topic], settings.kafka_partitions)
    rate = None if args.max_speed else args.rate
    total = _count_lines(args.file)
    if args.limit is not None:
        total = min(total, args.limit)
    stop = _stop_on_signals()
    pace = "as fast as possible" if rate is None else f"at {rate:g} events/s"
    print(f"producing {total:,} events from {args.file} to {args.topic} {pace}", file=sys.stderr)
    with open(args.file, "rb") as lines, tqdm(total=total, unit="ev", unit_scale=True) as bar:
        result = produce_lines(
            bootstrap,
            args.topic,
            lines,
            rate=rate,
            limit=args.limit,
            stop=stop,
            on_progress=bar.update,
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


def cmd_consume(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream.ingest import Ingestor
    from clickstream.services.embedded import bootstrap_servers

    stop = _stop_on_signals()
    ingestor = Ingestor(settings, bootstrap_servers(settings), stop=stop)
    stats = ingestor.run(until_idle=args.until_idle)
    took = time.monotonic() - stats.started
    print(
        f"consumed {stats.consumed:,} events in {took:.1f}s: stored {stats.views:,} views and"
        f" {stats.order_lines:,} order lines of {stats.orders:,} orders,"
        f" {stats.dead_letters:,} dead letters, {stats.duplicates:,} duplicates skipped"
    )
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream.demo import run_demo

    duration = args.duration if args.duration is not None else settings.demo_duration
    return run_demo(settings, duration=duration, stop=_stop_on_signals())


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {value}")
    return value


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream.api.server import serve

    host = args.host or settings.api_host
    port = settings.api_port if args.port is None else args.port
    workers = args.workers or settings.api_workers
    log.info("serving on http://%s:%d (API docs at /docs), %d worker(s)", host, port, workers)
    access_log = settings.api_access_log and not args.no_access_log
    serve(settings, host=host, port=port, workers=workers, access_log=access_log)
    return 0


def cmd_bench_api(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream.bench.api import run_api_benchmark

    run_api_benchmark(
        settings,
        views=args.views,
        users=args.users,
        seconds=args.seconds,
        concurrency=args.concurrency,
    )
    return 0


def cmd_realtime(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream.realtime.terminal import run_terminal

    run_terminal(settings, _stop_on_signals(), once=args.once)
    return 0


def cmd_bench_realtime(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream.bench.realtime import run_realtime_benchmark

    run_realtime_benchmark(settings, events=args.events, users=args.users, seed=args.seed)
    return 0


def cmd_bench_ingest(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream.bench.ingest import run_ingest_benchmark

    run_ingest_benchmark(settings, events=args.events, seed=args.seed, consumers=args.consumers)
    return 0


def _hour(text: str):
    from clickstream.reports.hours import parse_hour

    try:
        return parse_hour(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_report(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from clickstream.reports import write_reports
    from clickstream.reports.hours import last_complete_hour
    from clickstream.reports.scheduler import run_every_hour

    out = args.out or settings.reports_dir
    if args.every_hour:
        print(f"reporting every closed hour into {out}; Ctrl-C stops", file=sys.stderr)
        run_every_hour(
            settings, out, _stop_on_signals(), on_report=lambda s: print(*s.lines(), sep="\n")
        )
        return 0
    hour = None if args.all_time else args.hour or last_complete_hour(datetime.now(UTC))
    print(*write_reports(settings, hour, out).lines(), sep="\n")
    return 0


def cmd_bench_reports(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream.bench.reports import run_reports_benchmark

    run_reports_benchmark(settings, views=args.views, orders=args.orders, seed=args.seed)
    return 0


# -- the parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="clickstream",
        description=(
            "Product views and orders from Kafka into PostgreSQL, hourly category reports, "
            "a live 5-minute view and a recently-viewed API. With no broker or database "
            "configured, commands use the embedded ones started by `clickstream up`."
        ),
    )
    parser.add_argument("--version", action="version", version=f"clickstream {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="settings file (default: $CLICKSTREAM_CONFIG or ./config.yml)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, func: Callable, help: str, description: str | None = None, parent=sub):
        p = parent.add_parser(name, help=help, description=description or help)
        p.set_defaults(func=func)
        return p

    command(
        "up",
        cmd_up,
        "start the embedded broker and database",
        "Start the embedded Kafka-compatible broker (Tansu) and PostgreSQL (pgserver) in the "
        "background under the data directory, create the topics and the schema. Idempotent: "
        "what already runs is left alone. Tansu keeps topics in memory only.",
    )
    command("down", cmd_down, "stop the embedded broker and database")
    command(
        "status",
        cmd_status,
        "show what runs where",
        "Show the broker and the database, embedded or external, and their addresses. "
        "Exit code 3 when an embedded service is stopped.",
    )

    p = command(
        "generate",
        cmd_generate,
        "write synthetic product-views.json, orders.json and product-category-map.csv",
        "Write synthetic events in exactly the source formats, deterministic for a seed: "
        "skewed product popularity, users with favourite categories, several platforms, "
        "orders mostly of viewed products.",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write into")
    p.add_argument(
        "--users", type=_positive_int, default=1000, help="distinct users (default 1000)"
    )
    p.add_argument("--products", type=_positive_int, default=1000, help="products (default 1000)")
    p.add_argument("--categories", type=_positive_int, default=25, help="categories (default 25)")
    p.add_argument("--views", type=_count, default=100_000, help="view events (default 100000)")
    p.add_argument("--orders", type=_count, default=10_000, help="order events (default 10000)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")

    catalog = sub.add_parser(
        "catalog",
        help="manage the product catalog",
        description="Manage the product catalog: which category each product belongs to.",
    )
    catalog_sub = catalog.add_subparsers(
        dest="catalog_command", metavar="ACTION", parser_class=_Parser
    )
    catalog.set_defaults(func=lambda settings, args: _missing(catalog, "an action"))
    p = command(
        "load",
        cmd_catalog_load,
        "load a productid,categoryid CSV (upsert)",
        "Load a productid,categoryid CSV with a header line. New products are added, changed "
        "ones move category. The file is validated first: one bad line and nothing is loaded.",
        parent=catalog_sub,
    )
    p.add_argument("file", type=_existing_file, metavar="FILE", help="the CSV file")

    p = command(
        "produce",
        cmd_produce,
        "replay an NDJSON file into Kafka",
        "Replay newline-delimited JSON into a topic: each event keyed by its userid and stamped "
        "with the send time. Lines that are not JSON objects are sent as they are, for the "
        "consumer to dead-letter. Ctrl-C stops cleanly: what was sent is delivered.",
    )
    p.add_argument(
        "file", type=_existing_file, metavar="FILE", help="NDJSON file, one event a line"
    )
    p.add_argument("--topic", required=True, help="topic to send to, e.g. product-views or orders")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument(
        "--rate",
        type=_positive_float,
        default=1.0,
        metavar="EVENTS_PER_SECOND",
        help="events per second (default 1, as the original producer)",
    )
    pace.add_argument(
        "--max-speed", action="store_true", help="send as fast as the broker takes them"
    )
    p.add_argument("--limit", type=_count, metavar="N", help="stop after N events")

    p = command(
        "consume",
        cmd_consume,
        "clean both topics into PostgreSQL",
        "Read the views and orders topics in one consumer group, clean the events, store them "
        "with COPY (each messageid once), dead-letter bad events with a reason, and commit "
        "offsets only after the rows are durable. Run several to share the partitions. "
        "SIGTERM or Ctrl-C finishes the current batch and stops.",
    )
    p.add_argument(
        "--until-idle",
        type=_positive_float,
        metavar="SECONDS",
        help="exit once no new event arrived for that long (drain and stop)",
    )

    p = command(
        "report",
        cmd_report,
        "write the hourly category reports",
        "Write category_viewed_H.csv, category_bought_H.csv and conversion_rates_H.csv for one "
        "UTC hour H (default: the last complete hour), each file atomically; a rerun gives the "
        "same bytes. Events of products missing from the catalog are left out and counted. "
        "--every-hour keeps running: it writes each hour shortly after it closes, catches up "
        "the hours it missed while stopped, and rewrites an hour that received late events.",
    )
    window = p.add_mutually_exclusive_group()
    window.add_argument(
        "--hour",
        type=_hour,
        metavar="YYYY-MM-DDTHH",
        help="the UTC hour to report, e.g. 2026-11-24T13",
    )
    window.add_argument(
        "--all-time", action="store_true", help="cover every stored event (file suffix 'all')"
    )
    window.add_argument(
        "--every-hour", action="store_true", help="keep running and report every closed hour"
    )
    p.add_argument(
        "--out", type=Path, metavar="DIR", help="folder to write into (default: reports_dir)"
    )

    p = command(
        "demo",
        cmd_demo,
        "run everything at once on embedded services with generated data",
        "Start the embedded services, generate data, load the catalog, produce and consume "
        "events and show them arriving in PostgreSQL.",
    )
    p.add_argument(
        "--duration",
        type=_positive_float,
        metavar="SECONDS",
        help="how long to run (default: demo.duration, $CLICKSTREAM_DEMO_DURATION, 120)",
    )

    p = command(
        "serve",
        cmd_serve,
        "serve the recommendation API and the dashboard",
        "Serve the HTTP API (OpenAPI docs at /docs) with uvicorn. SIGTERM or Ctrl-C lets the "
        "requests in flight finish, then stops. With CLICKSTREAM_API_KEY set, every /api/ "
        "request needs the key in the X-API-Key header.",
    )
    p.add_argument("--host", help="address to listen on (default: api.host, 127.0.0.1)")
    p.add_argument("--port", type=_port, help="port to listen on (default: api.port, 8000)")
    p.add_argument(
        "--workers", type=_positive_int, help="worker processes (default: api.workers, 1)"
    )
    p.add_argument(
        "--no-access-log", action="store_true", help="do not log every request (api.access_log)"
    )

    p = command(
        "realtime",
        cmd_realtime,
        "the live 5-minute view in the terminal",
        "Read the views topic straight from Kafka (as the dashboard's server does) and show "
        "active users, views per category and views per platform over the last "
        "realtime.window_seconds, redrawn every second. Ctrl-C exits.",
    )
    p.add_argument("--once", action="store_true", help="print the view once, then exit")

    bench = sub.add_parser(
        "bench",
        help="run a benchmark and print its figures",
        description="Run a benchmark on scratch data and print its figures.",
    )
    bench_sub = bench.add_subparsers(
        dest="bench_command", metavar="BENCHMARK", parser_class=_Parser
    )
    bench.set_defaults(func=lambda settings, args: _missing(bench, "a benchmark"))
    p = command(
        "ingest",
        cmd_bench_ingest,
        "raw COPY versus produce -> consume -> PostgreSQL",
        "Measure, in one run and in a scratch database, (a) a raw COPY of cleaned view rows "
        "into product_views and (b) the full path: produce at max speed, consume, store. The "
        "last line gives (b) in events/s and ratio=b/a.",
        parent=bench_sub,
    )
    p.add_argument(
        "--events", type=_positive_int, default=1_000_000, help="views (default 1000000)"
    )
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument(
        "--consumers",
        type=_positive_int,
        default=2,
        help="consumer processes in the group (default 2, one per core)",
    )
    p = command(
        "realtime",
        cmd_bench_realtime,
        "send -> /api/realtime delay and the events/s the live window takes",
        "On a fresh topic: produce views at max speed from another process while the server "
        "runs, polling GET /api/realtime for probe events (p50, p95 of send -> shown); then "
        "read the whole topic back into a fresh window. The last line gives the delays, the "
        "window's events/s and ratio=window/producer events/s.",
        parent=bench_sub,
    )
    p.add_argument(
        "--events", type=_positive_int, default=1_000_000, help="views (default 1000000)"
    )
    p.add_argument("--users", type=_positive_int, default=10_000, help="users (default 10000)")
    p.add_argument("--seed", type=int, default=5, help="random seed (default 5)")
    p = command(
        "api",
        cmd_bench_api,
        "recently-viewed requests/s and latency versus a trivial endpoint",
        "Load views into a scratch database, start the server, drive GET "
        "/api/users/{id}/recently-viewed and then GET /api/ping (no database) at a fixed "
        "concurrency from a load generator pinned to its own core, and time the original "
        "system's query (oldest first, no index) on the same data. The last line gives both "
        "endpoints' requests/s, p50 and p99, and ratio=real/trivial.",
        parent=bench_sub,
    )
    p.add_argument(
        "--views", type=_positive_int, default=10_000_000, help="stored views (default 10000000)"
    )
    p.add_argument("--users", type=_positive_int, default=100_000, help="users (default 100000)")
    p.add_argument(
        "--seconds", type=_positive_float, default=15.0, help="seconds per endpoint (default 15)"
    )
    p.add_argument(
        "--concurrency", type=_positive_int, default=64, help="requests in flight (default 64)"
    )
    p = command(
        "reports",
        cmd_bench_reports,
        "hourly report from the ingest-time counters versus the raw events",
        "Ingest, in a scratch database and through the consumer's writer, views and order "
        "lines all inside one hour, then time that hour's report from the counters kept at "
        "ingest and, in the same run, the straightforward query over the raw events (join to "
        "the catalog, distinct users per product, rank per category); both must give the same "
        "files. The last line gives both times and ratio=straightforward/report.",
        parent=bench_sub,
    )
    p.add_argument("--views", type=_positive_int, default=5_000_000, help="views (default 5000000)")
    p.add_argument(
        "--orders", type=_positive_int, default=500_000, help="order lines (default 500000)"
    )
    p.add_argument("--seed", type=int, default=11, help="random seed (default 11)")
    return parser


def _missing(parser: argparse.ArgumentParser, what: str) -> int:
    parser.error(f"choose {what}")
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # pgserver narrates every pg_ctl call at INFO and platformdirs warns about a missing
    # XDG_RUNTIME_DIR; neither tells a user anything.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    tune_garbage_collector()
    try:
        settings = load_settings(args.config)
        return args.func(settings, args)
    except UsageError as exc:
        print(f"clickstream: error: {exc}", file=sys.stderr)
        return 2
    except ClickstreamError as exc:
        print(f"clickstream: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("clickstream: interrupted", file=sys.stderr)
        return 130
